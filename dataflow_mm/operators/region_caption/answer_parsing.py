"""Read a region-caption answer: one caption per marked region (:func:`parse_region_captions`).

``PARSER_VERSION`` is derived from this module's code (``code_version``), so any change to the
rules below reruns the parse step of earlier runs, and a comment or formatting change does not.

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

import hashlib
import io
import json
import math
import re
import tokenize
from pathlib import Path
from typing import Any

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
# Between "region" and its number: spaces, at most one of "_#-", spaces. Possessive (``*+``), like every
# run of spaces below, so that a long run that leads nowhere is scanned once, not once per split of it.
_SEP = r"\s*+(?:[_#-]\s*+)?"
_TAG = rf"<\s*+regions?{_SEP}{_NUM}\s*+>"
_BRACKET = rf"\[\s*+regions?{_SEP}{_NUM}\s*+\]"
_WORD = rf"\bregions?{_SEP}{_NUM}\b"
_ORDINAL = rf"\b(?:the\s++)?({_ORDINAL_WORDS})\s++(?:marked\s++|boxed\s++)?region\b"

# One region reference; the group that matched gives its number (or ordinal word).
# The lookahead names every alternative's first character: a position that cannot start one fails at once.
_MENTION = re.compile(f"(?=[<\\[rtfsen])(?:{_TAG}|{_BRACKET}|{_WORD}|{_ORDINAL})", re.IGNORECASE)
_HEAD = re.compile(rf"(?:{_TAG}|{_BRACKET}|{_WORD}|{_ORDINAL})", re.IGNORECASE)
# After a first reference: more of them (", <region2>", " and region 3", "-3" as a range, "/4").
_NEXT = re.compile(
    rf"(?P<sep>\s*+(?:,\s*+(?:and\s++|&\s*+)?|(?<=\s)and\s++|&\s*+|/\s*+|(?<=\s)or\s++|(?:to|through)\s++|[-–]))"
    rf"(?:{_TAG}|{_BRACKET}|\bregion{_SEP}{_NUM}\b|(?P<bare>\d{{1,3}})\b)",
    re.IGNORECASE,
)
_MAX_REFERENCES = 1000  # region numbers have at most 3 digits: a label naming more is not a label list
_RANGE_SEPARATORS = ("to", "through", "-", "–")
# Lines and sentences read one by one; the rest of a longer answer is read as one piece (the continuation of
# the region then described), so that an answer of millions of tiny sentences (up to the 4 MiB reply cap)
# parses in well under a second. A real answer has a few dozen.
_MAX_UNITS = 10_000
_DECORATION = re.compile(r"^[\s\-*+•·>#_(]+")
_NUMBERED = re.compile(r"^\s*+(?:[*_]++\s*+)?\(?(\d{1,3})\s*+[.):](?:\s*+[*_]++)?\s++")
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
# A run of spaces is only tried from its start (the lookbehinds), so a long run is scanned once; the first
# lookahead makes every other position fail at once.
_SPLIT = re.compile(
    r"(?=[\s,;])(?:(?<=[.!?;])\s++|(?:[,;]|(?<![\s,;]))\s++"
    r"(?=(?:<\s*+region|\[\s*+region|\bregion\s*+(?:[_#-]\s*+)?\d)[^:：\n]{0,12}[:：]))",
    re.IGNORECASE,
)
_RANGE_PREAMBLE = re.compile(rf"{_TAG}\s*+(?:to|-|–|through)\s*+{_TAG}", re.IGNORECASE)


class _Unit:
    """A line or a sentence of the answer."""

    __slots__ = ("after_blank", "line_start", "text")

    def __init__(self, text: str, line_start: bool, after_blank: bool) -> None:
        self.text = text
        self.line_start = line_start
        self.after_blank = after_blank


def _units(answer: str) -> list[_Unit]:
    """The answer's lines and sentences; past ``_MAX_UNITS`` of them the rest is one unit (nothing is dropped)."""
    units: list[_Unit] = []
    blank = False
    lines = answer.replace("\r\n", "\n").replace("\r", "\n").split("\n", _MAX_UNITS)
    for index, line in enumerate(lines):
        room = _MAX_UNITS - len(units)
        if room <= 0 or index == _MAX_UNITS:
            rest = "\n".join(lines[index:]).strip()
            if rest:
                units.append(_Unit(rest, line_start=True, after_blank=blank))
            break
        if not line.strip():
            blank = bool(units)
            continue
        marker = _NUMBERED.match(line)  # "1. " must not be cut off as a sentence of its own
        prefix, body = (line[: marker.end()], line[marker.end() :]) if marker else ("", line)
        pieces = _SPLIT.split(body, maxsplit=room - 1)  # the last piece holds the rest of the line
        for position, piece in enumerate(p for p in pieces if p and p.strip()):
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
    position = head.end()
    for _ in range(_MAX_REFERENCES):  # matched in place (no slicing), a bounded number of times: linear
        more = _NEXT.match(text, position)
        if more is None or (more.group("bare") is not None and not plural):
            break
        value = next(int(g) for g in more.groups()[1:] if g is not None)
        if more.group("sep").strip().lower() in _RANGE_SEPARATORS and 0 < value - regions[-1] <= 50:
            regions.extend(range(regions[-1] + 1, value + 1))
        else:
            regions.append(value)
        position = more.end()
    return regions, text[position:]


