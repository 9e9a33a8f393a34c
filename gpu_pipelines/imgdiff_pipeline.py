"""Img-Diff difference captions: find where two images differ, describe each area in both, keep the
areas whose descriptions match the crops and differ from each other, and caption the difference.

Run it from the folder `dataflowmm init` made:

    python gpu_pipelines/imgdiff_pipeline.py                                   # demo pairs, default models
    python gpu_pipelines/imgdiff_pipeline.py --backend hf --model_path /path/to/llava-v1.6-vicuna-7b-hf \\
        --blip_model /path/to/blip-itm-base-coco --similarity_model /path/to/clip-vit-base-patch32

Steps (one file each under --cache_path; re-running the same command skips completed steps):
0. boxes for rows without boxes (--no_propose to skip), by --proposer: "pixel" (the pixel difference:
   edited copies), "model" (Data-Juicer's difference-area generator: CLIP, the changed nouns of
   caption1/caption2, OWLv2, BLIP: generated pairs), "auto" (model when rows carry both captions);
1. caption every box region in both images (one batched VLM call per chunk);
2. crop the boxes and keep those whose crops match their captions (BLIP image-text matching);
3. keep the boxes whose two captions' similarity is in range (CLIP text encoder or sentence-transformers);
4. red box + side-by-side panel, and ask the VLM for the difference (one batched call per chunk);
5. (Data-Juicer format only) write the results into ``__dj__meta__`` as Data-Juicer's Img-Diff mapper does.

Data-Juicer tables work as they are: boxes are read from ``__dj__meta__.__dj__bbox__`` when the table
has no ``--input_bbox_key`` column, and the results are written back there as well as to the flat
columns (``--output_format dj``, or automatically when the input has a ``__dj__meta__`` column).
Offline, unavailable models fall back to tiny random-weight models, and the run says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from dataflow_mm import FileStorage, PipelineABC, VLMServing
from dataflow_mm.operators.imgdiff.area_generator import (
    CAPTION1_KEY,
    CAPTION2_KEY,
    PROPOSERS,
    ImgDiffDifferenceAreaGenerator,
    choose_proposer,
)
from dataflow_mm.operators.imgdiff.area_proposer import ImgDiffDifferenceAreaProposer
from dataflow_mm.operators.imgdiff.box_decisions import MAX_INPUT_BOXES
from dataflow_mm.operators.imgdiff.fused_generator import ImgDiffDifferenceCaptionGenerator
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step2_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.operators.imgdiff.step5_difference_captioner import ImgDiffDifferenceCaptioner
from dataflow_mm.operators.interop.data_juicer import (
    OUTPUT_FORMATS,
    DataJuicerMetaWriter,
    bbox_key_for,
    uses_data_juicer_format,
)
from dataflow_mm.pipeline.arg_checks import check_args
from dataflow_mm.pipeline.flags import add_constructor_flags, constructor_kwargs
from dataflow_mm.pipeline.gpu_plan import ModelLoad, cuda_total_bytes, share_gpu_with_scorers
from dataflow_mm.pipeline.outcome import check_outcome
from dataflow_mm.pipeline.script import (
    add_runner_args,
    add_serving_args,
    run_main,
    runner_from_args,
    serving_from_args,
    tiny_fallback_allowed,
)
from dataflow_mm.scoring import DEFAULT_BLIP_ITM, DEFAULT_CLIP, BlipITMScorer, text_similarity_model
from dataflow_mm.scoring.object_detection import DEFAULT_DETECTOR
from dataflow_mm.storage.downloads import DOWNLOAD_TIMEOUT_S
from dataflow_mm.storage.formats import peek_columns

DEFAULT_VLM = "llava-hf/llava-v1.6-vicuna-7b-hf"
SCORES_MEANINGLESS = (
    "NOTE: {what} ran on a tiny random-weight model: its scores are MEANINGLESS, so the keep/drop "
    "decisions only show that the pipeline runs end to end. Pass {flag} with a real model."
)


class ImgDiffPipeline(PipelineABC):
    """Proposer (optional), region captions, ITM filter, caption-similarity filter, difference captions."""

    def __init__(
        self,
        serving: VLMServing,
        *,
        first_entry_file: str = "./data/imgdiff/imgdiff_demo.jsonl",
        cache_path: str = "./cache/imgdiff",
        file_name_prefix: str = "imgdiff",
        cache_type: str = "jsonl",
        chunk_size: int = 64,
        wait_for_lock: bool = False,
        split: str | None = None,
        download_timeout: float = DOWNLOAD_TIMEOUT_S,
        retry_failed: bool = False,
        input_image1_key: str = "image_path1",
        input_image2_key: str = "image_path2",
        input_bbox_key: str = "bboxes",
        bbox_format: str = "cxcywh",
        normalized: bool = False,
        propose_missing_boxes: bool = True,
        proposer: str = "auto",
        input_caption1_key: str = CAPTION1_KEY,
        input_caption2_key: str = CAPTION2_KEY,
        detector_model: str = DEFAULT_DETECTOR,
        image_similarity_model: str = DEFAULT_CLIP,
        area_args: dict[str, dict[str, Any]] | None = None,
        max_proposals: int = 5,
        max_box_area_ratio: float | None = 0.1,
        max_input_boxes: int = MAX_INPUT_BOXES,
        blip_model: str = DEFAULT_BLIP_ITM,
        similarity_model: str = DEFAULT_CLIP,
        itm_min_score: float = 0.1,
        itm_max_score: float = 1.0,
        similarity_min_score: float = 0.1,
        similarity_max_score: float = 1.0,
        device: str = "auto",
        scoring_batch_size: int = 32,
        keep_difference_images: bool = False,
        allow_tiny_fallback: bool | Mapping[str, bool] = True,
        fused: bool = False,
        hf_cache_dir: str | None = None,
        download_dir: str | None = None,
        output_format: str = "auto",
    ) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
        self.output_format = output_format
        self._columns: list[str] | None = None
        self.storage = FileStorage(
            first_entry_file_name=first_entry_file,
            cache_path=cache_path,
            file_name_prefix=file_name_prefix,
            cache_type=cache_type,
            chunk_size=chunk_size,
            wait_for_lock=wait_for_lock,
            split=split,
            download_timeout=download_timeout,
            retry_failed=retry_failed,
        )
        self.serving = serving
        fallback = _fallback_rule(allow_tiny_fallback)
        self.keys = {
            "input_image1_key": input_image1_key,
            "input_image2_key": input_image2_key,
        }
        self.input_bbox_key = input_bbox_key
        self.itm_scorer = BlipITMScorer(
            blip_model,
            device=device,
            batch_size=scoring_batch_size,
            allow_tiny_fallback=fallback("blip_model"),
            hf_cache_dir=hf_cache_dir,
            hf_local_dir=download_dir,
        )
        self.caption_keys = {"input_caption1_key": input_caption1_key, "input_caption2_key": input_caption2_key}
        self.proposer_kind = choose_proposer(proposer, self.storage, (input_caption1_key, input_caption2_key))
        self.proposer: ImgDiffDifferenceAreaProposer | ImgDiffDifferenceAreaGenerator | None = None
        if propose_missing_boxes and self.proposer_kind == "pixel":
            self.proposer = ImgDiffDifferenceAreaProposer(
                bbox_format=bbox_format, normalized=normalized, max_boxes=max_proposals
            )
        elif propose_missing_boxes:
            area_fallback = fallback("detector_model") and fallback("image_similarity_model")
            models = {"device": device, "batch_size": scoring_batch_size, "allow_tiny_fallback": area_fallback,
                      "hf_cache_dir": hf_cache_dir, "hf_local_dir": download_dir}  # fmt: skip
            args = area_args or {}
            segment = {"model_path": detector_model, **args.get("image_segment_mapper_args", {})}
            pair = {"hf_clip": image_similarity_model, **args.get("image_pair_similarity_filter_args", {})}
            itm = {"hf_blip": blip_model, **args.get("image_text_matching_filter_args", {})}
            self.proposer = ImgDiffDifferenceAreaGenerator(
                pair, segment, itm,
                itm_scorer=self.itm_scorer,
                bbox_format=bbox_format,
                normalized=normalized,
                **models,
            )  # fmt: skip
        self.similarity = text_similarity_model(
            similarity_model,
            device=device,
            batch_size=scoring_batch_size,
            allow_tiny_fallback=fallback("similarity_model"),
            hf_cache_dir=hf_cache_dir,
            hf_local_dir=download_dir,
        )
        # One GPU for everything: the vLLM engine's share leaves room for every model loaded beside it.
        beside = [
            ModelLoad(blip_model, scoring_batch_size, "vision", "image-text matching (BLIP)"),
            ModelLoad(similarity_model, scoring_batch_size, "text", "caption similarity"),
        ]
        if isinstance(self.proposer, ImgDiffDifferenceAreaGenerator):
            beside += [
                ModelLoad(detector_model, scoring_batch_size, "vision", "box proposals (detector)"),
                ModelLoad(image_similarity_model, scoring_batch_size, "vision", "image similarity (CLIP)"),
            ]
        share_gpu_with_scorers(serving, beside, cuda_total_bytes(device))
        self.fused = (
            ImgDiffDifferenceCaptionGenerator(
                image_text_matching_filter_args={"min_score": itm_min_score, "max_score": itm_max_score},
                text_pair_similarity_filter_args={"min_score": similarity_min_score, "max_score": similarity_max_score},
                serving=serving,
                bbox_format=bbox_format,
                normalized=normalized,
                max_box_area_ratio=max_box_area_ratio,
                keep_difference_images=keep_difference_images,
                device=device,
                itm_scorer=self.itm_scorer,
                text_similarity=self.similarity,
            )
            if fused
            else None
        )
        self.region_captioner = ImgDiffRegionCaptioner(
            serving,
            bbox_format=bbox_format,
            normalized=normalized,
            max_box_area_ratio=max_box_area_ratio,
            max_input_boxes=None if max_input_boxes == MAX_INPUT_BOXES else max_input_boxes,  # default: no new param
        )
        self.itm_filter = ImgDiffImageTextMatchingFilter(self.itm_scorer, itm_min_score, itm_max_score)
        self.similarity_filter = ImgDiffCaptionSimilarityFilter(
            self.similarity, similarity_min_score, similarity_max_score
        )
        self.difference_captioner = ImgDiffDifferenceCaptioner(serving, keep_difference_images=keep_difference_images)

    def input_columns(self) -> list[str]:
        """The input table's columns (read once), to tell a Data-Juicer table from a flat one."""
        if self._columns is None:
            self._columns = peek_columns(self.storage.first_entry_path)
        return self._columns

    def writes_data_juicer_format(self) -> bool:
        dj_input = uses_data_juicer_format(self.input_columns())
        return self.output_format == "dj" or (self.output_format == "auto" and dj_input)

    def forward(self) -> None:
        bbox_key = bbox_key_for(self.input_columns(), self.input_bbox_key)  # or __dj__meta__.__dj__bbox__
        if isinstance(self.proposer, ImgDiffDifferenceAreaGenerator):
            self.proposer.run(
                storage=self.storage.step(),
                input_bbox_key=bbox_key,
                output_bbox_key=self.input_bbox_key,  # fill in the missing boxes in place
                **self.keys,
                **self.caption_keys,
            )
            bbox_key = self.input_bbox_key
        elif self.proposer is not None:
            self.proposer.run(
                storage=self.storage.step(),
                input_bbox_key=bbox_key,
                output_bbox_key=self.input_bbox_key,  # fill in the missing boxes in place
                **self.keys,
            )
            bbox_key = self.input_bbox_key
        if self.fused is not None:
            self.fused.run(storage=self.storage.step(), input_bbox_key=bbox_key, **self.keys)
        else:
            self.region_captioner.run(storage=self.storage.step(), input_bbox_key=bbox_key, **self.keys)
            self.itm_filter.run(storage=self.storage.step(), **self.keys)
            self.similarity_filter.run(storage=self.storage.step())
            self.difference_captioner.run(storage=self.storage.step(), **self.keys)
        if self.writes_data_juicer_format():
            DataJuicerMetaWriter().run(storage=self.storage.step())

    def smoke_test_notes(self) -> list[str]:
        """Lines to print when a scoring model was a tiny random-weight stand-in."""
        notes = []
        if self.itm_scorer.is_smoke_test_model:
            notes.append(SCORES_MEANINGLESS.format(what="image-text matching (BLIP)", flag="--blip_model"))
        if self.similarity.is_smoke_test_model:
            notes.append(SCORES_MEANINGLESS.format(what="caption similarity", flag="--similarity_model"))
        if isinstance(self.proposer, ImgDiffDifferenceAreaGenerator):
            if self.proposer.image_similarity.is_smoke_test_model:
                notes.append(SCORES_MEANINGLESS.format(what="image similarity (CLIP)", flag="--image_similarity_model"))
            if self.proposer.detector.is_smoke_test_model:
                notes.append(
                    SCORES_MEANINGLESS.format(what="difference-area detection (OWLv2)", flag="--detector_model")
                )
        return notes

    def cleanup(self) -> None:
        if isinstance(self.proposer, ImgDiffDifferenceAreaGenerator):
            self.proposer.cleanup()
        self.itm_scorer.cleanup()
        self.similarity.cleanup()
        self.serving.cleanup()


