"""Per-region captions: split the region-caption answer into one caption per marked region.

The seed's prompt asks for one free-text answer about ``<region1>`` ... ``<regionN>``.
:func:`parse_region_captions` turns that answer into a list aligned with the valid boxes (one
caption per region, ``""`` where the model said nothing about it); :class:`RegionCaptionParser`
is the operator that writes it as a column, and reports the share of regions it found a caption
for (the parse rate) in the step's metrics and the run summary.

How an answer is read (the rules, in order):

1. **Labels.** The text is cut into lines and sentences. A line or sentence that *starts* with a
   region reference opens that region's caption: ``<region2>: ...``, ``Region 2 - ...``,
   ``**Region 2**: ...``, ``- [region2] ...``, ``1. <region1>: ...``, ``In <region2>, ...``,
   ``For region 2, ...``, ``The second region shows ...``. What follows, up to the next label,
   belongs to it (so a header line followed by bullet lines works, and so does the seed's single
   paragraph "In <region1>, ... The setting appears to be ...").
2. **Numbered lists**, used only when there is no label at all: ``2. ...`` / ``2) ...`` at the
   start of a line is region 2.
3. **Mentions**, used only when there is neither: a sentence that mentions exactly one region
   (``... the dog in <region2> is brown.``) belongs to it, and so do the sentences after it until
   another region is mentioned. Sentences mentioning several regions are not assigned.
4. With a single region and no reference at all, the whole answer is that region's caption.

Decisions:

* A label naming several regions (``In <region1> and <region2>, ...``, ``Regions 1-3: ...``)
  gives the same text to each of them.
* A region described several times gets all of it, joined in order of appearance.
* Region numbers outside ``1..n_regions`` are ignored (their text is not given to any region).
* Text before the first label (``Sure! Here are the descriptions:``) is dropped, and so is a
  closing summary (a sentence starting ``Overall``/``In summary``/..., or an unlabelled
  paragraph after a blank line once the current region already has text).
* The caption is the text after the label and its separator (``:``, ``-``, ``,`` ...), first
  letter capitalized; a label used as the subject of a sentence (``<region2> shows a tree.``) is
  kept verbatim, since dropping it would leave a fragment.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from dataflow_mm.errors import UserError
from dataflow_mm.operators.base import TRUNCATED_COLUMN, OperatorABC
from dataflow_mm.operators.keys import KeySpec

PARSER_VERSION = 1

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
_REGION_KEY = re.compile(r"^region(\d{1,3})$")

_ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}
_ORDINAL_WORDS = "|".join(_ORDINALS)
_NUM = r"(\d{1,3})"
_TAG = rf"<\s*regions?\s*[_#-]?\s*{_NUM}\s*>"
_BRACKET = rf"\[\s*regions?\s*[_#-]?\s*{_NUM}\s*\]"
_WORD = rf"\bregions?\s*[_#-]?\s*{_NUM}\b"
_ORDINAL = rf"\b(?:the\s+)?({_ORDINAL_WORDS})\s+(?:marked\s+|boxed\s+)?region\b"

# One region reference; the group that matched gives its number (or ordinal word).
_MENTION = re.compile(f"{_TAG}|{_BRACKET}|{_WORD}|{_ORDINAL}", re.IGNORECASE)
_HEAD = re.compile(rf"(?:{_TAG}|{_BRACKET}|{_WORD}|{_ORDINAL})", re.IGNORECASE)
# After a first reference: more of them (", <region2>", " and region 3", "-3" as a range, "/4").
_NEXT = re.compile(
    rf"\s*(?P<sep>,\s*(?:and\s+|&\s*)?|\s+and\s+|\s*&\s*|\s*/\s*|\s+or\s+|\s*(?:to|through)\s+|[-–])"
    rf"(?:{_TAG}|{_BRACKET}|\bregion\s*[_#-]?\s*{_NUM}\b|(?P<bare>\d{{1,3}})\b)",
    re.IGNORECASE,
)
_RANGE_SEPARATORS = ("to", "through", "-", "–")
_DECORATION = re.compile(r"^[\s\-*+•·>#_(]+")
_NUMBERED = re.compile(r"^\s*[*_]*\s*\(?(\d{1,3})\s*[.):]\s*[*_]*\s+")
_PREPOSITION = re.compile(
    r"^(?:in|within|inside|for|at|on|regarding|about|as\s+for|concerning)\s+(?:the\s+)?", re.IGNORECASE
)
_CLOSING = re.compile(r"^[\s*_)\]]*")
_SEPARATOR = re.compile(r"^\s*(?:[:：,.)\]=\-–—]+|\bis\s*:)\s*")
_EPILOGUE = re.compile(
    r"^(?:overall|in\s+summary|in\s+conclusion|to\s+summarize|to\s+sum\s+up|all\s+in\s+all|in\s+general|"
    r"collectively|together,|taken\s+together)\b",
    re.IGNORECASE,
)
# Cut points inside a line: after a sentence end, and before an inline label ("..., <region2>: ...").
_SPLIT = re.compile(
    r"(?<=[.!?;])\s+|[,;]?\s+(?=(?:<\s*region|\[\s*region|\bregion\s*[_#-]?\s*\d)[^:：\n]{0,12}[:：])",
    re.IGNORECASE,
)
_RANGE_PREAMBLE = re.compile(rf"{_TAG}\s*(?:to|-|–|through)\s*{_TAG}", re.IGNORECASE)


class _Unit:
    """A line or a sentence of the answer."""

    __slots__ = ("after_blank", "line_start", "text")

    def __init__(self, text: str, line_start: bool, after_blank: bool) -> None:
        self.text = text
        self.line_start = line_start
        self.after_blank = after_blank


def _units(answer: str) -> list[_Unit]:
    units: list[_Unit] = []
    blank = False
    for line in answer.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            blank = bool(units)
            continue
        marker = _NUMBERED.match(line)  # "1. " must not be cut off as a sentence of its own
        prefix, body = (line[: marker.end()], line[marker.end() :]) if marker else ("", line)
        for position, piece in enumerate(p for p in _SPLIT.split(body) if p and p.strip()):
            text = prefix + piece.strip() if position == 0 else piece.strip()
            units.append(_Unit(text.strip(), line_start=position == 0, after_blank=blank and position == 0))
        blank = False
    return units


def _number(match: re.Match[str]) -> int:
    for group in match.groups():
        if group is None:
            continue
        return _ORDINALS[group.lower()] if group.lower() in _ORDINALS else int(group)
    raise ValueError(match.group(0))


def _reference(text: str) -> tuple[list[int], str] | None:
    """Region numbers named at the very start of ``text`` and what follows them, else None."""
    head = _HEAD.match(text)
    if head is None:
        return None
    regions = [_number(head)]
    plural = "regions" in head.group(0).lower()
    rest = text[head.end() :]
    while (more := _NEXT.match(rest)) is not None:
        if more.group("bare") is not None and not plural:
            break
        value = next(int(g) for g in more.groups()[1:] if g is not None)
        if more.group("sep").strip().lower() in _RANGE_SEPARATORS and 0 < value - regions[-1] <= 50:
            regions.extend(range(regions[-1] + 1, value + 1))
        else:
            regions.append(value)
        rest = rest[more.end() :]
    return regions, rest


def _label(unit: _Unit) -> tuple[list[int], str] | None:
    """``(regions, caption)`` when the unit starts with a region label, else None."""
    text = _NUMBERED.sub("", unit.text, count=1) if unit.line_start else unit.text
    text = _DECORATION.sub("", text)
    preposition = _PREPOSITION.match(text)
    body = text[preposition.end() :] if preposition else text
    found = _reference(body)
    if found is None:
        return None
    regions, rest = found
    rest = _CLOSING.sub("", rest)
    separator = _SEPARATOR.match(rest)
    if separator is not None or preposition is not None or not rest.strip():
        caption = rest[separator.end() :] if separator else rest
        return regions, _capitalize(caption.strip())
    return regions, text.strip()  # the label is the sentence's subject: keep it whole


def _numbered(unit: _Unit) -> tuple[list[int], str] | None:
    if not unit.line_start:
        return None
    match = _NUMBERED.match(unit.text)
    if match is None:
        return None
    return [int(match.group(1))], _capitalize(_DECORATION.sub("", unit.text[match.end() :]).strip())


def _capitalize(text: str) -> str:
    text = text.strip().strip("*_").strip()
    return text[:1].upper() + text[1:] if text[:1].islower() else text


def _plain(text: str) -> str:
    """A continuation line without its bullet."""
    return _DECORATION.sub("", text).strip()


def _assign(units: list[_Unit], anchors: dict[int, tuple[list[int], str]], n_regions: int) -> list[list[str]]:
    pieces: list[list[str]] = [[] for _ in range(n_regions)]
    current: list[int] | None = None
    for index, unit in enumerate(units):
        if index in anchors:
            regions, caption = anchors[index]
            current = [r for r in dict.fromkeys(regions) if 1 <= r <= n_regions]
            if caption:
                for region in current:
                    pieces[region - 1].append(caption)
            continue
        if current is None:
            continue  # preamble
        if _EPILOGUE.match(_plain(unit.text)) or (unit.after_blank and any(pieces[r - 1] for r in current)):
            current = None  # a closing remark or a paragraph outside the list
            continue
        text = _plain(unit.text)
        for region in current:
            if text:
                pieces[region - 1].append(text)
    return pieces


def _mentioned(text: str) -> list[int]:
    text = _RANGE_PREAMBLE.sub(" ", text)
    return list(dict.fromkeys(_number(m) for m in _MENTION.finditer(text)))


def _by_mentions(units: list[_Unit], n_regions: int) -> list[list[str]]:
    pieces: list[list[str]] = [[] for _ in range(n_regions)]
    current: int | None = None
    for unit in units:
        mentioned = _mentioned(unit.text)
        if len(mentioned) == 1:
            current = mentioned[0] if 1 <= mentioned[0] <= n_regions else None
        elif len(mentioned) > 1 or _EPILOGUE.match(_plain(unit.text)):
            current = None
        if current is not None:
            pieces[current - 1].append(_plain(unit.text))
    return pieces


def _join(parts: list[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(p for p in parts if p)).strip()


def _json_captions(answer: str, n: int) -> list[str] | None:
    """Captions from a structured answer ``{"region1": "...", ...}``; None when the answer is not one."""
    text = answer.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not any(_REGION_KEY.match(str(k)) for k in data):
        return None
    captions = [""] * n
    for key, value in data.items():
        match = _REGION_KEY.match(str(key))
        if match and 1 <= int(match.group(1)) <= n and isinstance(value, str):
            captions[int(match.group(1)) - 1] = _capitalize(value)
    return captions


def parse_region_captions(answer: Any, n_regions: Any) -> list[str]:
    """One caption per region (``n_regions`` of them, ``""`` where the answer says nothing).

    A structured answer (a JSON object with ``regionK`` keys, see ``--structured_answer json``) is
    read as such; otherwise see the module docstring for the forms recognized and the rules applied.
    """
    n = _count(n_regions)
    if n == 0:
        return []
    if not isinstance(answer, str) or not answer.strip():
        return [""] * n
    structured = _json_captions(answer, n)
    if structured is not None:
        return structured
    units = _units(answer)
    anchors = {i: found for i, unit in enumerate(units) if (found := _label(unit)) is not None}
    if not anchors:
        anchors = {i: found for i, unit in enumerate(units) if (found := _numbered(unit)) is not None}
    pieces = _assign(units, anchors, n) if anchors else _by_mentions(units, n)
    captions = [_join(p) for p in pieces]
    if n == 1 and not anchors and not captions[0] and not _mentioned(answer):
        captions = [_join([_plain(u.text) for u in units])]
    return captions


def _count(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) and number > 0 else 0


def structured_answer_overhead(n_regions: int) -> int:
    """Tokens a structured answer needs besides its captions: the JSON punctuation and keys
    (with the wider separators, counted as one token per byte) plus the end-of-sequence token."""
    return len(json.dumps({f"region{k}": "" for k in range(1, n_regions + 1)})) + 1


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
        n = _count(row.get(self.count_key))
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
    """

    key_spec = KeySpec(
        defaults={"input_answer_key": "answer", "input_count_key": "valid_bboxes_num", "output_key": "region_captions"},
        reads=("input_answer_key", "input_count_key"),
        writes=("output_key",),
    )

    def params(self) -> dict[str, Any]:
        return {"parser_version": PARSER_VERSION}

    def process(
        self,
        frame: pd.DataFrame,
        input_answer_key: str = "answer",
        input_count_key: str = "valid_bboxes_num",
        output_key: str = "region_captions",
    ) -> pd.DataFrame:
        out = frame.copy()
        out[output_key] = [
            parse_region_captions(answer, count)
            for answer, count in zip(out[input_answer_key], out[input_count_key], strict=True)
        ]
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