def _cut(prefix: re.Pattern[str], text: str) -> str:
    """``text`` without what ``prefix`` matches at its start (``sub`` would try every position of a long text)."""
    match = prefix.match(text)
    return text[match.end() :] if match else text


def _label(unit: _Unit) -> tuple[list[int], str] | None:
    """``(regions, caption)`` when the unit starts with a region label, else None."""
    text = _cut(_NUMBERED, unit.text) if unit.line_start else unit.text
    text = _cut(_DECORATION, text)
    preposition = _PREPOSITION.match(text)
    body = text[preposition.end() :] if preposition else text
    found = _reference(body)
    if found is None:
        return None
    regions, rest = found
    rest = _cut(_CLOSING, rest)
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
    return [int(match.group(1))], _capitalize(_cut(_DECORATION, unit.text[match.end() :]).strip())


def _capitalize(text: str) -> str:
    text = text.strip().strip("*_").strip()
    return text[:1].upper() + text[1:] if text[:1].islower() else text


def _plain(text: str) -> str:
    """A continuation line without its bullet."""
    return _cut(_DECORATION, text).strip()


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
    return " ".join(" ".join(p for p in parts if p).split())  # runs of whitespace as one space (str.split is C)


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


def structured_region_captions(answer: Any, n_regions: Any) -> list[str] | None:
    """The captions of a structured answer (``--structured_answer json``), or None when it is not the object
    asked for: valid JSON holding a string for every key ``region1`` .. ``regionN``. No fallback to the
    free-text rules: an answer cut at the token limit must not yield captions made of its JSON fragments."""
    n = region_count(n_regions)
    if not isinstance(answer, str):
        return None
    try:
        data = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(f"region{k}"), str) for k in range(1, n + 1)):
        return None
    return [_capitalize(data[f"region{k}"]) for k in range(1, n + 1)]


def parse_region_captions(answer: Any, n_regions: Any) -> list[str]:
    """One caption per region (``n_regions`` of them, ``""`` where the answer says nothing).

    A structured answer (a JSON object with ``regionK`` keys, see ``--structured_answer json``) is
    read as such; otherwise see the module docstring for the forms recognized and the rules applied.
    """
    n = region_count(n_regions)
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


def region_count(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return int(number) if math.isfinite(number) and number > 0 else 0


def code_version(source: str) -> str:
    """A short hash of Python ``source``'s tokens, comments and blank lines left out."""
    digest = hashlib.sha256()
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            digest.update(f"{token.type}\0{token.string}\0".encode())
    return digest.hexdigest()[:12]


# The version of the parsing rules, recorded in the parse step's parameters (its resume fingerprint).
PARSER_VERSION = code_version(Path(__file__).read_text(encoding="utf-8"))
