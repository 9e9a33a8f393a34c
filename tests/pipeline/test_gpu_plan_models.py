"""Every model beside the vLLM engine is counted from its config and batch, the plan is logged, and the
card's size is read without a CUDA context in this process."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from dataflow_mm.pipeline import gpu_plan
from dataflow_mm.pipeline.gpu_plan import (
    GIB,
    ModelLoad,
    Tower,
    cuda_total_bytes,
    engine_share,
    nvidia_smi_total_bytes,
    scorers_reserve_bytes,
    tower_of,
)
from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.scoring import DEFAULT_BLIP_ITM, DEFAULT_CLIP
from dataflow_mm.scoring.object_detection import DEFAULT_DETECTOR


def test_blip_eager_attention_at_batch_32_needs_over_a_gib_and_owlv2_at_960_px_more() -> None:
    blip = ModelLoad(DEFAULT_BLIP_ITM, 32).activation_bytes()
    assert 1.0 * GIB < blip < 1.75 * GIB  # eager: 32 x 12 heads x 577^2 scores and probabilities dominate
    assert ModelLoad(DEFAULT_BLIP_ITM, 8).activation_bytes() == blip // 4  # linear in the batch
    assert ModelLoad(DEFAULT_CLIP, 32, "vision").activation_bytes() < 0.1 * GIB  # 50 tokens, SDPA
    owl = ModelLoad(DEFAULT_DETECTOR, 32).activation_bytes()
    assert owl > 4 * GIB  # 3,601 tokens a 960 px image
    eager_owl = Tower(3601, 768, 12, 3072, eager=True).activation_bytes(32)
    assert eager_owl > 8 * owl  # what SDPA saves at that length


def test_a_local_folders_tower_comes_from_its_config(tiny_blip_dir: Path, tiny_clip_dir: Path) -> None:
    blip = tower_of(tiny_blip_dir, "vision")
    assert blip is not None and blip.eager  # model_type blip: no SDPA in transformers 5.x
    clip = tower_of(tiny_clip_dir, "text")
    assert clip is not None and not clip.eager
    import json

    vision = json.loads((tiny_blip_dir / "config.json").read_text())["vision_config"]
    assert blip.tokens == (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    assert tower_of("no/such-model", "vision") is None
    assert ModelLoad("no/such-model").activation_bytes() == gpu_plan.UNKNOWN_ACTIVATION_BYTES


def test_the_model_proposer_adds_owlv2_and_a_second_clip_to_the_imgdiff_plan_and_logs_it(
    tmp_path: Path, tiny_qwen_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm
    from tests.support.imgdiff_pairs import write_captioned_pairs

    script = load_pipeline_script("imgdiff_pipeline")
    monkeypatch.setattr(script, "cuda_total_bytes", lambda device: 24 * 10**9)  # a 24 GB card, as if seen
    table = write_captioned_pairs(tmp_path / "pairs", 2)
    shares = {}
    for proposer in ("pixel", "model"):
        serving = LocalModelVLMServing_vllm(str(tiny_qwen_dir))
        with caplog.at_level(logging.INFO, logger="dataflow_mm"):
            caplog.clear()
            script.ImgDiffPipeline(
                serving, first_entry_file=str(table), cache_path=str(tmp_path / proposer), proposer=proposer
            )
        shares[proposer] = serving.gpu_memory_utilization
        plan = [r.getMessage() for r in caplog.records if "GPU plan" in r.getMessage()]
        assert len(plan) == (5 if proposer == "model" else 3), plan  # each model, and the CUDA context
    base = [ModelLoad(DEFAULT_BLIP_ITM), ModelLoad(DEFAULT_CLIP, tower="text")]
    full = [*base, ModelLoad(DEFAULT_DETECTOR), ModelLoad(DEFAULT_CLIP)]
    assert shares == {
        "pixel": engine_share(24 * 10**9, scorers_reserve_bytes(base)),
        "model": engine_share(24 * 10**9, scorers_reserve_bytes(full)),
    }
    assert shares["model"] < shares["pixel"] - 0.2  # OWLv2's batch of 960 px images is the largest load


def test_the_region_pipelines_verify_regions_plans_blip_beside_the_engine(
    tmp_path: Path, tiny_qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    script = load_pipeline_script("image_region_caption_pipeline")
    monkeypatch.setattr(script, "cuda_total_bytes", lambda device: 24 * 10**9)
    verified = LocalModelVLMServing_vllm(str(tiny_qwen_dir))
    script.ImageRegionCaptionPipeline(verified, cache_path=str(tmp_path / "a"), verify_regions=True)
    assert verified.gpu_memory_utilization == engine_share(24 * 10**9, scorers_reserve_bytes([DEFAULT_BLIP_ITM]))
    plain = LocalModelVLMServing_vllm(str(tiny_qwen_dir))
    script.ImageRegionCaptionPipeline(plain, cache_path=str(tmp_path / "b"))
    assert plain.gpu_memory_utilization == 0.9  # nothing beside the engine


def test_the_cards_size_is_read_by_nvidia_smi_without_cuda_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    tool = tmp_path / "nvidia-smi"  # prints what the real tool prints for the queried id (MiB), records the id
    tool.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/asked\necho 81559\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert nvidia_smi_total_bytes(1) == 81559 * 2**20
    assert "--id=1" in (tmp_path / "asked").read_text()  # cuda:1 is the physical GPU 1 of "3,1"
    assert cuda_total_bytes("cuda:0") == 81559 * 2**20 and "--id=3" in (tmp_path / "asked").read_text()
    assert cuda_total_bytes("cpu") is None
    assert not torch.cuda.is_initialized()
