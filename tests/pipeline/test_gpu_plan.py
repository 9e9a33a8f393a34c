"""One GPU for a vLLM engine and the Img-Diff scorers: the engine's share leaves room for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow_mm.common.errors import UserError
from dataflow_mm.pipeline.gpu_plan import (
    GIB,
    engine_share,
    scorer_bytes,
    scorers_reserve_bytes,
    share_gpu_with_scorers,
)
from dataflow_mm.scoring import DEFAULT_BLIP_ITM, DEFAULT_CLIP
from dataflow_mm.serving.vllm_engine_args import DEFAULT_GPU_MEMORY_UTILIZATION
from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm
from tests.support.fake_serving import FakeVLMServing


def test_the_default_scorers_reserve_is_computed_from_their_parameters() -> None:
    assert scorer_bytes(DEFAULT_BLIP_ITM) == 224_000_000 * 4 and scorer_bytes(DEFAULT_CLIP) == 151_000_000 * 4
    reserve = scorers_reserve_bytes([DEFAULT_BLIP_ITM, DEFAULT_CLIP])
    assert 3 * GIB < reserve < 4 * GIB  # BLIP eager at batch 32: 1.6 GiB of activations alone
    assert scorers_reserve_bytes([]) == 0


def test_a_local_scorer_folder_counts_its_weight_files(tiny_blip_dir: Path) -> None:
    size = sum(p.stat().st_size for p in tiny_blip_dir.glob("*.safetensors"))
    assert size and scorer_bytes(tiny_blip_dir) == size


@pytest.mark.parametrize(("gib", "expected"), [(24, 0.74), (40, 0.80), (80, 0.85)])
def test_engine_share_on_24_40_80_gb_cards(gib: int, expected: float) -> None:
    total = int(gib * 1e9)  # cards are sold in GB
    share = engine_share(total, scorers_reserve_bytes([DEFAULT_BLIP_ITM, DEFAULT_CLIP]))
    assert share == expected
    # Whatever loads first, the other still fits: the engine's share plus the reserve stays under 0.9 of the card.
    assert share * total + scorers_reserve_bytes([DEFAULT_BLIP_ITM, DEFAULT_CLIP]) <= 0.9 * total


def test_too_small_a_card_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--device cpu"):
        engine_share(4 * GIB, 3 * GIB)


def test_only_a_vllm_serving_without_a_user_share_is_planned(tiny_qwen_dir: Path) -> None:
    planned = LocalModelVLMServing_vllm(str(tiny_qwen_dir))
    assert share_gpu_with_scorers(planned, [DEFAULT_BLIP_ITM, DEFAULT_CLIP], 24 * 10**9) == 0.74
    assert planned.engine_args()["gpu_memory_utilization"] == 0.74
    chosen = LocalModelVLMServing_vllm(str(tiny_qwen_dir), vllm_gpu_memory_utilization=0.6)
    assert share_gpu_with_scorers(chosen, [DEFAULT_BLIP_ITM], 24 * 10**9) is None
    assert chosen.gpu_memory_utilization == 0.6
    assert share_gpu_with_scorers(LocalModelVLMServing_vllm(str(tiny_qwen_dir)), [DEFAULT_BLIP_ITM], None) is None
    assert share_gpu_with_scorers(FakeVLMServing(), [DEFAULT_BLIP_ITM], 24 * 10**9) is None
    assert LocalModelVLMServing_vllm(str(tiny_qwen_dir)).gpu_memory_utilization == DEFAULT_GPU_MEMORY_UTILIZATION
