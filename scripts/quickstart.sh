#!/usr/bin/env bash
# The main job in one command: set up .venv, scaffold a workspace, run a pipeline on the demo data.
#   bash scripts/quickstart.sh                         # region captions (the main job)
#   bash scripts/quickstart.sh imgdiff                 # Img-Diff difference captions
#   bash scripts/quickstart.sh image_region_caption --model_path /models/Qwen2.5-VL-3B-Instruct
# WORKSPACE=dir chooses the workspace (default: demo_run). Offline, or when a model cannot be
# downloaded, the pipeline falls back to tiny random-weight models and says so: their output is
# meaningless smoke-test text.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PIPELINE="image_region_caption"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    PIPELINE="$1"
    shift
fi
SCRIPT="gpu_pipelines/${PIPELINE%_pipeline}_pipeline.py"
[ -f "$SCRIPT" ] || { echo "unknown pipeline '$PIPELINE': choose one of $(ls gpu_pipelines | sed 's/_pipeline.py//' | xargs)" >&2; exit 2; }
bash scripts/setup_env.sh hf,scoring
WORKSPACE="${WORKSPACE:-demo_run}"
"$ROOT/.venv/bin/dataflowmm" init "$WORKSPACE"
cd "$WORKSPACE"
"$ROOT/.venv/bin/python" "$SCRIPT" "$@"
# What to type next, each line working as printed (the activation line puts .venv's python and
# dataflowmm first on PATH; without it, prefix them with .venv/bin/ as this script does).
CACHE="cache/${PIPELINE%_pipeline}"
RERUN="python $SCRIPT"
[ $# -eq 0 ] || RERUN="$RERUN$(printf ' %q' "$@")"
if [ "$CACHE" = "cache/image_region_caption" ]; then
    RERUN="$RERUN --structured_answer json   # one JSON caption per region: what export needs"
fi
cat <<EOF

[quickstart] done. Next steps, in this order (each line works as printed):
  source $(printf %q "$ROOT/.venv/bin/activate")
  cd $(printf %q "$(pwd)")
  $RERUN
  dataflowmm export $CACHE --format sharegpt --out export/sharegpt
  dataflowmm report $CACHE
EOF
