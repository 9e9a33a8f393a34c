"""Both pipeline scripts on a real two-node Ray cluster, run unchanged from a folder with relative paths.

The cluster is started here as a user would (``ray start --head``, then ``ray start --address`` for a
second node, token authentication on), on a free port with its own temp folder and token. It is
stopped by ending exactly the processes this module started (each ``ray start`` runs in its own
session), never with ``ray stop``, which would end every Ray on the machine.
The step files must equal the local runner's, byte for byte: workers resolve every relative path
(input table, cache path, extra outputs, image paths in rows) as the driver does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.openai_test_server import OpenAITestServer

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
KEY_VAR = "DFMM_CLUSTER_API_KEY"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(session_ids: set[int]) -> list[int]:
    """Live processes (zombies excluded) in the given sessions: what one ``ray start`` left running."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in session_ids:  # state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def end_sessions(session_ids: set[int], grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process of these sessions, SIGKILL what is left after ``grace_s``; the survivors."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_processes(session_ids):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while session_processes(session_ids) and time.monotonic() < deadline:
            time.sleep(0.2)
    return session_processes(session_ids)


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what the driver needs: the token, the auth mode, this checkout on PYTHONPATH


@pytest.fixture(scope="module")
def two_node_cluster(tiny_models_dir: Path) -> Iterator[Cluster]:
    """A head and a second node (1 CPU each) on 127.0.0.1, sharing this machine's filesystem."""
    temp_dir = tempfile.mkdtemp(prefix="dfmm_ray_", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port = free_port()
    env = {
        **os.environ,
        # The token reaches every node and the driver through the environment (RAY_AUTH_TOKEN); a user copies
        # ~/.ray/auth_token of the head to each node instead.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Workers inherit their node's environment, not the driver's: this checkout, offline hub, tiny models.
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "DATAFLOW_MM_TINY_DIR": str(tiny_models_dir),
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common,
            f"--dashboard-agent-listen-port={free_port()}"]  # fmt: skip
    second = [RAY, "start", f"--address=127.0.0.1:{port}", *common, f"--dashboard-agent-listen-port={free_port()}"]
    sessions: set[int] = set()
    try:
        for cmd in (head, second):
            proc = subprocess.Popen(
                cmd, env=env, cwd=temp_dir, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            sessions.add(proc.pid)  # its session: every process this `ray start` leaves behind
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
        yield Cluster(address=f"127.0.0.1:{port}", env=env)
    finally:
        survivors = end_sessions(sessions)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"Ray processes left behind: {survivors}"


def run_script(script: str, workspace: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "gpu_pipelines" / script), *args]
    done = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "Traceback" not in done.stderr
    return done


def assert_same_step_files(cache: Path, steps: int) -> None:
    for step in range(1, steps + 1):
        local, on_ray = (cache / f"{prefix}_step{step}.jsonl" for prefix in ("local", "ray"))
        assert on_ray.read_bytes() == local.read_bytes(), f"step {step}"
    assert not (cache / f"local_step{steps + 1}.jsonl").exists()


def test_region_captions_on_a_two_node_cluster_equal_the_local_run(two_node_cluster: Cluster, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(REPO / "data" / "image_region_caption", workspace / "data" / "image_region_caption")
    env = {**two_node_cluster.env, KEY_VAR: "sk-cluster-test"}
    with OpenAITestServer(api_key="sk-cluster-test") as server:
        for name, runner in (("local", []), ("ray", ["--runner", "ray", "--ray_address", two_node_cluster.address])):
            # the default input, cache path and image paths in rows are all relative to the working folder
            run_script(
                "image_region_caption_pipeline.py", workspace, env,
                "--backend", "api", "--api_url", server.base_url, "--model_name", "test-model",
                "--api_key_env", KEY_VAR, "--chunk_size", "2", "--file_name_prefix", name,
                "--output_image_with_bbox_path", f"cache/{name}_with_bbox.jsonl", *runner,
            )  # fmt: skip
    cache = workspace / "cache" / "image_region_caption"
    assert_same_step_files(cache, steps=3)
    # the extra output lands where the relative path points from the driver's folder
    assert (workspace / "cache" / "ray_with_bbox.jsonl").read_bytes() == (cache / "ray_step1.jsonl").read_bytes()


def test_imgdiff_on_a_two_node_cluster_equals_the_local_run(
    two_node_cluster: Cluster, tmp_path: Path, tiny_llava_dir: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(REPO / "data" / "imgdiff", workspace / "data" / "imgdiff")
    for name, runner in (("local", []), ("ray", ["--runner", "ray", "--ray_address", two_node_cluster.address])):
        run_script(
            "imgdiff_pipeline.py", workspace, two_node_cluster.env,
            "--backend", "hf", "--model_path", str(tiny_llava_dir), "--max_tokens", "4", "--temperature", "0",
            "--similarity_min_score", "-1", "--file_name_prefix", name, *runner,
        )  # fmt: skip
    assert_same_step_files(workspace / "cache" / "imgdiff", steps=5)
