#!/usr/bin/env bash
# End-to-end check of a GPU machine: the region-caption pipeline with vLLM and the real default model
# (Qwen/Qwen2.5-VL-3B-Instruct) on the shipped demo data, repeated to make a few hundred rows.
# Reports rows/s and tokens/s and exits non-zero when any row failed or was rejected, or when a
# tiny smoke-test model answered instead of the real one.
#
#   bash benchmarks/gpu_smoke.sh                                   # default model, 64 copies of the demo
#   MODEL=/models/Qwen2.5-VL-7B-Instruct REPEAT=16 bash benchmarks/gpu_smoke.sh --max_model_len 8192
#
# Extra arguments go to the pipeline script (e.g. --gpu_memory_utilization 0.8, --max_pixels 501760).
# Environment: PYTHON (default python), MODEL, REPEAT, OUT (work folder, default a new temp folder),
# ALLOW_TINY=1 to accept a tiny random-weight model (only to test this script without a GPU).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
MODEL="${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}"
REPEAT="${REPEAT:-64}"
OUT="${OUT:-$(mktemp -d -t dataflow_mm_gpu_smoke.XXXXXX)}"
mkdir -p "$OUT"

echo "== environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || echo "nvidia-smi not found"
"$PYTHON" -c "import vllm, torch; print('vllm', vllm.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"

echo "== table: $REPEAT copies of the demo rows -> $OUT/table.jsonl"
"$PYTHON" - "$REPO/data/image_region_caption/image_region_caption_demo.jsonl" "$OUT/table.jsonl" "$REPEAT" <<'EOF'
import json, sys
from pathlib import Path

source, target, repeat = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
with target.open("w") as out:
    for copy in range(repeat):
        for row in rows:
            image = Path(row["image"])
            if not image.is_absolute():  # demo paths are relative to the project folder
                image = (source.parents[2] / image).resolve()
            out.write(json.dumps({**row, "image": str(image), "copy": copy}) + "\n")
EOF

echo "== pipeline (vllm backend, $MODEL)"
started=$(date +%s.%N)
"$PYTHON" "$REPO/gpu_pipelines/image_region_caption_pipeline.py" \
    --backend vllm --model_path "$MODEL" --no_tiny_fallback \
    --first_entry_file "$OUT/table.jsonl" --cache_path "$OUT/cache" --file_name_prefix smoke \
    --output_image_with_bbox_path "$OUT/cache/smoke_with_bbox.jsonl" --chunk_size 256 "$@"
finished=$(date +%s.%N)

echo "== result"
"$PYTHON" - "$OUT/cache/smoke_summary.json" "$started" "$finished" "${ALLOW_TINY:-0}" <<'EOF'
import json, sys

summary = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
vlm_steps = [s for s in summary["steps"] if s["operator"] == "PromptedVQAGenerator"]
vlm_seconds = sum(s["seconds"] for s in vlm_steps) or wall
stats = summary["servings"][0]["stats"] if summary["servings"] else {}
generated, prompt = stats.get("completion_tokens", 0), stats.get("prompt_tokens", 0)
print(f"rows: {summary['rows_in']} in, {summary['rows_out']} out, {summary['rows_with_error']} with error, "
      f"{summary['rows_rejected']} rejected; {stats.get('truncated', 0)} answers cut at max_tokens")
print(f"rows/s: {summary['rows_out'] / wall:.2f} end to end ({wall:.1f} s, model load included)")
print(f"tokens/s (VLM step, engine start included, {vlm_seconds:.1f} s): {generated / vlm_seconds:.1f} generated, "
      f"{(prompt + generated) / vlm_seconds:.1f} prompt+generated")
failed = summary["rows_with_error"] or summary["rows_rejected"] or summary["rows_out"] != summary["rows_in"]
if failed:
    print(f"FAILED: row errors {summary['row_errors']}", file=sys.stderr)
    sys.exit(1)
if summary["smoke_test_model"] and sys.argv[4] != "1":
    print("FAILED: a tiny smoke-test model answered, not the real one", file=sys.stderr)
    sys.exit(1)
print("OK")
EOF
