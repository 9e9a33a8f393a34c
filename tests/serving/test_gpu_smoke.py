"""benchmarks/gpu_smoke.py's stage 1 (plumbing) on vLLM's CPU build: the one-shot check a GPU user runs,
run here in the vLLM test environment (subprocess), with its JSON asserted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("DATAFLOW_MM_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"


@pytest.mark.vllm
@pytest.mark.slow
def test_gpu_smoke_stage_1_passes_on_vllms_cpu_build(tmp_path: Path) -> None:
    if not VLLM_PYTHON.exists():
        if os.environ.get("DATAFLOW_MM_REQUIRE_VLLM") == "1":
            pytest.fail(f"{VLLM_PYTHON} is absent; DATAFLOW_MM_REQUIRE_VLLM=1 requires it", pytrace=False)
        pytest.skip(f"{VLLM_PYTHON} is absent (bash scripts/setup_vllm_env.sh)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    for name in ("HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        (tmp_path / name.lower()).mkdir()
        env[name] = str(tmp_path / name.lower())
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1")
    out = tmp_path / "smoke.json"
    command = [str(VLLM_PYTHON), str(REPO / "benchmarks" / "gpu_smoke.py"), "--stages", "1,2,3", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    plumbing = result["stages"]["1_plumbing"]
    assert plumbing["passed"] and all(plumbing["checks"].values()), plumbing
    assert plumbing["window"]["enqueued"] == 16 and plumbing["processes_left"] == []
    assert result["stages"]["2_model"] == {"skipped": "no --model folder given"}
    assert result["stages"]["3_memory_plan"] == {"skipped": "no GPU"}
    assert result["passed"] is True and result["cuda"] is False
