#!/usr/bin/env bash
# Set up everything the tests need and run them (this is what .ci/run calls).
#   bash scripts/test.sh [pytest args...]
# 1. .venv with dataflow-mm[test] (torch CPU, transformers, sentence-transformers, MiniLM weights)
# 2. .venv-vllm: vLLM's CPU build, so the vLLM backend is exercised for real
# 3. .venv-min: every dependency at its declared lower bound (constraints-min.txt)
# 4. Debian's chromium for the report's browser test (installed when missing)
# 5. ruff, then the whole pytest suite; without pytest args also
#    - the fast tests on .venv-min (the lower bounds), and
#    - the hf backend's tests in .venv-vllm (the transformers version the vLLM extra selects), and the
#      vLLM serving's describe() contract and vLLM's own output classes for failed requests there (the main
#      env has no vLLM)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
bash scripts/setup_vllm_env.sh
bash scripts/setup_min_env.sh
bash scripts/setup_browser.sh
export DATAFLOW_MM_REQUIRE_VLLM=1
export DATAFLOW_MM_TINY_DIR="${DATAFLOW_MM_TINY_DIR:-$(pwd)/.tiny_models}"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
if [ $# -eq 0 ]; then
    echo "[test] the fast tests on the declared minimum versions (.venv-min)"
    DATAFLOW_MM_TINY_DIR="$(pwd)/.tiny_models/min" .venv-min/bin/python -m pytest -q -p no:cacheprovider \
        tests/storage tests/imaging tests/pipeline tests/operators tests/scoring tests/test_packaging.py \
        tests/serving/test_api_serving.py tests/serving/test_model_resolver.py \
        tests/serving/test_hf_cache_layout.py tests/serving/test_hf_serving.py
    echo "[test] the hf backend on the vLLM environment's transformers, and vLLM's describe() contract (.venv-vllm)"
    DATAFLOW_MM_TINY_DIR="$(pwd)/.tiny_models/vllm_env" .venv-vllm/bin/python -m pytest -q -p no:cacheprovider \
        tests/serving/test_hf_serving.py tests/serving/test_transient_failures.py \
        "tests/pipeline/test_describe_contract.py::test_describe_is_the_same_before_and_after_loading[LocalModelVLMServing_vllm]"
fi
