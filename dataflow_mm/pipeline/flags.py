"""A pipeline's settings are its constructor's keyword arguments: the script's flags are generated from them.

Each keyword-only parameter of a plain type (``str``, ``int``, ``float``, ``bool``, or one of them or
None) becomes ``--<name>`` with the constructor's default, so a setting is declared once, in the
pipeline class, and ``constructor_kwargs`` hands the parsed flags back under the same names::

    add_constructor_flags(parser, MyPipeline, help={"max_boxes": "boxes per image at most"})
    pipeline = MyPipeline(serving, **constructor_kwargs(args, MyPipeline))

A ``bool`` that defaults to False is a switch (``--name``). Parameters of other types (dicts, a
serving) and those in ``skip`` get no flag; a flag the parser has already (e.g. ``--hf_cache_dir``
from the serving flags) is not added twice, and its value still reaches the constructor.
"""

from __future__ import annotations

import argparse
import inspect
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dataflow_mm.imaging.bbox import BOX_FORMATS
from dataflow_mm.storage.downloads import DOWNLOAD_TIMEOUT_S
from dataflow_mm.storage.table_types import SUPPORTED_TYPES

PLAIN_TYPES = (str, int, float, bool)
# Decided by the serving flags --no_tiny_fallback / --smoke_test (``script.tiny_fallback_allowed``), not a flag.
NOT_FLAGS = ("allow_tiny_fallback",)

# What the storage settings every pipeline has mean (a script's own ``help`` may add more).
STORAGE_HELP = {
    "first_entry_file": (
        "input: a table (JSONL, JSON, CSV, Parquet), a folder of images, a Hugging Face dataset, a datasets "
        "save_to_disk folder, an .arrow file, WebDataset .tar shards; local or s3:// gs:// hf:// http(s)://; "
        "a glob or brace pattern of shards (s3://bucket/part-*.parquet, shard-{000000..000099}.tar)"
    ),
    "split": "the split to read when first_entry_file is a DatasetDict folder (save_to_disk of a DatasetDict)",
    "cache_path": "folder of the step files, their manifests, media and run logs",
    "file_name_prefix": "step files are named {prefix}_step{k}.{cache_type}",
    "cache_type": "format of the step files",
    "chunk_size": "rows per chunk (one batched model call each)",
    "wait_for_lock": "when another run holds --cache_path, wait for it to end instead of stopping (exit 2)",
    "retry_failed": "also redo the rows that failed for good in an earlier run (a rerun always redoes pending rows)",
    "bbox_format": "how the input table writes its boxes",
    "download_timeout": f"seconds for a whole image download from an http(s) URL, reply included (default "
    f"{DOWNLOAD_TIMEOUT_S:g}; per attempt: a slower one is retried like a timeout, then a row error)",
}
STANDARD_CHOICES: dict[str, Sequence[str]] = {"cache_type": SUPPORTED_TYPES, "bbox_format": BOX_FORMATS}


def _flag_parameters(cls: type) -> Iterator[tuple[inspect.Parameter, type]]:
    """The constructor's keyword-only parameters of a plain type, with that type."""
    hints = typing.get_type_hints(cls.__init__)
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.default is inspect.Parameter.empty:
            continue
        hint = hints.get(parameter.name)
        plain = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
        if len(plain) == 1 and plain[0] in PLAIN_TYPES:
            yield parameter, plain[0]


def add_constructor_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """One ``--<name>`` flag per plain keyword-only constructor parameter of ``cls`` (see the module docstring).

    ``defaults`` replace the constructor's default for the flag (e.g. None for "derived from another flag").
    """
    known = {action.dest for action in parser._actions}
    helps = {**STORAGE_HELP, **(help or {})}
    all_choices = {**STANDARD_CHOICES, **(choices or {})}
    for parameter, kind in _flag_parameters(cls):
        name = parameter.name
        if name in skip or name in NOT_FLAGS or name in known:
            continue
        default = (defaults or {}).get(name, parameter.default)
        if kind is bool and default is False:
            parser.add_argument(f"--{name}", action="store_true", help=helps.get(name))
        elif kind is bool:
            parser.add_argument(
                f"--{name}", type=_parse_bool, default=default, metavar="{yes,no}", help=helps.get(name)
            )
        else:
            parser.add_argument(
                f"--{name}", type=kind, default=default, choices=all_choices.get(name), help=helps.get(name)
            )


def constructor_kwargs(args: argparse.Namespace, cls: type, **overrides: Any) -> dict[str, Any]:
    """The constructor's keyword arguments the parsed flags hold (flags named like a parameter), and ``overrides``."""
    names = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return {**{name: getattr(args, name) for name in names if hasattr(args, name)}, **overrides}


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")
