"""Running the shipped pipeline scripts as a user does (a subprocess against the fake API server)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_IMAGES = REPO / "data" / "image_region_caption"
# Variables that would send the scripts' requests elsewhere than the test's server, or with a real key.
_UNSET = ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def write_photo_rows(path: Path, n_rows: int) -> Path:
    """A JSONL table of ``n_rows`` rows over the demo photos, one box each."""
    photos = ["street.jpg", "park.jpg", "kitchen.jpg"]
    rows = [{"id": i, "image": str(DEMO_IMAGES / photos[i % 3]), "bbox": [[40, 40, 120, 100]]} for i in range(n_rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def script_env() -> dict[str, str]:
    """This environment with this checkout's ``dataflow_mm`` first and no key or proxy variables."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in _UNSET:
        env.pop(name, None)
    return env


def run_script(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``cmd`` run from the repository root with ``script_env()``, its output captured."""
    return subprocess.run(cmd, cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=timeout)


def assert_one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, no traceback, and one ``error:`` line as the last thing on stderr (returned)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last
