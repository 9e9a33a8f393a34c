"""Per-region captions: split the region-caption answer into one caption per marked region.

The seed's prompt asks for one free-text answer about ``<region1>`` ... ``<regionN>``.
:func:`parse_region_captions` turns that answer into a list aligned with the valid boxes (one
caption per region, ``""`` where the model said nothing about it); :class:`RegionCaptionParser`
is the operator that writes it as a column, and reports the share of regions it found a caption
for (the parse rate) in the step's metrics and the run summary.

How an answer is read: see :mod:`dataflow_mm.operators.region_caption.answer_parsing`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from dataflow_mm.common.errors import ERROR_COLUMN, StructuredAnswerError, UserError, row_error_text
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import TRUNCATED_COLUMN, OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.operators.region_caption.answer_parsing import (
    PARSER_VERSION,
    parse_region_captions,
    region_count,
    structured_region_captions,
)

# Appended to the seed's prompt by ``--structured_answer``: one labelled line per region.
STRUCTURED_ANSWER_INSTRUCTION = (
    " Answer with exactly one line per region, in order, each formatted as"
    " '<regionK>: description' (K from 1 to {n}), and nothing else."
)

# Appended by ``--structured_answer json`` (the answer is also constrained to this form).
STRUCTURED_JSON_INSTRUCTION = (
    ' Answer with only a JSON object {{"region1": "...", ..., "region{n}": "..."}}'
    " holding one short description per region."
)
STRUCTURED_ANSWER_FORMATS = ("lines", "json")
# Captions of a structured answer: printable ASCII without '"' and '\\', first character not a space,
# so one character is one byte is at most one token (the length bound is a token bound).
_CAPTION_FIRST = r"[!#-\[\]-~]"
_CAPTION_REST = r"[ !#-\[\]-~]"
MAX_CAPTION_CHARS = 128  # xgrammar 0.2.8 fails to compile a longer bounded repetition inside a JSON schema
MIN_CAPTION_CHARS = 16


# Tokens left per region (and for the braces) for whitespace a server adds around the JSON punctuation
# (``vllm serve`` without ``disable_any_whitespace`` pads its JSON; an answer cut by it has no captions).
WHITESPACE_TOKENS = 2


def structured_answer_overhead(n_regions: int) -> int:
    """Tokens a structured answer needs besides its captions: the JSON punctuation and keys
    (with the wider separators, counted as one token per byte), room for whitespace
    (``WHITESPACE_TOKENS`` per region and for the braces) and the end-of-sequence token."""
    keys = len(json.dumps({f"region{k}": "" for k in range(1, n_regions + 1)}))
    return keys + WHITESPACE_TOKENS * (n_regions + 1) + 1


def region_answer_schema(n_regions: int, max_caption_chars: int) -> dict[str, Any]:
    """The JSON schema of a structured answer: exactly ``region1`` .. ``regionN``, each a caption of
    1 to ``max_caption_chars`` printable ASCII characters.

    The length bound is written as the pattern's repetition bound, not ``maxLength``: xgrammar (the
    grammar backend of vLLM and of the transformers backend here) cannot combine ``pattern`` with
    ``minLength``/``maxLength``, and the pattern is what makes characters count as tokens.
    """
    caption = {"type": "string", "pattern": f"^{_CAPTION_FIRST}{_CAPTION_REST}{{0,{max_caption_chars - 1}}}$"}
    keys = [f"region{k}" for k in range(1, n_regions + 1)]
    return {
        "type": "object",
        "properties": {key: dict(caption) for key in keys},
        "required": keys,
        "additionalProperties": False,
    }


class RegionAnswerSchema:
    """The per-row schema of ``--structured_answer json``, sized so that a complete answer always fits.

    Each row with N regions gets captions of at most ``min(max_caption_chars, (max_tokens -
    overhead(N)) // N)`` characters: since a caption character is one byte and every generated
    token is at least one byte, the whole object fits in ``max_tokens``, even for a model that
    rambles. ``check`` (called when the pipeline is built, before any model loads) refuses settings
    under which rows with ``max_boxes`` regions could not get ``MIN_CAPTION_CHARS`` characters, or the
    ``max_caption_chars`` asked for.
    """

    def __init__(
        self, max_tokens: int, max_boxes: int, max_caption_chars: int | None = None, count_key: str = "valid_bboxes_num"
    ) -> None:
        self.max_tokens = int(max_tokens)
        self.max_boxes = int(max_boxes)
        self.max_caption_chars = max_caption_chars
        self.count_key = count_key
        if max_caption_chars is not None and not 1 <= max_caption_chars <= MAX_CAPTION_CHARS:
            raise UserError(f"--max_caption_chars must be within 1..{MAX_CAPTION_CHARS}, not {max_caption_chars}")
        self.check()

    def chars_for(self, n_regions: int) -> int:
        fits = (self.max_tokens - structured_answer_overhead(n_regions)) // max(1, n_regions)
        return min(self.max_caption_chars or MAX_CAPTION_CHARS, fits)

    def check(self) -> None:
        worst = self.chars_for(self.max_boxes)
        wanted = self.max_caption_chars or MIN_CAPTION_CHARS
        if worst < wanted:
            needed = structured_answer_overhead(self.max_boxes) + self.max_boxes * wanted
            raise UserError(
                f"--structured_answer json: with up to {self.max_boxes} regions per image, captions of {wanted} "
                f"characters need max_tokens >= {needed} (got {self.max_tokens}); raise --max_tokens, lower "
                f"--max_boxes{' or --max_caption_chars' if self.max_caption_chars else ''}"
            )

    def input_columns(self) -> list[str]:
        return [self.count_key]

    def for_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The row's schema (None for a row without regions: it is asked in free text)."""
        n = region_count(row.get(self.count_key))
        return region_answer_schema(n, self.chars_for(n)) if n else None

    def params(self) -> dict[str, Any]:
        return {
            "kind": "region_json",
            "max_tokens": self.max_tokens,
            "max_boxes": self.max_boxes,
            "max_caption_chars": self.max_caption_chars,
            "count_key": self.count_key,
        }


class RegionCaptionParser(OperatorABC):
    """Split each row's region-caption answer into ``region_captions``: one caption per valid box.

    Reads the answer and the number of valid boxes (``valid_bboxes_num``); writes a list of
    ``valid_bboxes_num`` strings, ``""`` for a region the answer says nothing about. Rows that
    already carry an error pass through unchanged. The step's metrics count the regions
    (``region_captions_parsed_total``) and those that got a caption (``region_captions_parsed``);
    their ratio is the parse rate shown in the run summary. Rows whose answer was cut off at
    ``max_tokens`` (``truncated`` True) are counted apart, in ``region_captions_truncated_parsed``
    / ``..._total``, so truncation does not pass for a parser failure.

    With ``structured=True`` (``--structured_answer json``) the answer must be the JSON object asked
    for: one cut at ``max_tokens`` or not valid gets no captions; the row keeps its raw answer and gets a
    ``StructuredAnswerError`` (the free-text rules would make captions of its JSON fragments).
    """

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.region_captions.RegionCaptionParser"

    key_spec = KeySpec(
        defaults={"input_answer_key": "answer", "input_count_key": "valid_bboxes_num", "output_key": "region_captions"},
        reads=("input_answer_key", "input_count_key"),
        writes=("output_key",),
    )
    parser_version = PARSER_VERSION  # derived from the parser's code: a new parser reruns the step
    param_spec = ParamSpec(extra=("parser_version",), omit_none=("structured",))

    def __init__(self, structured: bool | None = None) -> None:
        """``structured``: the answers were asked for as JSON (None, the default, is False and is left out of
        the step's parameters, so that earlier runs' steps keep their fingerprint)."""
        self.structured = structured

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        keys = self.key_values(keys)
        out = frame.copy()
        answers, counts = out[keys["input_answer_key"]].tolist(), out[keys["input_count_key"]].tolist()
        if not self.structured:  # None or False
            out[keys["output_key"]] = [parse_region_captions(a, c) for a, c in zip(answers, counts, strict=True)]
            return out
        cut = out[TRUNCATED_COLUMN].tolist() if TRUNCATED_COLUMN in out.columns else [None] * len(out)
        errors = out[ERROR_COLUMN].tolist() if ERROR_COLUMN in out.columns else [None] * len(out)
        captions: list[list[str] | None] = []
        for position, (answer, count, was_cut) in enumerate(zip(answers, counts, cut, strict=True)):
            found = structured_region_captions(answer, count) if region_count(count) else []
            if found is None or (_is_true(was_cut) and region_count(count)):
                why = "cut off at max_tokens" if _is_true(was_cut) else "not the JSON object asked for"
                errors[position] = row_error_text(
                    StructuredAnswerError(f"the structured answer is {why}: no captions (the raw answer is kept)")
                )
                found = None
            captions.append(found)
        out[keys["output_key"]] = pd.Series(captions, index=out.index, dtype=object)
        out[ERROR_COLUMN] = errors
        return out

    def chunk_metrics(self, frame: pd.DataFrame, output_key: str = "region_captions", **_: Any) -> dict[str, int]:
        if output_key not in frame.columns:
            return {"region_captions_parsed": 0, "region_captions_parsed_total": 0}
        cut = frame[TRUNCATED_COLUMN] if TRUNCATED_COLUMN in frame.columns else [None] * len(frame)
        pairs = [(v, _is_true(t)) for v, t in zip(frame[output_key], cut, strict=True) if isinstance(v, list)]
        complete = [v for v, was_cut in pairs if not was_cut]
        truncated = [v for v, was_cut in pairs if was_cut]
        metrics = _parse_counts("region_captions_parsed", complete)
        if truncated:
            metrics.update(_parse_counts("region_captions_truncated_parsed", truncated))
        return metrics


def _is_true(value: Any) -> bool:
    """True for a real True (Python or numpy bool), False for False, None and NaN."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _parse_counts(name: str, lists: list[list[str]]) -> dict[str, int]:
    """``{name: regions with a caption, name_total: regions}`` over ``lists``."""
    return {
        name: sum(1 for captions in lists for caption in captions if caption),
        f"{name}_total": sum(len(captions) for captions in lists),
    }
