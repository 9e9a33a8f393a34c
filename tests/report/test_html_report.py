"""The HTML report's structure: header, data blob, escaping, image links, paging config, steps, CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from dataflow_mm.cli.main import main
from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.report import ReportError, build_report_html, report_after_run, write_report
from dataflow_mm.report.layout import detect_layout
from dataflow_mm.serving.base import Completion
from dataflow_mm.storage.file_storage import FileStorage
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import scene_with_boxes, write_jsonl, write_region_caption_table

REPO = Path(__file__).resolve().parents[2]
DEMO_TABLE = REPO / "data" / "image_region_caption" / "image_region_caption_demo.jsonl"
EVIL = "</script><script>window.__pwned = 1</script><img src=x onerror=alert(1)> & <!-- \u2028"


# -- reading a report back -----------------------------------------------------------------------
class Page(HTMLParser):
    """Tags, attributes, script bodies and visible header text of a report."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._script: dict[str, str | None] | None = None
        self._chunks: list[str] = []
        self.header_text = ""
        self._in_header = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script, self._chunks = dict(attrs), []
        if tag == "header":
            self._in_header += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script, "".join(self._chunks)))
            self._script = None
        if tag == "header":
            self._in_header -= 1

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._chunks.append(data)
        elif self._in_header:
            self.header_text += data

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    @property
    def data(self) -> dict[str, Any]:
        blobs = [body for attrs, body in self.scripts if attrs.get("type") == "application/json"]
        assert len(blobs) == 1
        return json.loads(blobs[0])


def read_report(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def rows_as_dicts(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]


def assert_self_contained(text: str, page: Page, report: Path) -> None:
    """No network resource, only the two expected scripts, a CSP that allows exactly the report's own."""
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "data", "poster"):
            value = attrs.get(name) or ""
            assert not re.match(r"^\s*(https?:|//|ftp:)", value, re.I), (tag, name, value)
    assert page.find("link") == [] and page.find("iframe") == [] and page.find("img") == []
    assert "http://" not in text and "https://" not in text
    assert len(page.scripts) == 2
    (blob_attrs, _), (code_attrs, code) = page.scripts
    assert blob_attrs == {"type": "application/json", "id": "report-data"} and code_attrs == {}
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"] or ""
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp
    assert "innerHTML" not in code and "insertAdjacentHTML" not in code and "document.write" not in code
    assert 'loading = "lazy"' in code
    ids = {attrs.get("id") for _, attrs in page.tags}
    assert {"summary", "toolbar", "search", "errors-only", "page-size", "count", "rows"} <= ids
    assert len(page.find("button")) == 4  # prev/next above and below the rows
    data = page.data
    for path, url in data["urls"].items():
        if url is not None:
            assert not url.startswith(("/", "file:")), url
            assert (report.parent / unquote(url)).resolve() == Path(
                path if os.path.isabs(path) else REPO / path
            ).resolve()


