"""What a grown table costs: a table run once, then again with 1% new rows inserted (only they should be sent).

    .venv/bin/python benchmarks/incremental.py [--rows 10000] [--new_fraction 0.01] [--append]
        [--delay 0] [--chunk_size 512] [--check_clean]

A one-step pipeline (``PromptedVQAGenerator``, text prompts) on the API backend against the fake OpenAI
server (``tests.support.openai_test_server``, 8 requests in flight) runs on ``--rows`` rows; then
``--new_fraction`` new rows are inserted at evenly spread places (``--append``: at the end), which shifts
every chunk, and the same pipeline runs again on the same cache. Requests are counted at the server.
Targets (issue 23): the rerun sends at most 1.2% of the first run's requests and takes at most 5% of its
wall time. ``--check_clean`` also runs the new table on a fresh cache and checks the step files are equal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run(table: Path, cache: Path, url: str, chunk_size: int) -> float:
    """Wall seconds of one run of the one-step pipeline."""
    from dataflow_mm import FileStorage, PipelineABC, PromptedVQAGenerator
    from dataflow_mm.serving.api_serving import APIVLMServing_openai

    serving = APIVLMServing_openai(url, "test-model", api_key_env=None, max_workers=8)

    class Answers(PipelineABC):
        def __init__(self) -> None:
            self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="inc", chunk_size=chunk_size)
            self.ask = PromptedVQAGenerator(serving)

        def forward(self) -> None:
            self.ask.run(self.storage.step(), input_image_key=None)

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run summary
        Answers().run()
    wall = time.perf_counter() - started
    serving.cleanup()
    return wall


def rows(ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": i, "prompt": f"describe item {i} in one sentence", "meta": {"source": "bench", "n": i}} for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--new_fraction", type=float, default=0.01)
    parser.add_argument("--append", action="store_true", help="new rows at the end instead of spread through")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the fake server takes per request")
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--check_clean", action="store_true", help="compare with a clean run on the new table")
    args = parser.parse_args()

    from dataflow_mm.common.logger import get_logger
    from tests.support.openai_test_server import OpenAITestServer
    from tests.support.sample_data import write_jsonl

    get_logger().setLevel("WARNING")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    new = max(1, round(args.rows * args.new_fraction))
    ids = list(range(args.rows))
    if args.append:
        grown = [*ids, *range(args.rows, args.rows + new)]
    else:
        every = max(1, args.rows // new)
        grown = []
        extra = iter(range(args.rows, args.rows + new))
        for position, i in enumerate(ids):
            if position % every == every // 2 and len(grown) - position < new:
                grown.append(next(extra))
            grown.append(i)
        grown += list(extra)
    with tempfile.TemporaryDirectory() as tmp, OpenAITestServer(delay=args.delay) as server:
        folder = Path(tmp)
        table = write_jsonl(folder / "table.jsonl", rows(ids))
        cache = folder / "cache"
        first_wall = run(table, cache, server.base_url, args.chunk_size)
        first_requests = server.requests.total
        write_jsonl(table, rows(grown))
        second_wall = run(table, cache, server.base_url, args.chunk_size)
        second_requests = server.requests.total - first_requests
        where = "appended" if args.append else "inserted through the table"
        print(f"first run : {args.rows} rows, {first_requests} requests, {first_wall:.2f} s")
        print(f"rerun     : {len(grown)} rows ({new} new, {where}), {second_requests} requests, {second_wall:.2f} s")
        share_requests = second_requests / first_requests
        share_wall = second_wall / first_wall
        print(f"requests re-sent: {100 * share_requests:.2f}% of the first run's (target <= 1.2%)")
        print(f"wall time       : {100 * share_wall:.2f}% of the first run's (target <= 5%)")
        ok = share_requests <= 0.012 and share_wall <= 0.05
        if args.check_clean:
            run(table, folder / "clean", server.base_url, args.chunk_size)
            same = (cache / "inc_step1.jsonl").read_bytes() == (folder / "clean" / "inc_step1.jsonl").read_bytes()
            print(f"step file equals a clean run on the new table: {same}")
            ok = ok and same
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
