"""The region-caption parser reads answers up to the reply cap (4 MiB) in linear time (issue 24, item 10).

Each shape below made a regex backtrack over a long run of spaces (``region`` + N spaces took 13.5 s for
N = 16k) or made the parser walk millions of tiny sentences. A 4 MiB answer of each must parse in under a
second; an alarm stops a quadratic parser long before it would finish.
"""

from __future__ import annotations

import time

import pytest

from dataflow_mm.operators.region_caption.answer_parsing import parse_region_captions
from dataflow_mm.serving.http_reply import DEFAULT_MAX_RESPONSE_BYTES
from tests.support.time_limit import time_limit

SIZE = DEFAULT_MAX_RESPONSE_BYTES  # the largest answer the api backend accepts
SPACES = " " * SIZE
HALF = " " * (SIZE // 2)  # for shapes with two runs of spaces


def _fill(head: str, unit: str, tail: str = "") -> str:
    return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail


SHAPES = {
    "region + spaces": "region" + SPACES,
    "region + spaces + word": "region" + SPACES + "x",
    "tag + spaces": "<region" + SPACES,
    "bracket + spaces": "[region" + SPACES,
    "spaces before region": "a" + SPACES + "region",
    "line of spaces then a word": "a\n" + SPACES + "x",
    "label + spaces + and": "region1" + SPACES + "and x",
    "ordinal + spaces": "first" + HALF + "marked" + HALF + "x",
    "number + spaces": "1" + SPACES + "x",
    "stars + spaces": "*" + HALF + "*" + HALF + "x",
    "comma + spaces": "x," + SPACES + "y",
    "unclosed json + spaces": "{" + SPACES + "x",
    "long label list": _fill("Regions 1", ", 2"),
    "long label ranges": _fill("Regions 1", ", 1-50"),
    "million sentences": _fill("", ". "),
    "million sentences after a label": _fill("<region1>: a", " b."),
    "million labelled lines": _fill("", "<region1>: a\n"),
    "million blank lines": _fill("<region1>: a", "\n"),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_4_mib_adversarial_answer_parses_in_under_a_second(name: str) -> None:
    answer = SHAPES[name]
    assert len(answer) >= SIZE - 16
    best = float("inf")
    with time_limit(10, "still parsing"):
        for _ in range(2):  # the best of two: the machine may be busy with other work
            started = time.perf_counter()
            captions = parse_region_captions(answer, 3)
            best = min(best, time.perf_counter() - started)
    assert len(captions) == 3
    assert best < 1.0, f"{name}: {best:.2f} s"


def test_text_past_the_sentence_limit_still_reaches_its_region() -> None:
    """Past the sentences read one by one, the rest of the answer is read as one piece: nothing is dropped."""
    answer = "<region1>: a red car." + " More." * 20_000 + " The end is here."
    captions = parse_region_captions(answer, 2)
    assert captions[0].startswith("A red car.") and captions[0].endswith("The end is here.")
    assert captions[0].count("More.") == 20_000
    assert captions[1] == ""
    spread = "\n".join(f"<region{1 + i % 2}>: c{i}." for i in range(30_000))
    first, second = parse_region_captions(spread, 2)
    assert first.startswith("C0. C2.") and second.startswith("C1. C3.") and "c29999." in first + second
