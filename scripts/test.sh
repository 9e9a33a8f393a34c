#!/usr/bin/env bash
# Set up everything the tests need and run them (this is what .ci/run calls).
#   bash scripts/test.sh [pytest args...]
# 1. .venv with dataflow-mm[test] (torch CPU, transformers, sentence-transformers, MiniLM weights)
# 2. .venv-vllm: vLLM's CPU build, so the vLLM backend is exercised for real
# 3. Debian's chromium for the report's browser test (installed when missing)
# 4. ruff, then the whole pytest suite
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
bash scripts/setup_vllm_env.sh
bash scripts/setup_browser.sh
export DATAFLOW_MM_REQUIRE_VLLM=1
export DATAFLOW_MM_TINY_DIR="${DATAFLOW_MM_TINY_DIR:-$(pwd)/.tiny_models}"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
