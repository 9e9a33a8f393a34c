"""Every run also writes its log under ``{cache_path}/logs/``, one file per run named by its start
time; the summary names the file, and registered secrets never reach it."""

from __future__ import annotations

import re
from pathlib import Path

from dataflow_mm import ExistingBBoxDataGenConfig, FileStorage, ImageBboxGenerator, PipelineABC, PromptedVQAGenerator
from dataflow_mm.common.logger import get_logger
from dataflow_mm.common.secrets import REDACTED, register_secret
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import write_region_caption_table

SECRET = "sk-run-log-test-0123456789abcdef"


class ChattyServing(FakeVLMServing):
    """Logs a line holding the API key on every call, as a careless backend might."""

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        get_logger("serving.chatty").warning(f"calling https://api.example/v1 with Bearer {SECRET} and key={SECRET}")
        return super()._chat_batch(conversations, sampling)


class RegionCaptions(PipelineABC):
    def __init__(self, table: Path, cache: Path) -> None:
        self.storage = FileStorage(str(table), cache_path=str(cache), file_name_prefix="rc", chunk_size=2)
        self.boxes = ImageBboxGenerator(ExistingBBoxDataGenConfig(max_boxes=4))
        self.vqa = PromptedVQAGenerator(ChattyServing())

    def forward(self) -> None:
        self.boxes.run(self.storage.step(), input_image_key="image", input_bbox_key="bbox")
        self.vqa.run(self.storage.step(), input_image_key="image_with_bbox", input_prompt_key="prompt")


def test_each_run_writes_one_log_file_under_the_cache_that_the_summary_names(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    register_secret(SECRET)
    table = write_region_caption_table(tmp_path / "imgs", n_rows=3)
    cache = tmp_path / "cache"

    first = RegionCaptions(table, cache).run()
    printed = capsys.readouterr().out
    (log_file,) = sorted((cache / "logs").iterdir())
    assert re.fullmatch(r"\d{8}-\d{6}-\d{6}\.log", log_file.name)
    assert first.log_path == str(log_file) and first.to_dict()["log_path"] == str(log_file)
    assert f"log: {log_file}" in printed

    text = log_file.read_text(encoding="utf-8")
    assert text.count("calling https://api.example/v1") == 2  # two chunks, two calls, both logged
    assert SECRET not in text and REDACTED in text
    assert "==== dataflow-mm run summary ====" in text and f"log: {log_file}" in text

    second = RegionCaptions(table, cache).run()  # resumed: every step skipped, still its own log
    logs = sorted((cache / "logs").iterdir())
    assert len(logs) == 2 and logs[0] == log_file and second.log_path == str(logs[1])
    assert "skipped" in logs[1].read_text(encoding="utf-8")
    assert "calling https://api.example/v1" not in logs[1].read_text(encoding="utf-8")


def test_the_log_file_survives_a_library_closing_every_handler(tmp_path: Path) -> None:
    """vLLM's engine shutdown closes logging handlers; the next record reopens and continues the file."""
    from dataflow_mm.pipeline.run_log import run_log

    log = get_logger("pipeline.test")
    with run_log(tmp_path) as opened:
        log.info("before the close")
        for handler in list(get_logger().handlers):
            handler.close()
        log.info("after the close")
    text = opened.path.read_text(encoding="utf-8")
    assert "before the close" in text and "after the close" in text
