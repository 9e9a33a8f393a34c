"""Tiny random-weight models: real architectures, loadable offline, deterministic, small."""

from __future__ import annotations

import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BlipForImageTextRetrieval,
    CLIPModel,
)

from dataflow_mm.models import tiny as tiny_models
from dataflow_mm.models.processor_loading import load_processor
from dataflow_mm.models.tiny import is_tiny_model, tiny_model_path
from dataflow_mm.models.tiny_builders import BUILDER_VERSION, MARKER_FILE

pytestmark = pytest.mark.slow

FIXTURES = {
    "qwen2_5_vl": ("tiny_qwen_dir", "Qwen2_5_VLForConditionalGeneration"),
    "llava_next": ("tiny_llava_dir", "LlavaNextForConditionalGeneration"),
    "blip_itm": ("tiny_blip_dir", "BlipForImageTextRetrieval"),
    "clip": ("tiny_clip_dir", "CLIPModel"),
    "owlv2": ("tiny_owlv2_dir", "Owlv2ForObjectDetection"),
}


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (90, 70), "red"), Image.new("RGB", (160, 60), "blue")]


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", list(FIXTURES))
def test_folder_has_config_marker_and_is_small(kind: str, request: pytest.FixtureRequest) -> None:
    fixture, architecture = FIXTURES[kind]
    folder: Path = request.getfixturevalue(fixture)

    assert folder.name == f"{kind}-{BUILDER_VERSION}"
    assert AutoConfig.from_pretrained(folder).architectures == [architecture]
    assert json.loads((folder / MARKER_FILE).read_text())["random_weights"] is True
    assert json.loads((folder / MARKER_FILE).read_text())["kind"] == kind
    assert is_tiny_model(folder)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5_000_000


@pytest.mark.parametrize("kind", list(FIXTURES))
def test_builds_are_byte_identical(kind: str, tmp_path: Path) -> None:
    builder = tiny_models.BUILDERS[kind]
    first, second = builder(tmp_path / "a"), builder(tmp_path / "b")

    assert _digest(first) == _digest(second)


