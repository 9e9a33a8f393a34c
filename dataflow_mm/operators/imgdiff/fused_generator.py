"""ImgDiffDifferenceCaptionGenerator: Data-Juicer's Img-Diff difference-caption generator as one fused operator.

It chains the four batched steps on each chunk, sharing one VLM serving and decoding each image
once per chunk:

1. :class:`ImgDiffRegionCaptioner`: describe every box region in both images (one VLM call);
2.+3. :class:`ImgDiffImageTextMatchingFilter`: crop, BLIP ITM, keep boxes whose crops match;
4. :class:`ImgDiffCaptionSimilarityFilter`: keep boxes whose captions' similarity is in range;
5. :class:`ImgDiffDifferenceCaptioner`: red box, side-by-side panel, difference caption (one VLM call).

The constructor takes the seed's ``mllm_mapper_args``, ``image_text_matching_filter_args`` and
``text_pair_similarity_filter_args`` with the seed's defaults (the caller's dicts are never
modified), plus a ``serving`` (vLLM, transformers or API backend). Without one, a transformers
serving is built from ``mllm_mapper_args`` (with the offline tiny-model fallback). The scoring
models load once, on CUDA when available (``device="auto"``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dataflow_mm.common.checks import check_choice
from dataflow_mm.common.logger import get_logger
from dataflow_mm.core.keys import KeySpec
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.params import ParamSpec
from dataflow_mm.operators.imgdiff.box_decisions import (
    ALL_STEPS,
    BOX_KEYS,
    CAPTION1_KEY,
    CAPTION2_KEY,
    DECISIONS_KEY,
    DIFFERENCE_IMAGES_KEY,
    DIFFERENCE_KEY,
    PAIR_KEYS,
    check_bbox_format,
)
from dataflow_mm.operators.imgdiff.step1_region_captioner import ImgDiffRegionCaptioner
from dataflow_mm.operators.imgdiff.step2_itm_filter import ImgDiffImageTextMatchingFilter
from dataflow_mm.operators.imgdiff.step4_similarity_filter import ImgDiffCaptionSimilarityFilter
from dataflow_mm.operators.imgdiff.step5_difference_captioner import EMPTY_RESULTS, ImgDiffDifferenceCaptioner
from dataflow_mm.operators.imgdiff.step_base import ImgDiffOperator
from dataflow_mm.operators.interop.data_juicer import (
    DataJuicerArgumentError,
    check_data_juicer_args,
    device_from_accelerator,
    is_data_juicer_arg,
)
from dataflow_mm.scoring.image_text_matching import BlipITMScorer
from dataflow_mm.scoring.text_similarity import TextSimilarity, text_similarity_model
from dataflow_mm.serving.base import SamplingParams, VLMServing
from dataflow_mm.storage.file_storage import FileStorage

log = get_logger("operators.imgdiff")

# The seed's fixed defaults (Data-Juicer's FIXED_ARGS).
MLLM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 256,
    "temperature": 0.2,
    "top_p": None,
    "num_beams": 1,
    "hf_model": "llava-hf/llava-v1.6-vicuna-7b-hf",
}
ITM_DEFAULTS: dict[str, Any] = {
    "min_score": 0.1,
    "max_score": 1.0,
    "hf_blip": "Salesforce/blip-itm-base-coco",
    "num_proc": 1,
}
SIMILARITY_DEFAULTS: dict[str, Any] = {
    "min_score": 0.1,
    "max_score": 1.0,
    "hf_clip": "openai/clip-vit-base-patch32",
    "text_key_second": "target_text",
    "num_proc": 1,
}
# Data-Juicer keys that never change the output (kept out of the resume fingerprint). Each is checked by
# ``check_data_juicer_args`` (a value that asks for something else is refused) or mapped (``accelerator``).
_NO_EFFECT_ON_OUTPUT = {
    "num_proc",
    "accelerator",
    "trust_remote_code",
    "text_key_second",
    "any_or_all",
    "reduce_mode",
    "mem_required",
}
_EXTRA = {
    "mllm_mapper_args": {"batch_size", "seed"},
    "image_text_matching_filter_args": {"batch_size", "horizontal_flip", "vertical_flip"},
    "text_pair_similarity_filter_args": {"batch_size"},
}
_SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "seed")
_ARGS_DICTS = ("mllm_mapper_args", "image_text_matching_filter_args", "text_pair_similarity_filter_args")


def merged_args(name: str, given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``given`` (a copy).

    Unknown keys raise ValueError naming the accepted ones; Data-Juicer keys whose value cannot be
    honoured raise ``DataJuicerArgumentError`` (a ValueError) saying why and what to use instead.
    """
    given = dict(given or {})
    allowed = set(defaults) | _EXTRA[name]
    unknown = sorted(k for k in set(given) - allowed if not is_data_juicer_arg(k))
    if unknown:
        raise DataJuicerArgumentError(
            f"{name}: unknown key(s) {unknown}; accepted: {sorted(allowed)} and Data-Juicer's operator arguments"
        )
    check_data_juicer_args(name, given)
    return {**defaults, **given}


