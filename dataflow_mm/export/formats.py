"""Write samples in the layouts training frameworks read directly.

* ``llava`` -> ``llava.json``: LLaVA's list of ``{"id", "image", "conversations": [{"from":
  "human"|"gpt", "value"}]}``; ``<image>`` opens the first question (one per image). ``image`` is
  always a list of paths (LLaVA-NeXT/OneVision's form; an Img-Diff pair has two), so every sample of
  every export has one type and ``datasets`` loads region-caption and Img-Diff files together.
* ``sharegpt`` -> ``sharegpt.json`` (``NAME.json`` with ``--dataset_name NAME``) + ``dataset_info.json``:
  LLaMA-Factory's ShareGPT layout, ``{"conversations": [{"from", "value"}], "images": [...]}``,
  registered under the name ``dataflow_mm`` (or ``NAME``) (``--dataset_dir DIR --dataset dataflow_mm``);
  an existing ``dataset_info.json`` is merged, never replaced (:mod:`dataflow_mm.export.targets`).
* ``jsonl-messages`` -> ``messages.jsonl``: one ``{"id", "messages": [{"role", "content": [parts]}],
  "images": [...]}`` per line, OpenAI-style content parts (``{"type": "image", "image": path}``,
  ``{"type": "text", "text": ...}``) as TRL's vision SFT and Qwen-VL fine-tuning scripts take them.

Media placeholder tokens in the text are neutralized (:mod:`dataflow_mm.export.placeholders`): each
sample holds exactly one placeholder (or image part) per image. Image paths are written relative to
the output folder (so the folder can be moved as a whole), or the images are copied into
``DIR/images/`` with ``copy_images``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dataflow_mm.export.placeholders import IMAGE_TOKEN, without_placeholders
from dataflow_mm.export.samples import Sample
from dataflow_mm.export.targets import DATASET_INFO_NAME, DEFAULT_DATASET_NAME, merged_dataset_info
from dataflow_mm.imaging.naming import content_name
from dataflow_mm.storage.atomic import write_bytes_atomic

EXPORT_FORMATS = ("llava", "sharegpt", "jsonl-messages")
DATASET_NAME = DEFAULT_DATASET_NAME
IMAGES_DIR = "images"
FILE_NAMES = {"llava": "llava.json", "sharegpt": "sharegpt.json", "jsonl-messages": "messages.jsonl"}
SUMMARY_NAME = "export_summary.json"


class ImageRefs:
    """The path a sample writes for each image: relative to the output folder, or a copy inside it."""

    def __init__(self, out_dir: Path, copy_images: bool) -> None:
        self.out_dir = out_dir.resolve()
        self.copy_images = copy_images
        self._known: dict[Path, str] = {}

    def __call__(self, image: Path) -> str:
        source = image.resolve()
        if source not in self._known:
            self._known[source] = self._copy(source) if self.copy_images else os.path.relpath(source, self.out_dir)
        return self._known[source]

    def _copy(self, source: Path) -> str:
        data = source.read_bytes()
        name = content_name(source.stem, data, source.suffix.lower() or ".jpg")
        target = self.out_dir / IMAGES_DIR / name
        if not target.exists():
            write_bytes_atomic(data, target)
        return f"{IMAGES_DIR}/{name}"


def _clean_turns(sample: Sample) -> list[tuple[str, str]]:
    """The turns with no media placeholder of their own (see ``export.placeholders``)."""
    return [(without_placeholders(question), without_placeholders(answer)) for question, answer in sample.turns]


def _tagged_turns(sample: Sample) -> list[tuple[str, str]]:
    """The turns with one ``<image>`` per image at the start of the first question (and none elsewhere)."""
    tags = IMAGE_TOKEN * len(sample.images)
    turns = _clean_turns(sample)
    first_question, first_answer = turns[0]
    return [(f"{tags}\n{first_question}", first_answer), *turns[1:]]


def _from_value(sample: Sample) -> list[dict[str, str]]:
    turns = []
    for question, answer in _tagged_turns(sample):
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def llava_record(sample: Sample, refs: ImageRefs) -> dict[str, Any]:
    return {"id": sample.id, "image": [refs(p) for p in sample.images], "conversations": _from_value(sample)}


def sharegpt_record(sample: Sample, refs: ImageRefs) -> dict[str, Any]:
    return {"conversations": _from_value(sample), "images": [refs(p) for p in sample.images]}


def messages_record(sample: Sample, refs: ImageRefs) -> dict[str, Any]:
    images = [refs(p) for p in sample.images]
    messages: list[dict[str, Any]] = []
    for index, (question, answer) in enumerate(_clean_turns(sample)):
        parts: list[dict[str, str]] = [{"type": "image", "image": i} for i in images] if index == 0 else []
        parts.append({"type": "text", "text": question})
        messages += [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    return {"id": sample.id, "messages": messages, "images": images}


RECORDS = {"llava": llava_record, "sharegpt": sharegpt_record, "jsonl-messages": messages_record}


def sharegpt_entry(file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry of a ShareGPT export (LLaMA-Factory's ``formatting``/``columns``)."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
    }


def data_file_name(fmt: str, dataset_name: str = DEFAULT_DATASET_NAME) -> str:
    """The data file of ``fmt``; a ShareGPT export registered under another name is ``NAME.json``."""
    if fmt == "sharegpt" and dataset_name != DEFAULT_DATASET_NAME:
        return f"{dataset_name}.json"
    return FILE_NAMES[fmt]


def write_samples(
    samples: Iterable[Sample],
    fmt: str,
    out_dir: Path,
    copy_images: bool = False,
    dataset_name: str = DEFAULT_DATASET_NAME,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``samples`` in ``fmt`` under ``out_dir``; return the files written (each atomically).

    The caller has checked that the data file may be written (``targets.refuse_existing``); the
    ShareGPT registry is merged (``overwrite``: an entry of the same name that differs is replaced).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = ImageRefs(out_dir, copy_images)
    records = [RECORDS[fmt](sample, refs) for sample in samples]
    target = out_dir / data_file_name(fmt, dataset_name)
    info_path = out_dir / DATASET_INFO_NAME
    info = None
    if fmt == "sharegpt":  # read (and refused) before anything is written
        info = merged_dataset_info(info_path, dataset_name, sharegpt_entry(target.name), overwrite)
    if fmt == "jsonl-messages":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1)
    write_bytes_atomic(text.encode("utf-8"), target)
    written = [target]
    if info is not None:
        data = json.dumps(info, indent=2, ensure_ascii=False).encode("utf-8")
        written.append(write_bytes_atomic(data, info_path))
    return written
