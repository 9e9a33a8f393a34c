"""Data-Juicer's sample format and argument names, for the Img-Diff operators and pipeline.

**Format.** Data-Juicer keeps per-sample metadata in one column, ``__dj__meta__``; its Img-Diff
mappers read the candidate boxes from ``__dj__meta__["__dj__bbox__"]`` (pixel ``[cx, cy, w, h]``)
and write back ``region_caption1``, ``region_caption2``, ``__dj__bbox__`` (the kept boxes) and
``bbox_difference_captions`` there, with empty lists when no difference was found.

* Reading: a box key may name a nested field with a dot, ``__dj__meta__.__dj__bbox__``
  (:data:`DJ_BBOX_PATH`); and when the flat box column is absent, boxes come from the meta column.
* Writing: :class:`DataJuicerMetaWriter` copies an Img-Diff step's flat results into the meta
  column (other meta keys kept), so the table is a Data-Juicer dataset again.

**Arguments.** :func:`check_data_juicer_args` accepts a Data-Juicer operator argument only when
its value asks for what happens here anyway (``num_proc=1``, ``text_key_second="target_text"``,
``any_or_all`` with one image per crop...) and otherwise raises one clear error naming the
argument, why it cannot be honoured and what to use instead. Nothing is silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from dataflow_mm.common.errors import ERROR_COLUMN, UserError, row_error_text
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.operators.imgdiff.box_decisions import (
    BBOX_KEY,
    CAPTION1_KEY,
    CAPTION2_KEY,
    DECISIONS_KEY,
    DIFFERENCE_KEY,
    copy_decisions,
    kept,
)
from dataflow_mm.operators.interop.dj_meta import meta_as_dict, meta_problem

DJ_META = "__dj__meta__"
DJ_BBOX = "__dj__bbox__"
DJ_BBOX_PATH = f"{DJ_META}.{DJ_BBOX}"
OUTPUT_FORMATS = ("auto", "flat", "dj")

_KEYS_HINT = (
    "the Img-Diff columns are named by run(input_image1_key=..., input_image2_key=..., input_bbox_key=...), "
    "as Data-Juicer's own Img-Diff mappers read image_path1/image_path2 and never this key"
)
_PARALLEL_HINT = (
    "parallelism and resources come from the runner here: --chunk_size, --runner ray, "
    "--ray_actors_per_model_operator, --ray_num_gpus_per_actor"
)
# Data-Juicer argument -> (values that ask for exactly what this project does, why other values cannot be honoured)
_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "text_key": (("text",), _KEYS_HINT),
    "image_key": (("images",), _KEYS_HINT),
    "audio_key": (("audios",), "audio is not supported"),
    "video_key": (("videos",), "video is not supported"),
    "image_bytes_key": (("image_bytes",), _KEYS_HINT + "; image cells may hold bytes or {'bytes', 'path'} structs"),
    "query_key": (("query",), _KEYS_HINT),
    "response_key": (("response",), _KEYS_HINT),
    "history_key": (("history",), _KEYS_HINT),
    "system_key": (("system",), _KEYS_HINT),
    "instruction_key": (("instruction",), _KEYS_HINT),
    "prompt_key": (("prompt",), _KEYS_HINT),
    "index_key": ((None,), _KEYS_HINT),
    "text_key_second": (
        ("target_text",),
        "it names the internal caption-pair field that Data-Juicer's Img-Diff mapper fixes to 'target_text'",
    ),
    "any_or_all": (("any", "all"), "only 'any' or 'all' exist (each crop has one image, so both decide alike)"),
    "reduce_mode": (("avg", "max", "min"), "only 'avg', 'max' or 'min' exist (one score per crop without flips)"),
    "horizontal_flip": ((False,), "flipped crops are not scored here"),
    "vertical_flip": ((False,), "flipped crops are not scored here"),
    "trust_remote_code": ((False,), "models load through transformers' own classes, never remote code"),
    "num_beams": ((1, None), "beam search is not part of the serving interface; temperature 0 decodes greedily"),
    "num_proc": ((1, None), _PARALLEL_HINT),
    "cpu_required": ((1, None), _PARALLEL_HINT),
    "mem_required": ((0, None), _PARALLEL_HINT),
    "num_cpus": ((None,), _PARALLEL_HINT),
    "num_gpus": ((None, 0), _PARALLEL_HINT),
    "memory": ((None, 0), _PARALLEL_HINT),
    "runtime_env": ((None,), _PARALLEL_HINT),
    "ray_execution_mode": ((None,), _PARALLEL_HINT),
    "turbo": ((False,), _PARALLEL_HINT),
    "work_dir": ((None,), "outputs go under the storage's cache_path (image_output_dir for images)"),
    "skip_op_error": ((True, False), "a failed row is always kept with an error field and the run goes on"),
}
_ACCELERATORS = {"cuda": "cuda", "gpu": "cuda", "cpu": "cpu"}


class DataJuicerArgumentError(UserError, ValueError):
    """A Data-Juicer argument whose value this project cannot honour (or an unknown argument)."""


def is_data_juicer_arg(name: str) -> bool:
    return name in _FIXED or name == "accelerator"


def _accepted(value: Any, values: tuple[Any, ...]) -> bool:
    try:
        return any(value is v or (v is not None and value is not None and bool(value == v)) for v in values)
    except (TypeError, ValueError):  # an array or another value without a plain truth value
        return False


def check_data_juicer_args(where: str, given: Mapping[str, Any]) -> None:
    """Raise DataJuicerArgumentError for the first Data-Juicer argument in ``given`` that asks for something else."""
    for name, value in given.items():
        if name not in _FIXED:
            continue
        values, why = _FIXED[name]
        if not _accepted(value, values):
            shown = " or ".join(repr(v) for v in values)
            raise DataJuicerArgumentError(
                f"{where}: Data-Juicer argument {name}={value!r} cannot be honoured here ({why}); "
                f"only {shown} is accepted: remove it or set it to that"
            )


def device_from_accelerator(where: str, accelerator: Any, device: str) -> str:
    """The scoring device for Data-Juicer's ``accelerator`` ("cuda"/"gpu"/"cpu"), or ``device`` when it is None."""
    if accelerator is None:
        return device
    chosen = _ACCELERATORS.get(str(accelerator).lower())
    if chosen is None:
        raise DataJuicerArgumentError(f"{where}: accelerator={accelerator!r} is not one of 'cuda', 'gpu', 'cpu'")
    if device not in ("auto", chosen):
        raise DataJuicerArgumentError(f"{where}: accelerator={accelerator!r} contradicts device={device!r}")
    return chosen