def sampling_from_mllm_args(args: dict[str, Any]) -> SamplingParams:
    top_p = args.get("top_p")
    return SamplingParams(
        temperature=float(args["temperature"]),
        top_p=1.0 if top_p is None else float(top_p),
        max_tokens=int(args["max_new_tokens"]),
        seed=args.get("seed"),
    )


class ImgDiffDifferenceCaptionGenerator(ImgDiffOperator, OperatorABC):
    """The seed's fused Img-Diff operator: region captions, ITM filter, caption similarity, difference captions."""

    # the name its resume fingerprints record (caches made before it moved into its family folder)
    operator_id = "dataflow_mm.operators.imgdiff_difference_caption_generator.ImgDiffDifferenceCaptionGenerator"

    key_spec = KeySpec(
        defaults={
            **PAIR_KEYS,
            **BOX_KEYS,
            "output_caption1_key": CAPTION1_KEY,
            "output_caption2_key": CAPTION2_KEY,
            "output_difference_key": DIFFERENCE_KEY,
            "output_image_key": DIFFERENCE_IMAGES_KEY,
            "decisions_key": DECISIONS_KEY,
        }
    )
    holds_model = True
    counted_steps = ALL_STEPS
    # The settings of one step are recorded in that step's params (``steps``), the models by provenance;
    # devices, caches and Data-Juicer's no-effect keys do not change the output.
    param_spec = ParamSpec(
        exclude=(
            "bbox_format",
            "normalized",
            "max_box_area_ratio",
            "keep_difference_images",
            "image_output_dir",
            "empty_result",
            "device",
            "allow_tiny_fallback",
            "hf_cache_dir",
            "download_dir",
            "data_juicer_options",
            *(f"{args}.{key}" for args in _ARGS_DICTS for key in sorted(_NO_EFFECT_ON_OUTPUT)),
        ),
        extra=("steps",),
    )

    def __init__(
        self,
        mllm_mapper_args: dict[str, Any] | None = None,
        image_text_matching_filter_args: dict[str, Any] | None = None,
        text_pair_similarity_filter_args: dict[str, Any] | None = None,
        *,
        serving: VLMServing | None = None,
        bbox_format: str = "cxcywh",
        normalized: bool = False,
        max_box_area_ratio: float | None = 0.1,
        keep_difference_images: bool = False,
        image_output_dir: str | None = None,
        device: str = "auto",
        empty_result: str = "seed",
        allow_tiny_fallback: bool = True,
        itm_scorer: BlipITMScorer | None = None,
        text_similarity: TextSimilarity | None = None,
        hf_cache_dir: str | None = None,
        download_dir: str | None = None,
        **data_juicer_options: Any,
    ) -> None:
        where = type(self).__name__
        # checked first, before any serving or scorer is built
        check_bbox_format(bbox_format, where)
        check_choice(f"{where}.empty_result", empty_result, EMPTY_RESULTS)
        unknown = sorted(k for k in data_juicer_options if not is_data_juicer_arg(k))
        if unknown:
            raise DataJuicerArgumentError(f"{where}: unknown argument(s) {unknown}")
        check_data_juicer_args(where, data_juicer_options)
        device = device_from_accelerator(where, data_juicer_options.get("accelerator"), device)
        self.mllm_mapper_args = merged_args("mllm_mapper_args", mllm_mapper_args, MLLM_DEFAULTS)
        self.image_text_matching_filter_args = merged_args(
            "image_text_matching_filter_args", image_text_matching_filter_args, ITM_DEFAULTS
        )
        self.text_pair_similarity_filter_args = merged_args(
            "text_pair_similarity_filter_args", text_pair_similarity_filter_args, SIMILARITY_DEFAULTS
        )
        mllm, itm, sim = (
            self.mllm_mapper_args,
            self.image_text_matching_filter_args,
            self.text_pair_similarity_filter_args,
        )
        given_args = (
            ("mllm_mapper_args", mllm_mapper_args, serving),
            ("image_text_matching_filter_args", image_text_matching_filter_args, itm_scorer),
            ("text_pair_similarity_filter_args", text_pair_similarity_filter_args, text_similarity),
        )
        for name, args, given_object in given_args:
            if given_object is not None and (args or {}).get("accelerator") is not None:
                raise DataJuicerArgumentError(
                    f"{name}: accelerator is set but a ready {type(given_object).__name__} was given, "
                    "which already decides its device: drop one of them"
                )
        llm_device = device_from_accelerator("mllm_mapper_args", mllm.get("accelerator"), device)
        itm_device = device_from_accelerator("image_text_matching_filter_args", itm.get("accelerator"), device)
        sim_device = device_from_accelerator("text_pair_similarity_filter_args", sim.get("accelerator"), device)
        self.device = device
        self.allow_tiny_fallback = allow_tiny_fallback
        self._owns_serving = serving is None
        sampling: SamplingParams | None = None
        if serving is None:
            from dataflow_mm.serving.factory import create_serving

            serving = create_serving(
                "hf",
                str(mllm["hf_model"]),
                hf_cache_dir=hf_cache_dir,
                download_dir=download_dir,
                temperature=float(mllm["temperature"]),
                top_p=1.0 if mllm.get("top_p") is None else float(mllm["top_p"]),
                max_tokens=int(mllm["max_new_tokens"]),
                seed=mllm.get("seed"),
                allow_tiny_fallback=allow_tiny_fallback,
                batch_size=int(mllm.get("batch_size") or 8),
                device=llm_device,
            )
        elif "hf_model" in (mllm_mapper_args or {}):
            raise DataJuicerArgumentError(
                f"mllm_mapper_args hf_model={mllm['hf_model']!r} and a serving were both given: the serving would "
                "answer, not that model; drop one of them"
            )
        if not self._owns_serving and any(key in (mllm_mapper_args or {}) for key in _SAMPLING_KEYS):
            sampling = sampling_from_mllm_args(mllm)  # explicit sampling args override the serving's own
        self.serving = serving
        self.sampling = sampling
        loading = {
            "allow_tiny_fallback": allow_tiny_fallback,
            "hf_cache_dir": hf_cache_dir,
            "hf_local_dir": download_dir,
        }
        scorer = itm_scorer or BlipITMScorer(
            itm["hf_blip"], device=itm_device, batch_size=int(itm.get("batch_size") or 32), **loading
        )
        similarity = text_similarity or text_similarity_model(
            sim["hf_clip"], device=sim_device, batch_size=int(sim.get("batch_size") or 64), **loading
        )
        self.region_captioner = ImgDiffRegionCaptioner(
            serving,
            bbox_format=bbox_format,
            normalized=normalized,
            max_box_area_ratio=max_box_area_ratio,
            sampling=sampling,
        )
        self.itm_filter = ImgDiffImageTextMatchingFilter(scorer, min_score=itm["min_score"], max_score=itm["max_score"])
        self.similarity_filter = ImgDiffCaptionSimilarityFilter(
            similarity, min_score=sim["min_score"], max_score=sim["max_score"]
        )
        self.difference_captioner = ImgDiffDifferenceCaptioner(
            serving,
            keep_difference_images=keep_difference_images,
            image_output_dir=image_output_dir,
            empty_result=empty_result,
            sampling=sampling,
        )

    @property
    def steps(self) -> list[OperatorABC]:
        return [self.region_captioner, self.itm_filter, self.similarity_filter, self.difference_captioner]

    @property
    def itm_scorer(self) -> BlipITMScorer:
        return self.itm_filter.scorer

    @property
    def text_similarity(self) -> TextSimilarity:
        return self.similarity_filter.similarity

    def input_columns(self, **keys: Any) -> list[str]:
        return self.region_captioner.input_columns(**keys)

    def output_columns(self, **keys: Any) -> list[str]:
        return self.difference_captioner.output_columns(**keys)

    def provenance(self) -> dict[str, Any]:
        return {
            **self.region_captioner.provenance(),
            "image_text_matching": self.itm_scorer.describe(),
            "caption_similarity": self.text_similarity.describe(),
        }

    def prepare(self, storage: FileStorage) -> None:
        for step in self.steps:
            step.bind_storage(storage)
            step.prepare(storage)

    def process(self, frame: pd.DataFrame, **keys: Any) -> pd.DataFrame:
        """The four steps in turn on one chunk; rows failing a step keep their error and skip the rest."""
        memo: dict[Any, Any] = {}  # each image decoded once per chunk, shared by the steps
        loaders = [getattr(step, "images", None) for step in self.steps]
        for loader in loaders:
            if loader is not None:
                loader.memo = memo
        try:
            for step in self.steps:
                frame = step.process_chunk(frame, **keys)
            return frame
        finally:
            for loader in loaders:
                if loader is not None:
                    loader.memo = None
            memo.clear()

    def cleanup(self) -> None:
        """Release the scoring models (and the VLM when this operator built it)."""
        self.itm_scorer.cleanup()
        self.text_similarity.cleanup()
        if self._owns_serving:
            self.serving.cleanup()
