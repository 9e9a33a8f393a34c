#!/usr/bin/env bash
# The main job in one command: set up .venv, scaffold a workspace, run the region-caption pipeline.
#   bash scripts/quickstart.sh [WORKSPACE] [pipeline flags...]
# Offline, or when the default model cannot be downloaded, the pipeline falls back to a tiny
# random-weight model and says so: its captions are meaningless smoke-test text.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
bash scripts/setup_env.sh hf
WORKSPACE="${1:-demo_run}"
shift || true
"$ROOT/.venv/bin/dataflowmm" init "$WORKSPACE"
cd "$WORKSPACE"
"$ROOT/.venv/bin/python" gpu_pipelines/image_region_caption_pipeline.py "$@"
