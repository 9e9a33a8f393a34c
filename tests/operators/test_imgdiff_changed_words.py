"""The nouns that differ between two captions, offline (lemminflect's bundled tables, no NLP downloads)."""

from __future__ import annotations

import pytest

from dataflow_mm.operators.imgdiff.changed_nouns import caption_words, changed_nouns


@pytest.mark.parametrize(
    ("caption1", "caption2", "expected"),
    [
        ("A plane flying over the clouds.", "A boat sailing over the clouds.", (["plane"], ["boat"])),  # DJ's test pair
        ("Two red apples on a table", "Two green pears on a table", (["apple"], ["pear"])),  # colours are no objects
        ("Three mice near the houses", "Three cats near the houses", (["mouse"], ["cat"])),  # lemmas
        ("A dog on the grass.", "A dog on the grass!", ([], [])),  # punctuation only
        ("Dogs in a park", "A dog in a park with a kite", ([], ["kite"])),  # dog/dogs is no change
        ("A man holding an umbrella", "A woman holding a bag", (["man", "umbrella"], ["woman", "bag"])),
    ],
)
def test_changed_nouns(caption1: str, caption2: str, expected: tuple[list[str], list[str]]) -> None:
    assert changed_nouns(caption1, caption2) == expected


def test_words_are_lower_case_without_punctuation() -> None:
    assert caption_words("A Plane, over   the clouds!") == ["a", "plane", "over", "the", "clouds"]
