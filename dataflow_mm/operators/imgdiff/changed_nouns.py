"""The nouns that differ between two captions, offline (Img-Diff's "valid objects").

Data-Juicer diffs the lower-cased, punctuation-free words of ``caption1`` and ``caption2``
(``difflib``), lemmatizes the removed and added words (NLTK WordNet) and keeps those that NLTK's
tagger calls nouns and that do not appear on the other side. NLTK needs its data downloaded at run
time, so this module uses ``lemminflect`` instead, whose English lemma tables ship inside the
package (nothing is downloaded):

* a word is a noun when lemminflect knows a NOUN reading of it (``getAllLemmas``), except the
  colour, number and position words in ``NOT_OBJECTS`` (lemminflect lists "red" or "two" as nouns too,
  where a tagger reads them as adjectives/numerals in a caption), and "-ing" words that are
  also verb forms ("flying", "sitting": captions use them as participles);
* its lemma is the NOUN lemma ("planes" -> "plane", "mice" -> "mouse").

Limits: the check looks at the word, not its sentence: "-ing" nouns that are also verb forms
("building", "painting") are missed, a word used as a verb that has a noun reading ("a dog
walks") counts; compound nouns are split into words, as in Data-Juicer.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from dataflow_mm.common.deps import require

# Words lemminflect also lists as nouns that name no object in a caption (one string each: easier to read).
COLOURS = "red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige".split()  # noqa: SIM905
NUMBERS = "one two three four five six seven eight nine ten eleven twelve dozen hundred thousand".split()  # noqa: SIM905
POSITIONS = "first second third left right top bottom middle side front back".split()  # noqa: SIM905
NOT_OBJECTS = frozenset((*COLOURS, *NUMBERS, *POSITIONS))
_NON_WORD = re.compile(r"[^\w\s]")


def caption_words(caption: str) -> list[str]:
    """Lower-cased words of ``caption`` with punctuation removed (Data-Juicer's tokenization)."""
    return _NON_WORD.sub("", str(caption).lower()).split()


@lru_cache(maxsize=65536)
def noun_lemma(word: str) -> str | None:
    """The word's noun lemma, or None when it is not a noun (lemminflect's bundled tables)."""
    if word in NOT_OBJECTS or not word.isalpha():
        return None
    lemminflect = require("lemminflect", "scoring")
    nouns = lemminflect.getAllLemmas(word, upos="NOUN").get("NOUN") or lemminflect.getAllLemmas(word, upos="PROPN").get(
        "PROPN"
    )
    if not nouns:
        return None
    if word.endswith("ing") and lemminflect.getAllLemmas(word, upos="VERB").get("VERB", (word,))[0] != word:
        return None
    lemma = str(nouns[0])
    return None if lemma in NOT_OBJECTS else lemma


def changed_nouns(caption1: str, caption2: str) -> tuple[list[str], list[str]]:
    """``(nouns only in caption1, nouns only in caption2)``: lemmas, in caption order, without repeats."""
    words1, words2 = caption_words(caption1), caption_words(caption2)
    removed: list[str] = []
    added: list[str] = []
    matcher = difflib.SequenceMatcher(a=words1, b=words2, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            removed.extend(words1[i1:i2])
        if tag in ("insert", "replace"):
            added.extend(words2[j1:j2])
    lemmas1 = [noun_lemma(w) for w in removed]
    lemmas2 = [noun_lemma(w) for w in added]
    only1 = [lemma for lemma in dict.fromkeys(lemmas1) if lemma and lemma not in lemmas2]
    only2 = [lemma for lemma in dict.fromkeys(lemmas2) if lemma and lemma not in lemmas1]
    return only1, only2