# -- caches ----------------------------------------------------------------------------------------
class ScriptedServing(FakeVLMServing):
    """The fake VLM; the first answer of its first call is ``first_answer``."""

    def __init__(self, first_answer: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_answer = first_answer

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        completions = super()._chat_batch(conversations, sampling)
        if len(self.calls) == 1 and completions and completions[0].text:
            completions[0] = Completion(text=self.first_answer, prompt_tokens=3, completion_tokens=3)
        return completions


def region_pipeline_class():
    ImageRegionCaptionPipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline
    return ImageRegionCaptionPipeline


@pytest.fixture
def demo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The region-caption pipeline script on its shipped demo data (relative image paths), fake VLM."""
    monkeypatch.chdir(REPO)
    lines = DEMO_TABLE.read_text().splitlines()
    lines.insert(1, '{"image": broken json')
    lines.append(json.dumps({"image": "./data/image_region_caption/no_such_image.jpg", "bbox": [[1, 1, 5, 5]]}))
    table = tmp_path / "demo.jsonl"
    table.write_text("\n".join(lines) + "\n")
    # the demo's relative paths are relative to the working folder (REPO), as in the seed
    cache = tmp_path / "cache"
    pipeline = region_pipeline_class()(
        ScriptedServing(f"A house. {EVIL}"),
        first_entry_file=str(table),
        cache_path=str(cache),
        output_image_with_bbox_path=None,
    )
    pipeline.run()
    return cache


def run_imgdiff_demo(cache: Path, blip: Path, clip: Path) -> Path:
    """The Img-Diff pipeline script on its shipped demo pairs: fake VLM, tiny BLIP/CLIP scorers.

    The first region caption carries a script; the caption-similarity window (max 0.99) drops every
    box whose two captions are identical (all but that one), so the output has kept and dropped boxes.
    """
    import torch  # noqa: F401 - declared test dependencies: imported, never skipped
    import transformers  # noqa: F401

    ImgDiffPipeline = load_pipeline_script("imgdiff_pipeline").ImgDiffPipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the demo table's image paths are relative to the working folder, as in the seed
        pipeline = ImgDiffPipeline(
            ScriptedServing(f"a red car {EVIL}"),
            cache_path=str(cache),
            blip_model=str(blip),
            similarity_model=str(clip),
            itm_min_score=0.0,
            similarity_min_score=-1.0,
            similarity_max_score=0.99,
            keep_difference_images=True,
            device="cpu",
        )
        try:
            pipeline.run()
        finally:
            pipeline.cleanup()
    return cache


@pytest.fixture(scope="module")
def imgdiff_demo_cache(tmp_path_factory: pytest.TempPathFactory, tiny_blip_dir: Path, tiny_clip_dir: Path) -> Path:
    return run_imgdiff_demo(tmp_path_factory.mktemp("imgdiff_demo") / "cache", tiny_blip_dir, tiny_clip_dir)


def imgdiff_cache(tmp_path: Path, n_rows: int = 4) -> Path:
    """An Img-Diff-shaped run: image pairs, kept boxes with captions and scores, a manifest and a summary."""
    folder = tmp_path / "pairs"
    folder.mkdir(parents=True)
    rows = []
    for index in range(n_rows):
        before, boxes = scene_with_boxes((320, 240), 3, seed=200 + index)
        after = before.copy()
        kept = []
        for x, y, w, h in boxes[: 1 + index % 2]:
            ImageDraw.Draw(after).ellipse([x, y, x + w, y + h], fill=(10, 10, 10))
            kept.append([x, y, x + w, y + h])
        before.save(folder / f"p{index} a.png")  # a space: links must be URL-encoded
        after.save(folder / f"p{index} b.png")
        n = len(kept)
        rows.append(
            {
                "id": index,
                "image_path1": str(folder / f"p{index} a.png"),
                "image_path2": str(folder / f"p{index} b.png"),
                "bboxes": kept,
                "region_caption1": [f"object {k} in image 1" for k in range(n)],
                "region_caption2": [f"object {k} in image 2" for k in range(n)],
                "bbox_difference_captions": [EVIL if index == 0 else f"difference {index}.{k}" for k in range(n)],
                "clip_scores": [0.25 + k / 10 for k in range(n)],
                "text_similarity": [0.5] * n,
                "diff_kind": ["replaced"] * n,
                "pair_similarity": 0.9,
                "error": "ServingError: timed out" if index == n_rows - 1 else None,
            }
        )
    cache = tmp_path / "imgdiff"
    step = write_jsonl(cache / "imgdiff_step2.jsonl", rows)
    summary = {
        "rows_in": n_rows + 1,
        "rows_out": n_rows,
        "rows_rejected": 1,
        "rows_with_error": 1,
        "row_errors": {"ServingError": 1},
        "output_path": str(step),
        "steps": [{"step": 1, "operator": "DifferenceAreaGenerator", "rows_in": n_rows + 1, "rows_out": n_rows}],
        "servings": [
            {"backend": "vllm", "model": "Qwen/<b>Qwen2.5-VL", "sampling": {"temperature": 0.2, "top_p": 0.8}}
        ],
        "smoke_test_model": True,
    }
    (cache / "imgdiff_summary.json").write_text(json.dumps(summary))
    return cache


# -- region captions -------------------------------------------------------------------------------
def test_region_caption_demo_report_structure(demo_cache: Path) -> None:
    report = write_report(demo_cache)
    assert report == demo_cache / "report.html"
    text, page = read_report(report)
    assert_self_contained(text, page, report)
    data = page.data
    assert data["config"]["kind"] == "region_caption"
    assert data["config"]["roles"]["image"] == "image_with_bbox" and data["config"]["roles"]["answer"] == "answer"
    assert data["config"]["pageSize"] == 50
    rows = rows_as_dicts(data)
    assert len(rows) == data["total"] == 5
    # every drawn image is linked relatively and exists; the missing source image is known to be missing
    drawn = [r["image_with_bbox"] for r in rows if r["image_with_bbox"]]
    assert len(drawn) == 4 and all(data["urls"][p] for p in drawn)
    assert data["urls"]["./data/image_region_caption/street.jpg"].endswith("data/image_region_caption/street.jpg")
    assert data["urls"]["./data/image_region_caption/no_such_image.jpg"] is None
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["error"].startswith("ImageNotFoundError")
    # the header: counts, model, backend, sampling, steps, operator parameters, rejected line
    header = " ".join(page.header_text.split())
    assert "6 rows in" in header and "5 rows out" in header and "1 rejected" in header and "1 with error" in header
    assert "ImageNotFoundError ×1" in header
    assert "fake-vlm" in header and "temperature=0.7, top_p=0.9, max_tokens=512" in header
    assert "ImageBboxGenerator" in header and "PromptedVQAGenerator" in header
    assert '"max_boxes": 10' in header and "MalformedJSONLine" in header
    assert "region captions" in header and "region_caption · step 3" in header


def test_text_from_the_data_is_escaped(demo_cache: Path) -> None:
    report = write_report(demo_cache)
    text, page = read_report(report)
    assert "<script>window.__pwned" not in text and "<img src=x" not in text and "<!--" not in text
    assert text.count("</script>") == 2
    answers = [r["answer"] for r in rows_as_dicts(page.data)]
    assert f"A house. {EVIL}" in answers  # shown verbatim once decoded, never as markup


def test_header_values_are_escaped_and_smoke_test_flagged(tmp_path: Path) -> None:
    report = write_report(imgdiff_cache(tmp_path))
    text, page = read_report(report)
    assert "Qwen/&lt;b&gt;Qwen2.5-VL" in text and "<b>Qwen2.5" not in text
    assert "smoke-test model" in page.header_text
    assert "temperature=0.2, top_p=0.8" in page.header_text


def test_steps_limit_and_prefix(demo_cache: Path) -> None:
    html_text, target = build_report_html(demo_cache, step=1, limit=2)
    page = Page(html_text)
    assert target == demo_cache / "report.html"
    data = page.data
    assert len(data["rows"]) == 2 and data["total"] == 5
    assert "prompt" in data["columns"] and "answer" not in data["columns"]
    assert "Showing the first 2 of 5 rows" in page.header_text
    assert "step 1 (ImageBboxGenerator)" in page.header_text
    with pytest.raises(ReportError, match=r"Step 7 .*steps available: 1, 2"):
        write_report(demo_cache, step=7)
    with pytest.raises(ReportError, match="prefix 'nope'"):
        write_report(demo_cache, prefix="nope")
    # a second, newer run in the same folder is the default; --prefix picks the other one
    write_jsonl(demo_cache / "other_step1.jsonl", [{"text": "hello"}])
    (demo_cache / "other_summary.json").write_text(json.dumps({"rows_in": 1, "rows_out": 1}))
    assert Page(build_report_html(demo_cache)[0]).data["rows"] == [["hello"]]
    assert len(Page(build_report_html(demo_cache, prefix="region_caption")[0]).data["rows"]) == 5
    # a step file can be given directly, and --out may be a folder
    out = write_report(demo_cache / "region_caption_step2.jsonl", out=demo_cache.parent)
    assert out == demo_cache.parent / "report.html" and len(read_report(out)[1].data["rows"]) == 5


def test_missing_cache_and_empty_folder_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="No such cache folder"):
        write_report(tmp_path / "nothing")
    with pytest.raises(ReportError, match="No step files"):
        write_report(tmp_path)


# -- Img-Diff --------------------------------------------------------------------------------------
def test_imgdiff_report_structure(tmp_path: Path) -> None:
    cache = imgdiff_cache(tmp_path)
    report = write_report(cache, out=tmp_path / "reports" / "imgdiff.html")
    text, page = read_report(report)
    assert_self_contained(text, page, report)
    config = page.data["config"]
    assert config["kind"] == "imgdiff"
    assert config["roles"] == {
        "image1": "image_path1",
        "image2": "image_path2",
        "boxes": "bboxes",
        "caption1": "region_caption1",
        "caption2": "region_caption2",
        "diff": "bbox_difference_captions",
    }
    # per-box columns are found from the data: numbers become scores, the rest is shown generically
    assert set(config["perBoxColumns"]) == {
        "region_caption1",
        "region_caption2",
        "bbox_difference_captions",
        "clip_scores",
        "text_similarity",
        "diff_kind",
    }
    assert config["scoreColumns"] == ["clip_scores", "text_similarity"]
    urls = page.data["urls"]
    assert len(urls) == 8 and all(u.startswith("../pairs/p") and "%20" in u for u in urls.values())
    header = " ".join(page.header_text.split())
    assert "Img-Diff" in header and "5 rows in" in header and "1 rejected" in header and "ServingError ×1" in header
    assert "<script>window.__pwned" not in text


@pytest.mark.slow
def test_imgdiff_demo_report_structure(imgdiff_demo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    report = write_report(imgdiff_demo_cache)
    text, page = read_report(report)
    assert_self_contained(text, page, report)
    data = page.data
    config = data["config"]
    assert config["kind"] == "imgdiff" and config["roles"]["decisions"] == "bbox_decisions"
    assert config["boxFormat"] == "cxcywh" and config["boxNormalized"] is False
    assert "difference_images" in config["perBoxColumns"] and "bbox_decisions" not in config["perBoxColumns"]
    rows = rows_as_dicts(data)
    assert [r["id"] for r in rows] == ["street", "park", "kitchen", "shapes"]
    for row in rows:
        for key in ("image_path1", "image_path2"):
            assert data["urls"][row[key]], row[key]
    decisions = [d for r in rows for d in r["bbox_decisions"]]
    kept = [d for d in decisions if d["kept"]]
    assert len(kept) == 1 and kept[0]["region_caption1"] == f"a red car {EVIL}"
    assert {d["dropped_at"] for d in decisions if not d["kept"]} == {"caption_similarity"}
    assert data["urls"][kept[0]["difference_image"]]  # the kept red-box panel is linked
    header = " ".join(page.header_text.split())
    assert "Img-Diff" in header and "4 rows in" in header and "fake-vlm" in header
    for operator in ("ImgDiffRegionCaptioner", "ImgDiffImageTextMatchingFilter", "ImgDiffDifferenceCaptioner"):
        assert operator in header
    assert "<script>window.__pwned" not in text


def test_layout_detection_handles_single_boxes_and_unknown_tables() -> None:
    columns = ["image_path1", "image_path2", "bboxes", "bbox_difference_captions", "score"]
    rows = [["a.jpg", "b.jpg", [1, 2, 30, 40], "one box", [0.5]]]
    config = detect_layout(columns, rows)
    assert config["kind"] == "imgdiff" and config["scoreColumns"] == ["score"]
    generic = detect_layout(["photo", "text", "n"], [["x/y.png", "hi", 3], [None, "yo", 4]])
    assert generic["kind"] == "generic" and generic["imageColumns"] == ["photo"]
    fmt = detect_layout(columns, rows, [{"config": {"bbox_format": "xywh"}}])
    assert fmt["boxFormat"] == "xywh"


# -- other table types and sizes -------------------------------------------------------------------
def test_parquet_steps_with_numpy_values_and_nan(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    paths = [json.loads(line)["image"] for line in table.read_text().splitlines()]
    frame = pd.DataFrame(
        {
            "image": paths,
            "image_with_bbox": paths,
            "bbox": [[[1, 2, 3, 4]], [[5, 6, 7, 8]]],
            "answer": ["ok", float("nan")],
            "score": [np.float32(0.5), np.nan],
            "error": [None, "ServingError: x"],
        }
    )
    frame.to_parquet(tmp_path / "run_step2.parquet")
    data = Page(build_report_html(tmp_path)[0]).data
    rows = rows_as_dicts(data)
    assert rows[0]["bbox"] == [[1, 2, 3, 4]] and rows[1]["answer"] is None and rows[1]["score"] is None
    assert rows[0]["score"] == 0.5 and data["config"]["kind"] == "region_caption"


def test_cli_report_shows_hugging_face_image_structs_bytes_and_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.support.user_inputs import image_bytes, write_hf_image_shard

    table = write_region_caption_table(tmp_path / "imgs", n_rows=2)
    paths = [json.loads(line)["image"] for line in table.read_text().splitlines()]
    photo = scene_with_boxes((120, 90), 2, seed=7)[0]
    write_hf_image_shard(
        tmp_path / "cache" / "run_step1.parquet",
        {
            "image": [{"bytes": image_bytes(photo), "path": "p.jpg"}, {"bytes": None, "path": paths[1]}],
            "answer": ["a", "b"],
        },
        ["image"],
    )
    write_jsonl(tmp_path / "cache" / "run_step2.jsonl", [{"image": paths, "answer": "c"}, {"image": [], "answer": "d"}])
    for step in ("1", "2"):  # was: TypeError unhashable type: 'dict'
        assert main(["report", str(tmp_path / "cache"), "--step", step, "--out", str(tmp_path / f"{step}.html")]) == 0
    rows = rows_as_dicts(read_report(tmp_path / "1.html")[1].data)
    (thumb,) = (tmp_path / "cache" / "report_thumbs").glob("*.jpg")
    assert rows[0]["image"] == str(thumb) and max(Image.open(thumb).size) <= 320
    assert rows[1]["image"] == paths[1]  # a path-only struct shows its path
    data = read_report(tmp_path / "2.html")[1].data
    assert "image" in data["config"]["imageListColumns"] and all(data["urls"][p] for p in paths)
    capsys.readouterr()


def test_ten_thousand_rows_are_written_quickly_and_paged(tmp_path: Path) -> None:
    table = write_region_caption_table(tmp_path / "imgs", n_rows=10)
    paths = [json.loads(line)["image"] for line in table.read_text().splitlines()]
    rows = [
        {
            "image_with_bbox": paths[i % 10],
            "bbox": [[1, 2, 3, 4]] * 3,
            "prompt": "Describe the content of each marked region.",
            "answer": f"answer {i} " + "words " * 20,
            "error": None,
        }
        for i in range(10_000)
    ]
    write_jsonl(tmp_path / "cache" / "rc_step2.jsonl", rows)
    started = time.perf_counter()
    report = write_report(tmp_path / "cache")
    seconds = time.perf_counter() - started
    assert seconds < 15, seconds
    assert report.stat().st_size < 8e6
    page = Page(report.read_text())
    assert len(page.data["rows"]) == 10_000 and page.data["config"]["pageSize"] == 50
    assert len(page.data["urls"]) == 10


# -- CLI and the end-of-run hook -------------------------------------------------------------------
def test_cli_report(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(demo_cache), "--out", str(out), "--step", "2", "--limit", "3"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert len(read_report(out)[1].data["rows"]) == 3
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "No such cache folder" in capsys.readouterr().err


def test_report_after_run_prints_the_path_and_never_raises(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(str(DEMO_TABLE), cache_path=str(demo_cache), file_name_prefix="region_caption")
    assert report_after_run(storage) == demo_cache / "report.html"
    assert f"report: {demo_cache / 'report.html'}" in capsys.readouterr().out
    broken = FileStorage(str(DEMO_TABLE), cache_path=str(tmp_path / "empty"), file_name_prefix="x")
    assert report_after_run(broken) is None
    assert "report: not written" in capsys.readouterr().out
    monkeypatch.setenv("DATAFLOW_MM_NO_REPORT", "1")
    assert report_after_run(storage) is None and capsys.readouterr().out == ""
    assert report_after_run(None) is None