@pytest.mark.parametrize("fixture", ["tiny_qwen_dir", "tiny_llava_dir"])
def test_vlm_chat_template_and_batched_generate(fixture: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(fixture)
    processor = load_processor(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the red box."}]}],
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the difference?"}]},
        ],
    ]

    prompts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    inputs = processor(text=prompts, images=_images(), padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert all(processor.image_token in p and "Describe the red box." in p for p in prompts[:1])
    assert processor.tokenizer.padding_side == "left"
    assert output.shape[0] == 2 and output.shape[1] > inputs["input_ids"].shape[1]


def test_qwen_processor_needs_no_torchvision(tiny_qwen_dir: Path) -> None:
    processor = load_processor(tiny_qwen_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )

    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert not hasattr(processor, "video_processor")
    assert "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    config = json.loads((tiny_qwen_dir / "config.json").read_text())
    head_dim = config["text_config"]["hidden_size"] // config["text_config"]["num_attention_heads"]
    assert sum(config["text_config"]["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert config["vision_config"]["out_hidden_size"] == config["text_config"]["hidden_size"]


def test_qwen_processor_found_from_model_type_alone(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "qwen"
    shutil.copytree(tiny_qwen_dir, copy)
    processor_files = ["processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"]
    for name in [*processor_files, "tokenizer_config.json"]:
        config = json.loads((copy / name).read_text())
        assert config.pop("processor_class") == "Qwen2_5_VLProcessor"  # saved under the real class name
        (copy / name).write_text(json.dumps(config))

    processor = load_processor(copy)  # class chosen from config.json's model_type

    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.tokenizer.padding_side == "left"


# Head sizes vLLM's CPU attention kernel supports (vllm/v1/attention/backends/cpu_attn.py).
VLLM_CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@pytest.mark.parametrize("fixture", ["tiny_qwen_dir", "tiny_llava_dir"])
def test_text_head_size_is_one_vllm_cpu_attention_supports(fixture: str, request: pytest.FixtureRequest) -> None:
    text = AutoConfig.from_pretrained(request.getfixturevalue(fixture)).text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    assert head_dim in VLLM_CPU_ATTENTION_HEAD_SIZES
    assert text.num_attention_heads * head_dim == text.hidden_size
    if fixture == "tiny_qwen_dir":
        assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2


def test_qwen_ships_the_processor_files_of_real_checkpoints(tiny_qwen_dir: Path) -> None:
    """vLLM loads the full processor (video processor included): it needs a video-processor config."""
    image = json.loads((tiny_qwen_dir / "processor_config.json").read_text())["image_processor"]
    legacy = json.loads((tiny_qwen_dir / "preprocessor_config.json").read_text())
    video = json.loads((tiny_qwen_dir / "video_preprocessor_config.json").read_text())

    assert legacy["image_processor_type"] == "Qwen2VLImageProcessor"
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    for config in (legacy, video):
        assert config["processor_class"] == "Qwen2_5_VLProcessor"
        assert (config["min_pixels"], config["max_pixels"]) == (56 * 56, 112 * 112)
        for key in ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
            assert config[key] == image[key], key


def test_llava_weights_use_the_llava_hf_layout_and_load_with_no_leftovers(tiny_llava_dir: Path) -> None:
    with safe_open(str(tiny_llava_dir / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]

    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)  # what vLLM's loader expects
    assert any(k.startswith("language_model.model.layers.") for k in keys)
    _, info = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir, output_loading_info=True)
    assert info["missing_keys"] == info["unexpected_keys"] == info["mismatched_keys"] == set()


def test_llava_processor_matches_vision_tower(tiny_llava_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    vision = AutoConfig.from_pretrained(tiny_llava_dir).vision_config

    assert processor.patch_size == vision.patch_size
    assert processor.image_processor.crop_size["height"] == vision.image_size
    assert processor.num_additional_image_tokens == 1  # CLIP's CLS token
    assert processor.tokenizer("red").input_ids[0] == processor.tokenizer.bos_token_id


def test_blip_itm_scores_a_pair_per_row(tiny_blip_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_blip_dir)
    model = BlipForImageTextRetrieval.from_pretrained(tiny_blip_dir).eval()
    inputs = processor(images=_images(), text=["a red car", "a dog"], padding=True, return_tensors="pt")

    with torch.inference_mode():
        probabilities = model(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1]

    assert probabilities.shape == (2,)
    assert bool(((probabilities > 0) & (probabilities < 1)).all())


def test_clip_embeds_text_and_images(tiny_clip_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_clip_dir)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()

    with torch.inference_mode():
        text = model.get_text_features(**processor(text=["a red car", "a dog"], padding=True, return_tensors="pt"))
        image = model.get_image_features(**processor(images=_images(), return_tensors="pt"))

    assert text.pooler_output.shape == (2, model.config.projection_dim)
    assert image.pooler_output.shape == (2, model.config.projection_dim)


def test_tiny_model_path_builds_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = tiny_models.BUILDERS["clip"]
    monkeypatch.setitem(tiny_models.BUILDERS, "clip", lambda out: calls.append("build") or real(out))

    first = tiny_model_path("clip", root=tmp_path)
    second = tiny_model_path("clip", root=tmp_path)

    assert first == second == tmp_path / f"clip-{BUILDER_VERSION}"
    assert calls == ["build"]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging folder left behind


def test_root_defaults_to_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tiny_models.ENV_TINY_DIR, str(tmp_path))

    assert tiny_model_path("clip").parent == tmp_path


def test_concurrent_builders_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: tiny_model_path("clip", root=tmp_path), range(3)))

    assert len(set(paths)) == 1 and is_tiny_model(paths[0])
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]


def test_stale_folder_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / f"clip-{BUILDER_VERSION}"
    stale.mkdir()
    (stale / "leftover.txt").write_text("half a build")

    folder = tiny_model_path("clip", root=tmp_path)

    assert is_tiny_model(folder) and not (folder / "leftover.txt").exists()


def test_is_tiny_model_rejects_other_folders(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    assert not is_tiny_model(tmp_path)
    assert not is_tiny_model(tmp_path / "missing")
    assert not is_tiny_model(None)


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        tiny_model_path("gpt5", root=tmp_path)
