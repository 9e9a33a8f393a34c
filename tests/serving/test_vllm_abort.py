"""A request the real vLLM engine aborts comes back pending, and is answered when sent again (issue 23).

Runs ``vllm_abort_script.py`` in the vLLM CPU test environment (skipped where it is absent, as the other
vLLM tests are) on the tiny random-weight Qwen2.5-VL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dataflow_mm.common.errors import ROW_DONE, ROW_PENDING, error_class_of, row_outcome
from tests.serving import test_vllm_serving as vllm_tests
from tests.serving.test_vllm_serving import in_vllm_env, run_bounded

vllm_python = vllm_tests.vllm_python  # the vLLM tests' fixtures: the environment's python, offline settings
vllm_env = vllm_tests.vllm_env
SCRIPT = Path(__file__).with_name("vllm_abort_script.py")


@in_vllm_env
def test_a_request_the_engine_aborts_is_pending_and_answered_on_a_rerun(
    vllm_python: Path, vllm_env: dict[str, str], tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    out_file = tmp_path / "out.json"
    done = run_bounded([str(vllm_python), str(SCRIPT), str(tiny_qwen_dir), str(out_file)], vllm_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-6000:]
    out: dict[str, Any] = json.loads(out_file.read_text())
    first, again = out["first"], out["again"]
    assert [row_outcome(c["error"]) for c in first] == [ROW_DONE, ROW_PENDING, ROW_DONE]
    aborted = first[1]
    assert aborted["text"] is None and error_class_of(aborted["error"]) == "ServingUnavailableError"
    assert all(c["text"] is not None and c["token_ids"] for c in (first[0], first[2]))
    assert again[0]["error"] is None and again[0]["token_ids"]  # the rerun answers it
