"""What the Img-Diff difference-area generator reads and is given: its columns and Data-Juicer's argument dicts.

The generator takes Data-Juicer's three argument dicts (``image_pair_similarity_filter_args``,
``image_segment_mapper_args``, ``image_text_matching_filter_args``) with Data-Juicer's defaults;
``choose_proposer`` picks it or the pixel-difference proposer for a pipeline's input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dataflow_mm.common.errors import UserError
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM
from dataflow_mm.scoring.object_detection import DEFAULT_DETECTOR
from dataflow_mm.scoring.text_similarity import DEFAULT_CLIP
from dataflow_mm.storage.file_storage import FileStorage

CAPTION1_KEY = "caption1"
CAPTION2_KEY = "caption2"
AREA_DECISIONS_KEY = "area_decisions"
AREA_REASON_KEY = "area_reason"
PAIR_SIMILARITY_KEY = "image_pair_similarity"
CHANGED_NOUNS_KEY = "changed_nouns"
SOURCE_GENERATED = "generated"
NO_DIFFERENCE: list[list[int]] = [[0, 0, 0, 0]]
PROPOSERS = ("pixel", "model", "auto")

# Data-Juicer's argument dicts and defaults. ``num_proc`` is accepted and unused (batching replaces
# processes); ``imgsz`` is accepted and unused (the detector's processor sets its input size);
# ``max_boxes`` (candidates per image) is this project's addition.
PAIR_SIMILARITY_DEFAULTS: dict[str, Any] = {
    "min_score_1": 0.1,
    "max_score_1": 1.0,
    "min_score_2": 0.1,
    "max_score_2": 1.0,
    "hf_clip": DEFAULT_CLIP,
    "num_proc": 1,
}
SEGMENT_DEFAULTS: dict[str, Any] = {
    "imgsz": 1024,
    "conf": 0.05,
    "iou": 0.5,
    "model_path": DEFAULT_DETECTOR,
    "max_boxes": 10,
}
ITM_DEFAULTS: dict[str, Any] = {"min_score": 0.1, "max_score": 1.0, "hf_blip": DEFAULT_BLIP_ITM, "num_proc": 1}


def merged_args(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated with ``given``; a key Data-Juicer's dict does not have is an error."""
    given = dict(given or {})
    given.pop("accelerator", None)  # Data-Juicer adds it; the device is this operator's ``device``
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {', '.join(unknown)}; expected {', '.join(defaults)}")
    return {**defaults, **given}


def choose_proposer(choice: str, storage: FileStorage, caption_keys: tuple[str, str]) -> str:
    """``"pixel"`` or ``"model"``: ``auto`` is "model" when the input's first rows carry both caption columns.

    Real Img-Diff pairs come with the two captions they were generated from; edited copies usually
    do not, and the pixel-difference proposer is the right tool for them.
    """
    if choice not in PROPOSERS:
        raise UserError(f"unknown proposer {choice!r}; expected one of {', '.join(PROPOSERS)}")
    if choice != "auto":
        return choice
    try:
        chunk = next(storage.iter_chunks(chunk_size=16), None)
    except UserError:
        return "pixel"  # the run's own checks report an unreadable input
    has_captions = chunk is not None and all(key in chunk.frame.columns for key in caption_keys)
    return "model" if has_captions else "pixel"
