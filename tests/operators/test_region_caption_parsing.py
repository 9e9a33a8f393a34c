"""The parser's version is derived from its code: a rule change changes it, a comment does not."""

from __future__ import annotations

import inspect
import re

from dataflow_mm.operators.region_caption import answer_parsing as region_caption_parsing
from dataflow_mm.operators.region_caption.answer_parsing import PARSER_VERSION, code_version
from dataflow_mm.operators.region_caption.caption_parser import RegionCaptionParser

SOURCE = inspect.getsource(region_caption_parsing)


def test_the_version_is_the_hash_of_the_parser_module() -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", PARSER_VERSION)
    assert code_version(SOURCE) == PARSER_VERSION
    assert RegionCaptionParser().params() == {"parser_version": PARSER_VERSION}


def test_a_changed_rule_changes_the_version() -> None:
    changed = SOURCE.replace('_RANGE_SEPARATORS = ("to", "through",', '_RANGE_SEPARATORS = ("to", "thru", "through",')
    assert changed != SOURCE
    assert code_version(changed) != PARSER_VERSION


def test_comments_and_blank_lines_leave_it_alone() -> None:
    commented = SOURCE.replace("\ndef region_count(", "\n\n# how many regions a row has\ndef region_count(")
    assert commented != SOURCE
    assert code_version(commented) == PARSER_VERSION
