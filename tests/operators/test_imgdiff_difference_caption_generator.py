"""The fused Img-Diff operator: the seed's constructor contract, chained steps, constant model calls, no leftovers."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from dataflow_mm.common.errors import ModelNotAvailableError
from dataflow_mm.operators.imgdiff.fused_generator import (
    ITM_DEFAULTS,
    MLLM_DEFAULTS,
    SIMILARITY_DEFAULTS,
    ImgDiffDifferenceCaptionGenerator,
)
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step2_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.scoring import BlipITMScorer, ClipTextSimilarity
from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.lock import LOCK_FILE_NAME
from tests.support.fake_serving import FakeVLMServing
from tests.support.imgdiff_pairs import write_imgdiff_table

FINAL = ("region_caption1", "region_caption2", "bboxes", "bbox_difference_captions")
KEEP_ALL = {
    "image_text_matching_filter_args": {"min_score": 0.0, "max_score": 1.0},
    "text_pair_similarity_filter_args": {"min_score": -1.0, "max_score": 1.0},
}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def scorers(tiny_blip_dir: Path, tiny_clip_dir: Path) -> dict:
    return {"itm_scorer": BlipITMScorer(tiny_blip_dir), "text_similarity": ClipTextSimilarity(tiny_clip_dir)}


def test_seed_defaults_and_the_callers_dicts_are_left_alone() -> None:
    itm_args = {"min_score": 0.2}
    op = ImgDiffDifferenceCaptionGenerator(
        image_text_matching_filter_args=itm_args, serving=FakeVLMServing(), device="cpu"
    )
    assert itm_args == {"min_score": 0.2}  # merged into a copy, never mutated
    assert op.mllm_mapper_args == MLLM_DEFAULTS
    assert op.image_text_matching_filter_args == {**ITM_DEFAULTS, "min_score": 0.2}
    assert op.text_pair_similarity_filter_args == SIMILARITY_DEFAULTS
    assert MLLM_DEFAULTS["hf_model"] == "llava-hf/llava-v1.6-vicuna-7b-hf" and MLLM_DEFAULTS["max_new_tokens"] == 256
    assert (op.itm_filter.min_score, op.itm_filter.max_score) == (0.2, 1.0)
    assert (op.similarity_filter.min_score, op.similarity_filter.max_score) == (0.1, 1.0)
    assert op.itm_scorer.model_name_or_path == "Salesforce/blip-itm-base-coco" and not op.itm_scorer.loaded
    assert op.text_similarity.model_name_or_path == "openai/clip-vit-base-patch32" and not op.text_similarity.loaded
    assert op.itm_scorer.device == op.text_similarity.device == "cpu"
    assert op.region_captioner.max_box_area_ratio == 0.1 and op.region_captioner.bbox_format == "cxcywh"
    assert op.region_captioner.serving is op.difference_captioner.serving  # one VLM for both steps
    with pytest.raises(ValueError, match="unknown key"):
        ImgDiffDifferenceCaptionGenerator(text_pair_similarity_filter_args={"max_scor": 0.5}, serving=FakeVLMServing())


def test_explicit_sampling_args_override_a_given_servings_own() -> None:
    plain = ImgDiffDifferenceCaptionGenerator(serving=FakeVLMServing())
    assert plain.region_captioner.sampling is None
    op = ImgDiffDifferenceCaptionGenerator(mllm_mapper_args={"max_new_tokens": 7}, serving=FakeVLMServing())
    assert op.region_captioner.sampling.max_tokens == 7 and op.region_captioner.sampling.temperature == 0.2
    assert op.difference_captioner.sampling == op.region_captioner.sampling


def test_without_a_serving_one_is_built_from_mllm_args(
    tiny_llava_dir: Path, tiny_qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = ImgDiffDifferenceCaptionGenerator(mllm_mapper_args={"hf_model": str(tiny_llava_dir)})
    serving = op.serving
    assert isinstance(serving, LocalModelVLMServing_hf) and serving.model is None  # built, not loaded
    assert Path(serving.model_id) == tiny_llava_dir
    assert (serving.sampling.temperature, serving.sampling.top_p, serving.sampling.max_tokens) == (0.2, 1.0, 256)
    monkeypatch.setenv("DATAFLOW_MM_TINY_DIR", str(tiny_qwen_dir.parent))
    fallback = ImgDiffDifferenceCaptionGenerator()  # the seed's default model is not available offline
    assert fallback.serving.is_smoke_test_model
    with pytest.raises(ModelNotAvailableError):
        ImgDiffDifferenceCaptionGenerator(allow_tiny_fallback=False)


def test_fused_equals_the_four_steps_run_one_after_another(tmp_path: Path, scorers: dict) -> None:
    frame = pd.read_json(write_imgdiff_table(tmp_path, 3, 3), lines=True)
    frame.at[1, "bboxes"] = [[0, 0, 0, 0]]
    fused = ImgDiffDifferenceCaptionGenerator(**KEEP_ALL, serving=FakeVLMServing(), **scorers).process_chunk(frame)
    serving = FakeVLMServing()
    steps = [
        ImgDiffRegionCaptioner(serving),
        ImgDiffImageTextMatchingFilter(scorers["itm_scorer"], 0.0, 1.0),
        ImgDiffCaptionSimilarityFilter(scorers["text_similarity"], -1.0, 1.0),
        ImgDiffDifferenceCaptioner(serving),
    ]
    stepped = frame
    for step in steps:
        stepped = step.process_chunk(stepped)
    for key in (*FINAL, "bbox_decisions"):
        assert fused[key].tolist() == stepped[key].tolist()
    assert fused["bboxes"][1] == [[0, 0, 0, 0]] and fused["bbox_decisions"][1] == []  # the seed's empty result


@pytest.mark.parametrize(
    ("args", "dropped_at", "vlm_calls"),
    [
        ({"image_text_matching_filter_args": {"min_score": 0.99}}, "image_text_matching", 1),
        ({**KEEP_ALL, "text_pair_similarity_filter_args": {"min_score": 1.5, "max_score": 2.0}},
         "caption_similarity", 1),
        (KEEP_ALL, None, 2),
    ],
)  # fmt: skip
def test_each_step_decides_with_known_thresholds(
    tmp_path: Path, scorers: dict, args: dict, dropped_at: str | None, vlm_calls: int
) -> None:
    frame = pd.read_json(write_imgdiff_table(tmp_path, 2, 2), lines=True)
    serving = FakeVLMServing()
    out = ImgDiffDifferenceCaptionGenerator(**args, serving=serving, **scorers).process_chunk(frame)
    decisions = [d for row in out["bbox_decisions"] for d in row]
    assert len(decisions) == 4 and {d["dropped_at"] for d in decisions} == {dropped_at}
    assert len(serving.calls) == vlm_calls  # no difference request when every box was dropped
    if dropped_at:
        assert out["bbox_difference_captions"].tolist() == [[""], [""]]


@pytest.mark.slow
def test_tiny_llava_end_to_end_with_constant_model_calls_per_chunk(tmp_path: Path, tiny_llava_dir: Path,
                                                                   scorers: dict) -> None:  # fmt: skip
    table = write_imgdiff_table(tmp_path / "data", 4, 3, size=(160, 120))
    rows = read_rows(table)
    rows[2]["bboxes"] = rows[2]["bboxes"][:1]  # rows with 1 and 3 boxes in the same chunk
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    serving = LocalModelVLMServing_hf(str(tiny_llava_dir), batch_size=16, temperature=0.0, max_tokens=4)
    calls: list[int] = []
    original = serving._chat_batch
    serving._chat_batch = lambda conversations, sampling: calls.append(len(conversations)) or original(  # type: ignore[method-assign]
        conversations, sampling)  # fmt: skip
    op = ImgDiffDifferenceCaptionGenerator(**KEEP_ALL, serving=serving, keep_difference_images=True, **scorers)
    storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="fused", chunk_size=2)
    op.run(storage.step())
    assert calls == [12, 6, 8, 4]  # per chunk: one region call (2 per box), one difference call (1 per box)
    assert scorers["itm_scorer"].stats.calls == 2 and scorers["text_similarity"].stats.calls == 2
    assert scorers["itm_scorer"].stats.loads == 1  # loaded once for the whole run
    manifest = json.loads((tmp_path / "cache" / "fused_step1.jsonl.manifest.json").read_text())
    metrics = manifest["stats"]["metrics"]
    assert metrics["boxes_after_difference_caption"] == metrics["boxes_after_parse_total"] == 10
    assert metrics["pairs_with_differences"] == 4
    out = read_rows(tmp_path / "cache" / "fused_step1.jsonl")
    assert [len(r["bboxes"]) for r in out] == [3, 3, 1, 3]
    for row in out:
        assert row["error"] is None
        assert len({len(row[key]) for key in (*FINAL, "difference_images")}) == 1
        assert all(isinstance(t, str) for t in row["bbox_difference_captions"])
        for d in row["bbox_decisions"]:
            assert 0.0 <= d["itm_score1"] <= 1.0 and 0.0 <= d["itm_score2"] <= 1.0
            assert -1.0 <= d["caption_similarity"] <= 1.0
            assert Path(d["difference_image"]).is_file()
    serving.cleanup()
    op.cleanup()
    assert not scorers["itm_scorer"].loaded


class ExplodingServing(FakeVLMServing):
    """Answers the region captions, then the backend dies (not a per-request failure)."""

    def _chat_batch(self, conversations, sampling):
        if self.calls:
            raise RuntimeError("backend crashed")
        return super()._chat_batch(conversations, sampling)


def test_nothing_is_left_in_temp_folders_even_after_an_error(
    tmp_path: Path, scorers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    table = write_imgdiff_table(tmp_path / "data", 3, 2)
    cache = tmp_path / "cache"
    op = ImgDiffDifferenceCaptionGenerator(**KEEP_ALL, serving=ExplodingServing(), keep_difference_images=True,
                                           **scorers)  # fmt: skip
    with pytest.raises(RuntimeError, match="backend crashed"):
        op.run(FileStorage(str(table), cache_path=str(cache)).step())
    assert list(temp.iterdir()) == []
    # No step file, no half-written image, no temp file: only the framework's chunk-resume state
    # and the cache folder's lock file (kept on purpose: see dataflow_mm.storage.lock) remain.
    leftovers = [
        p for p in cache.rglob("*") if p.is_file() and not p.parent.name.endswith(".parts") and p.name != LOCK_FILE_NAME
    ]
    assert leftovers == []


class _TooLongForDifferences(FakeVLMServing):
    """Answers region requests; every difference request fails as PromptTooLongError (as a small context would)."""

    def check_budget(self, conversations, sampling):  # type: ignore[no-untyped-def]
        from dataflow_mm.common.errors import PromptTooLongError, row_error_text
        from dataflow_mm.serving.base import Completion

        def text(conversation) -> str:  # type: ignore[no-untyped-def]
            return " ".join(p.get("text", "") for m in conversation for p in m["content"] if isinstance(p, dict))

        return [
            Completion(text=None, error=row_error_text(PromptTooLongError("prompt needs 9000 tokens, context 4096")))
            if "What is their difference?" in text(c)
            else c
            for c in conversations
        ]


def _metrics(cache: Path, prefix: str, steps: range) -> dict[str, float]:
    summed: dict[str, float] = {}
    for step in steps:
        manifest = json.loads((cache / f"{prefix}_step{step}.jsonl.manifest.json").read_text())
        for name, value in manifest["stats"]["metrics"].items():
            summed[name] = summed.get(name, 0) + value
    return summed


def test_failed_difference_requests_are_errors_counted_the_same_fused_and_step_by_step(
    tmp_path: Path, scorers: dict
) -> None:
    table = write_imgdiff_table(tmp_path / "data", 2, 5)
    boxes_in = sum(len(r["bboxes"]) for r in read_rows(table))
    cache = tmp_path / "cache"
    fused_op = ImgDiffDifferenceCaptionGenerator(
        **KEEP_ALL, serving=_TooLongForDifferences(), max_box_area_ratio=None, **scorers
    )
    fused_op.run(FileStorage(str(table), cache_path=str(cache), file_name_prefix="fused").step())
    serving = _TooLongForDifferences()
    steps = [
        ImgDiffRegionCaptioner(serving, max_box_area_ratio=None),
        ImgDiffImageTextMatchingFilter(scorers["itm_scorer"], 0.0, 1.0),
        ImgDiffCaptionSimilarityFilter(scorers["text_similarity"], -1.0, 1.0),
        ImgDiffDifferenceCaptioner(serving),
    ]
    storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="steps")
    for step in steps:
        step.run(storage.step())

    fused, stepped = read_rows(cache / "fused_step1.jsonl"), read_rows(cache / "steps_step4.jsonl")
    for rows in (fused, stepped):
        assert all(r["error"].startswith("PromptTooLongError:") for r in rows)  # not "no difference", error None
        decisions = [d for r in rows for d in r["bbox_decisions"]]
        assert len(decisions) == boxes_in
        assert all(
            d["dropped_at"] == "difference_caption" and d["error"].startswith("PromptTooLongError") for d in decisions
        )
    metrics = _metrics(cache, "fused", range(1, 2))
    assert metrics["boxes_after_parse_total"] == boxes_in == 10  # not 1/1 while 10 boxes went in
    assert metrics["box_errors_difference_caption"] == boxes_in and metrics["box_errors_region_caption"] == 0
    assert metrics["boxes_after_difference_caption"] == 0
    step_metrics = _metrics(cache, "steps", range(1, 5))
    shared = set(metrics) & set(step_metrics)
    assert {"boxes_after_parse_total", "box_errors_difference_caption", "boxes_after_region_caption"} <= shared
    assert {k: metrics[k] for k in shared} == {k: step_metrics[k] for k in shared}


def test_a_row_whose_region_requests_all_fail_gets_their_error(tmp_path: Path, scorers: dict) -> None:
    frame = pd.read_json(write_imgdiff_table(tmp_path, 2, 3), lines=True)
    first_row_boxes = {str(b) for b in frame.at[0, "bboxes"]}
    serving = FakeVLMServing(fail_when=lambda _prompt: True)
    out = ImgDiffRegionCaptioner(serving, max_box_area_ratio=None).process_chunk(frame)
    assert all(e.startswith("ServingError:") and "region caption" in e for e in out["error"])
    assert [len(d) for d in out["bbox_decisions"]] == [3, 3]
    assert all(d["error"] and d["dropped_at"] == "region_caption" for row in out["bbox_decisions"] for d in row)
    assert {str(b) for b in out.at[0, "bboxes"]} == first_row_boxes  # the failed row keeps its input
