"""DataFlow-MM's own pipeline scripts, written as its users write them with only the imports changed,
run as subprocesses against the fake OpenAI endpoint (``tests.support.openai_test_server``).

The scripts follow DataFlow-MM's ``api_pipelines/image_region_caption_api_pipeline.py`` (the seed's
two-storage pattern), ``api_pipelines/image_vqa.py`` and ``api_pipelines/video_caption_api_pipeline.py``:
the key set in ``os.environ["DF_API_KEY"]`` at the top, ``APIVLMServing_openai(api_url=...,
key_name_of_api_key=..., model_name=..., image_io=None, send_request_stream=False, max_workers=10,
timeout=1800)``, a plain ``pipe.forward()``. Only the values a user fills in (paths, URL) differ.
"""

# ruff: noqa: E501  (the scripts below keep DataFlow-MM's long lines as they are)
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.openai_test_requests import image_urls
from tests.support.openai_test_server import OpenAITestServer
from tests.support.sample_data import write_region_caption_table

pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-xxxx"

REGION_CAPTION_API_PIPELINE = """
import os
os.environ["DF_API_KEY"] = "sk-xxxx"

from dataflow_mm import ImageBboxGenerator, ExistingBBoxDataGenConfig  # was: dataflow.operators.core_vision...
from dataflow_mm import PromptedVQAGenerator  # was: dataflow.operators.core_vision.generate.prompted_vqa_generator
from dataflow_mm import FileStorage  # was: dataflow.utils.storage

from dataflow_mm import APIVLMServing_openai  # was: dataflow.serving.api_vlm_serving_openai
class ImageRegionCaptionPipeline:
    def __init__(
        self,
        first_entry_file: str = "{first_entry_file}",
        cache_path: str = "./cache/image_region_caption",
        file_name_prefix: str = "region_caption",
        cache_type: str = "jsonl",
        input_image_key: str = "image",
        input_bbox_key: str = "bbox",
        max_boxes: int = 10,
        output_image_with_bbox_path: str = "./cache/image_region_caption/image_with_bbox_result.jsonl",
    ):
        self.bbox_storage = FileStorage(
            first_entry_file_name=first_entry_file,
            cache_path=cache_path,
            file_name_prefix=file_name_prefix,
            cache_type=cache_type
        )

        self.cfg = ExistingBBoxDataGenConfig(
            max_boxes=max_boxes,
            input_jsonl_path=first_entry_file,
            output_jsonl_path=output_image_with_bbox_path,
        )

        self.caption_storage = FileStorage(
            first_entry_file_name=output_image_with_bbox_path,
            cache_path=cache_path,
            file_name_prefix=file_name_prefix,
            cache_type=cache_type
        )
        self.vlm_serving = APIVLMServing_openai(
            api_url="{api_url}", # Any API platform compatible with OpenAI format
            model_name="gpt-4o-mini",
            image_io=None,
            send_request_stream=False,
            max_workers=10,
            timeout=1800
        )
        self.bbox_generator = ImageBboxGenerator(config=self.cfg)
        self.caption_generator = PromptedVQAGenerator(serving=self.vlm_serving,system_prompt="You are a helpful assistant.")
        self.input_image_key = input_image_key
        self.input_bbox_key = input_bbox_key
        self.bbox_record=None

    def forward(self):
        self.bbox_generator.run(
            storage=self.bbox_storage.step(),
            input_image_key=self.input_image_key,
            input_bbox_key=self.input_bbox_key
        )

        self.caption_generator.run(
            storage=self.caption_storage.step(),
            input_image_key='image_with_bbox',
            input_prompt_key='prompt'
        )


if __name__ == "__main__":
    pipe = ImageRegionCaptionPipeline()
    pipe.forward()
"""

IMAGE_VQA_PIPELINE = """
import os

os.environ["DF_API_KEY"] = "sk-xxxx"

from dataflow_mm import FileStorage  # was: from dataflow.utils.storage import FileStorage
from dataflow_mm import VLMServing as LLMServingABC  # was: from dataflow.core import LLMServingABC
from dataflow_mm import APIVLMServing_openai  # was: from dataflow.serving.api_vlm_serving_openai import ...
from dataflow_mm import PromptedVQAGenerator  # was: from dataflow.operators.core_vision import PromptedVQAGenerator


class ImageVQAPipeline:
    def __init__(self, llm_serving: LLMServingABC = None):

        # ---------- 1. Storage ----------
        self.storage = FileStorage(
            first_entry_file_name="{first_entry_file}",
            cache_path="./cache_local",
            file_name_prefix="qa",
            cache_type="json",
        )

        # ---------- 2. Serving ----------
        self.vlm_serving = APIVLMServing_openai(
            api_url="{api_url}", # Any API platform compatible with OpenAI format
            key_name_of_api_key="DF_API_KEY", # Set the API key for the corresponding platform in the environment variable or line 4
            model_name="gpt-5-nano-2025-08-07",
            image_io=None,
            send_request_stream=False,
            max_workers=10,
            timeout=1800
        )

        # ---------- 3. Operator ----------
        self.vqa_generator = PromptedVQAGenerator(
            serving=self.vlm_serving,
            system_prompt= "You are a image question-answer generator. Your task is to generate a question-answer pair for the given image content."
        )

    def forward(self):
        input_image_key = "image"
        output_answer_key = "vqa"

        self.vqa_generator.run(
            storage=self.storage.step(),
            input_conversation_key="conversation",
            input_image_key=input_image_key,
            output_answer_key=output_answer_key,
        )

if __name__ == "__main__":
    pipe = ImageVQAPipeline()
    pipe.forward()
"""

