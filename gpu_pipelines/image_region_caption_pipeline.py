"""Image region captions: draw numbered boxes on each image, then ask a VLM about each region.

Run it from the folder `dataflowmm init` made:

    python gpu_pipelines/image_region_caption_pipeline.py                     # demo data, default model
    python gpu_pipelines/image_region_caption_pipeline.py --backend hf --model_path /path/to/Qwen2.5-VL-3B-Instruct

Re-running the same command skips completed steps; change a parameter and it reruns from there.
The answer about all regions is also split into ``region_captions`` (one caption per box); the
run summary reports the share of regions that got one. ``--structured_answer`` asks the model for
one ``<regionK>: ...`` line per region, which makes that split reliable; ``--structured_answer json``
constrains the answer to a JSON object with one caption per region (the default prompt is the
seed's, unchanged).
"""

from __future__ import annotations

import argparse
import os

from dataflow_mm import (
    ExistingBBoxDataGenConfig,
    FileStorage,
    ImageBboxGenerator,
    PipelineABC,
    PromptedVQAGenerator,
    RegionCaptionParser,
    RegionCaptionVerifier,
    VLMServing,
)
from dataflow_mm.operators.region_caption.caption_parser import (
    STRUCTURED_ANSWER_FORMATS,
    STRUCTURED_ANSWER_INSTRUCTION,
    STRUCTURED_JSON_INSTRUCTION,
    RegionAnswerSchema,
)
from dataflow_mm.operators.region_caption.image_bbox_generator import DEFAULT_REGION_PROMPT
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
from dataflow_mm.scoring.image_text_matching import DEFAULT_BLIP_ITM
from dataflow_mm.storage.downloads import DOWNLOAD_TIMEOUT_S


class ImageRegionCaptionPipeline(PipelineABC):
    """Three operators on one storage: ImageBboxGenerator (step 1), PromptedVQAGenerator (step 2),
    RegionCaptionParser (step 3: ``region_captions``, one caption per box); with ``verify_regions``,
    RegionCaptionVerifier (step 4: ``region_caption_scores``, regions below ``min_region_score`` dropped)."""

    def __init__(
        self,
        serving: VLMServing,
        *,
        first_entry_file: str = "./data/image_region_caption/image_region_caption_demo.jsonl",
        cache_path: str = "./cache/image_region_caption",
        file_name_prefix: str = "region_caption",
        cache_type: str = "jsonl",
        input_image_key: str = "image",
        input_bbox_key: str = "bbox",
        max_boxes: int = 10,
        output_image_with_bbox_path: str | None = "./cache/image_region_caption/image_with_bbox_result.jsonl",
        chunk_size: int = 512,
        wait_for_lock: bool = False,
        split: str | None = None,
        download_timeout: float = DOWNLOAD_TIMEOUT_S,
        retry_failed: bool = False,
        bbox_format: str = "xywh",
        structured_answer: bool | str | None = None,
        max_caption_chars: int | None = None,
        verify_regions: bool = False,
        min_region_score: float | None = None,
        blip_model: str = DEFAULT_BLIP_ITM,
        allow_tiny_fallback: bool = True,
    ) -> None:
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
        self.cfg = ExistingBBoxDataGenConfig(
            max_boxes=max_boxes,
            input_jsonl_path=first_entry_file,
            output_jsonl_path=output_image_with_bbox_path,
            bbox_format=bbox_format,
        )
        self.serving = serving
        answer_format = "lines" if structured_answer is True else (structured_answer or None)
        if answer_format not in (None, *STRUCTURED_ANSWER_FORMATS):
            raise ValueError(f"structured_answer must be one of {STRUCTURED_ANSWER_FORMATS}, not {structured_answer!r}")
        instruction = {None: "", "lines": STRUCTURED_ANSWER_INSTRUCTION, "json": STRUCTURED_JSON_INSTRUCTION}
        prompt = DEFAULT_REGION_PROMPT + instruction[answer_format]
        self.bbox_generator = ImageBboxGenerator(config=self.cfg, prompt_template=prompt)
        schema = (
            RegionAnswerSchema(serving.sampling.max_tokens, max_boxes, max_caption_chars)
            if answer_format == "json"
            else None
        )
        self.caption_generator = PromptedVQAGenerator(serving=self.serving, response_schema=schema)
        self.region_parser = RegionCaptionParser(structured=True if answer_format == "json" else None)
        self.region_verifier = (
            RegionCaptionVerifier(
                min_region_score=min_region_score, hf_blip=blip_model, allow_tiny_fallback=allow_tiny_fallback
            )
            if verify_regions
            else None
        )
        if self.region_verifier is not None:  # BLIP stays loaded beside the engine: its share leaves room for it
            blip = ModelLoad(blip_model, self.region_verifier.scorer.batch_size, "vision", "region verification (BLIP)")
            share_gpu_with_scorers(serving, [blip], cuda_total_bytes(self.region_verifier.scorer.device))
        self.input_image_key = input_image_key
        self.input_bbox_key = input_bbox_key

    def forward(self) -> None:
        self.bbox_generator.run(
            storage=self.storage.step(),
            input_image_key=self.input_image_key,
            input_bbox_key=self.input_bbox_key,
        )
        self.caption_generator.run(
            storage=self.storage.step(),
            input_image_key="image_with_bbox",
            input_prompt_key="prompt",
        )
        self.region_parser.run(
            storage=self.storage.step(),
            input_answer_key="answer",
            input_count_key="valid_bboxes_num",
        )
        if self.region_verifier is not None:
            self.region_verifier.run(
                storage=self.storage.step(),
                input_image_key=self.input_image_key,
                input_bbox_key="normalized_bbox",
                input_captions_key="region_captions",
            )