# -- the sample format -------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return hasattr(value, "__len__") and not isinstance(value, (str, dict)) and len(value) == 0


def _nested(value: Any, path: list[str]) -> Any:
    for name in path:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = meta_as_dict(value)  # a dict column written as JSON text (a CSV, a string-typed meta)
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def box_values(frame: pd.DataFrame, key: str) -> list[Any]:
    """Each row's raw boxes under ``key``: a column, a dotted path into a dict column (or its JSON text), or
    Data-Juicer's meta.

    ``"__dj__meta__.__dj__bbox__"`` reads the nested field. A plain key that is not a column falls
    back to ``__dj__meta__.__dj__bbox__`` when the table has a meta column (else None per row).
    """
    head, *rest = key.split(".")
    if rest and head in frame.columns:
        return [_nested(v, rest) for v in frame[head].tolist()]
    if key in frame.columns:
        return frame[key].tolist()
    if DJ_META in frame.columns:
        return [_nested(v, [DJ_BBOX]) for v in frame[DJ_META].tolist()]
    return [None] * len(frame)


def key_column(key: str) -> str:
    """The column a (possibly dotted) key lives in: what the compile check must find."""
    return key.split(".")[0]


def uses_data_juicer_format(columns: list[str]) -> bool:
    return DJ_META in columns


def bbox_key_for(columns: list[str], bbox_key: str) -> str:
    """``bbox_key``, or Data-Juicer's nested box field when the table has no such column but a meta column."""
    if key_column(bbox_key) in columns or not uses_data_juicer_format(columns):
        return bbox_key
    return DJ_BBOX_PATH


class DataJuicerMetaWriter(OperatorABC):
    """Write an Img-Diff step's results into ``__dj__meta__`` as Data-Juicer's Img-Diff mapper does.

    The flat columns stay. A row with no kept box gets empty lists (Data-Juicer's "no difference");
    a row with an error passes through with its meta unchanged.
    """

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.data_juicer.DataJuicerMetaWriter"

    key_spec = KeySpec(
        defaults={
            "bbox_key": BBOX_KEY,
            "caption1_key": CAPTION1_KEY,
            "caption2_key": CAPTION2_KEY,
            "difference_key": DIFFERENCE_KEY,
            "decisions_key": DECISIONS_KEY,
        },
        reads=("bbox_key", "caption1_key", "caption2_key", "difference_key", "decisions_key"),
    )

    def output_columns(self, **_: Any) -> list[str]:
        return [DJ_META]

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out = frame.copy()
        metas = out[DJ_META].tolist() if DJ_META in out.columns else [None] * len(out)
        errors = out[ERROR_COLUMN].tolist() if ERROR_COLUMN in out.columns else [None] * len(out)
        written = []
        for position, (meta, row) in enumerate(zip(metas, out.to_dict(orient="records"), strict=True)):
            problem = meta_problem(meta)
            if problem is not None:  # the row's own value stays; the row says why nothing was written
                written.append(meta)
                errors[position] = row_error_text(problem)
                continue
            found = bool(kept(copy_decisions(row.get(keys["decisions_key"]))))
            result = {
                CAPTION1_KEY: list(row.get(keys["caption1_key"]) or []) if found else [],
                CAPTION2_KEY: list(row.get(keys["caption2_key"]) or []) if found else [],
                DJ_BBOX: [list(b) for b in row.get(keys["bbox_key"]) or []] if found else [],
                DIFFERENCE_KEY: list(row.get(keys["difference_key"]) or []) if found else [],
            }
            written.append({**meta_as_dict(meta), **result})
        out[DJ_META] = written
        out[ERROR_COLUMN] = errors
        return out