VIDEO_CAPTION_API_PIPELINE = """
from dataflow_mm import APIVLMServing_openai, FileStorage, PromptedVQAGenerator  # only the imports changed

class VideoCaptionGenerator():
    def __init__(self):
        self.storage = FileStorage(
            first_entry_file_name="{first_entry_file}",
            cache_path="./cache",
            file_name_prefix="video_caption_api",
            cache_type="json",
        )
        self.vlm_serving = APIVLMServing_openai(
            api_url="{api_url}",
            key_name_of_api_key="DF_API_KEY",
            model_name="qwen3-vl-8b-instruct",
            image_io=None,
            send_request_stream=False,
            max_workers=10,
            timeout=1800
        )
        self.prompted_vqa_generator = PromptedVQAGenerator(
            serving=self.vlm_serving,
            system_prompt="You are a helpful assistant.",
        )

    def forward(self):
        self.prompted_vqa_generator.run(
            storage=self.storage.step(),
            input_image_key="image",
            input_video_key="video",
            input_conversation_key="conversation",
            output_answer_key="caption",
        )

if __name__ == "__main__":
    model = VideoCaptionGenerator()
    model.forward()
"""


def run_script(text: str, workdir: Path, **values: str) -> subprocess.CompletedProcess:
    script = workdir / "pipeline.py"
    script.write_text(
        text.replace("{first_entry_file}", values["first_entry_file"]).replace("{api_url}", values["api_url"])
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for name in ("DF_API_KEY", "OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    return subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def rows_of(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def test_the_region_caption_api_script_with_two_storages_runs_and_resumes(tmp_path: Path) -> None:
    """The seed's pattern: two FileStorages on one cache path and prefix, one per operator."""
    table = write_region_caption_table(tmp_path / "data", n_rows=3, size=(160, 120), n_boxes=2)
    with OpenAITestServer(api_key=KEY) as server:
        done = run_script(REGION_CAPTION_API_PIPELINE, tmp_path, first_entry_file=str(table), api_url=server.base_url)
        assert done.returncode == 0, done.stderr[-3000:]
        cache = tmp_path / "cache" / "image_region_caption"
        boxes, answers = rows_of(cache / "region_caption_step1.jsonl"), rows_of(cache / "region_caption_step2.jsonl")
        assert len(boxes) == 3 and all(r["image_with_bbox"] and "answer" not in r for r in boxes)  # not overwritten
        assert len(answers) == 3 and all(r["answer"] and r["error"] is None for r in answers)
        assert len(server.requests) == 3 and all(
            r.authorization == f"Bearer {KEY}" for r in server.requests
        )  # DF_API_KEY
        assert all(len(image_urls(r.body)) == 1 for r in server.requests)
        files = {p: p.read_bytes() for p in cache.glob("region_caption_step*.jsonl")}

        again = run_script(REGION_CAPTION_API_PIPELINE, tmp_path, first_entry_file=str(table), api_url=server.base_url)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.count("already complete, skipped") == 2  # both steps
        assert len(server.requests) == 3  # nothing asked again
        assert {p: p.read_bytes() for p in cache.glob("region_caption_step*.jsonl")} == files


def test_the_image_vqa_script_takes_image_lists_and_text_only_rows(tmp_path: Path) -> None:
    """DataFlow-MM's sample format (``"image": ["./a.jpg"]``) and a table with no image column at all."""
    images = [r["image"] for r in rows_of(write_region_caption_table(tmp_path / "data", n_rows=2, size=(96, 64)))]
    with_images = tmp_path / "sample_data.json"
    turns = [{"from": "human", "value": "<image>\nWhat is in the image?"}]
    with_images.write_text(json.dumps([{"image": [path], "conversation": turns} for path in images]))
    text_only = tmp_path / "text_only.json"
    text_only.write_text(
        json.dumps([{"conversation": [{"from": "human", "value": f"Question {i}?"}]} for i in range(3)])
    )
    with OpenAITestServer(api_key=KEY) as server:
        done = run_script(IMAGE_VQA_PIPELINE, tmp_path, first_entry_file=str(with_images), api_url=server.base_url)
        assert done.returncode == 0, done.stderr[-3000:]
        rows = rows_of(tmp_path / "cache_local" / "qa_step1.json")
        assert len(rows) == 2 and all(r["vqa"] and r["error"] is None for r in rows)
        assert [len(image_urls(r.body)) for r in server.requests] == [1, 1]

        (tmp_path / "text").mkdir()
        done = run_script(
            IMAGE_VQA_PIPELINE, tmp_path / "text", first_entry_file=str(text_only), api_url=server.base_url
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = rows_of(tmp_path / "text" / "cache_local" / "qa_step1.json")
        assert len(rows) == 3 and all(r["vqa"] and r["error"] is None for r in rows)
        assert [len(image_urls(r.body)) for r in server.requests[2:]] == [0, 0, 0]  # asked text-only


def test_a_video_key_stops_with_one_clear_error_naming_it(tmp_path: Path) -> None:
    table = tmp_path / "sample_data.json"
    table.write_text(json.dumps([{"video": ["./clip.mp4"], "conversation": [{"from": "human", "value": "?"}]}]))
    with OpenAITestServer() as server:
        done = run_script(VIDEO_CAPTION_API_PIPELINE, tmp_path, first_entry_file=str(table), api_url=server.base_url)
        assert server.requests == []
    assert done.returncode != 0
    assert "UnsupportedArgumentError" in done.stderr and "input_video_key='video'" in done.stderr
    assert "TypeError" not in done.stderr