FLAG_HELP = {
    "input_image_key": "column of the image (path, URL, bytes, or a Hugging Face image struct)",
    "input_bbox_key": "column of the boxes",
    "max_boxes": "boxes per image at most (the rest are left out)",
    "output_image_with_bbox_path": "copy of the boxes step's rows (default: CACHE_PATH/image_with_bbox_result.jsonl)",
    "max_caption_chars": "--structured_answer json: longest caption per region (default: as long as max_tokens "
    "allows, <= 128)",
    "verify_regions": "score each region caption against its box's crop with BLIP image-text matching (step 4)",
    "min_region_score": "regions whose caption scores below this (0-1) move to bbox_dropped; implies --verify_regions",
    "blip_model": "BLIP ITM model (hub id or folder)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The serving and runner flags, then one flag per setting of ``ImageRegionCaptionPipeline``."""
    parser = argparse.ArgumentParser(description="Image region captions with dataflow-mm")
    add_serving_args(parser, default_model="Qwen/Qwen2.5-VL-3B-Instruct")
    add_runner_args(parser)
    parser.add_argument(
        "--structured_answer",
        nargs="?",
        const="lines",
        default=None,
        choices=STRUCTURED_ANSWER_FORMATS,
        help="lines (the flag alone): ask for one '<regionK>: ...' line per region; json: constrain the answer "
        'to exactly {"region1": "...", ..., "regionN": "..."} (structured output, every backend)',
    )
    add_constructor_flags(
        parser, ImageRegionCaptionPipeline, help=FLAG_HELP, defaults={"output_image_with_bbox_path": None}
    )
    args = parser.parse_args(argv)
    if args.min_region_score is not None:
        if not 0.0 <= args.min_region_score <= 1.0:
            parser.error(f"--min_region_score must be within [0, 1], not {args.min_region_score}")
        args.verify_regions = True  # a threshold implies verification
    return check_args(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pipeline = ImageRegionCaptionPipeline(
        serving_from_args(args),
        **constructor_kwargs(
            args,
            ImageRegionCaptionPipeline,
            output_image_with_bbox_path=args.output_image_with_bbox_path
            or os.path.join(args.cache_path, "image_with_bbox_result.jsonl"),
            allow_tiny_fallback=tiny_fallback_allowed(args, "blip_model", DEFAULT_BLIP_ITM),
        ),
    )
    try:
        summary = pipeline.run(runner=runner_from_args(args))
    finally:
        pipeline.serving.cleanup()
        if pipeline.region_verifier is not None:
            pipeline.region_verifier.scorer.cleanup()
    check_outcome(summary, args.max_failed_rows, args.max_failed_fraction)  # exit 3 / 4 via run_main


if __name__ == "__main__":
    run_main(main)