def _fallback_rule(allow: bool | Mapping[str, bool]) -> Callable[[str], bool]:
    """Whether the model named by a flag may fall back to a tiny stand-in: one rule, or one per flag."""
    if isinstance(allow, Mapping):
        return lambda flag: bool(allow.get(flag, True))
    return lambda flag: bool(allow)


FLAG_HELP = {
    "input_image1_key": "column of the first image of each pair",
    "input_image2_key": "column of the second image of each pair",
    "input_bbox_key": "column of the boxes (a Data-Juicer table's __dj__meta__.__dj__bbox__ is found by itself)",
    "normalized": "boxes are 0-1 fractions of the image size",
    "proposer": "boxes for rows without boxes: pixel difference (edited copies), model (generated pairs with "
    "caption1/caption2: CLIP + OWLv2 + BLIP), auto (model when the rows carry both captions)",
    "input_caption1_key": "column of the first image's caption (--proposer model)",
    "input_caption2_key": "column of the second image's caption (--proposer model)",
    "detector_model": "OWLv2/OWL-ViT model (--proposer model)",
    "image_similarity_model": "CLIP model for image similarity (--proposer model)",
    "max_proposals": "proposed boxes per pair at most (pixel)",
    "max_box_area_ratio": "skip boxes larger than this share of the image",
    "max_input_boxes": "candidate boxes read per row of the input (default 50); the rest are not read and are "
    "counted in the summary (boxes_beyond_max_input_boxes)",
    "blip_model": "BLIP ITM model (hub id or folder)",
    "similarity_model": "caption similarity model: a CLIP or a sentence-transformers folder/hub id",
    "itm_min_score": "keep a region when its crop-caption ITM score is at least this (both images)",
    "itm_max_score": "... and at most this",
    "similarity_min_score": "keep a region when its two captions' similarity is at least this",
    "similarity_max_score": "... and at most this",
    "device": "scoring models' device: auto (CUDA if present), cpu, cuda",
    "scoring_batch_size": "crops or caption pairs per scoring-model call",
    "keep_difference_images": "save the red-box panels (JPEG)",
    "fused": "run the four steps as one fused operator (one step)",
    "output_format": "dj: also write the results into __dj__meta__ (Data-Juicer's format); auto: dj when the input "
    "has it",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The serving and runner flags, then one flag per setting of ``ImgDiffPipeline``."""
    parser = argparse.ArgumentParser(description="Img-Diff difference captions with dataflow-mm")
    add_serving_args(parser, default_model=DEFAULT_VLM)
    add_runner_args(parser)
    # The seed's sampling defaults (mllm_mapper_args): max_new_tokens=256, temperature=0.2, top_p=None.
    parser.set_defaults(temperature=0.2, top_p=1.0, max_tokens=256)
    parser.add_argument(
        "--no_propose",
        dest="propose_missing_boxes",
        action="store_false",
        help="do not propose boxes for rows without boxes",
    )
    add_constructor_flags(
        parser, ImgDiffPipeline, help=FLAG_HELP, choices={"proposer": PROPOSERS, "output_format": OUTPUT_FORMATS}
    )
    return check_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fallback = {
        flag: tiny_fallback_allowed(args, flag, shipped)
        for flag, shipped in (
            ("blip_model", DEFAULT_BLIP_ITM),
            ("similarity_model", DEFAULT_CLIP),
            ("detector_model", DEFAULT_DETECTOR),
            ("image_similarity_model", DEFAULT_CLIP),
        )
    }
    pipeline = ImgDiffPipeline(
        serving_from_args(args), **constructor_kwargs(args, ImgDiffPipeline, allow_tiny_fallback=fallback)
    )
    try:
        summary = pipeline.run(runner=runner_from_args(args))
        for note in pipeline.smoke_test_notes():
            print(note, flush=True)
    finally:
        pipeline.cleanup()
    check_outcome(summary, args.max_failed_rows, args.max_failed_fraction)  # exit 3 / 4 via run_main


if __name__ == "__main__":
    run_main(main)
