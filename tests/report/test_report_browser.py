"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol.

No browser-automation package and no browser download: Debian's ``chromium`` is started with
``--remote-debugging-pipe`` and spoken to with JSON messages over two pipes (fd 3 commands,
fd 4 replies, NUL-terminated), standard library only. ``scripts/setup_browser.sh`` installs
Chromium when it is missing; the tests skip, saying why, only when that is impossible.

Set ``DATAFLOW_MM_REPORT_SCREENSHOTS=/some/folder`` to keep the screenshots for a look.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from dataflow_mm.pipeline.templates import load_pipeline_script
from dataflow_mm.report import write_report
from dataflow_mm.serving.base import Completion
from tests.support.fake_serving import FakeVLMServing
from tests.support.sample_data import scene_with_boxes, write_jsonl, write_region_caption_table

fcntl = pytest.importorskip("fcntl", reason="the DevTools pipe needs POSIX file descriptors")

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "setup_browser.sh"
BASH = shutil.which("bash") or "/bin/bash"  # (dash cannot redirect file descriptors above 9)
INJECTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,900",
]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("DATAFLOW_MM_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None and SETUP_SCRIPT.is_file():
        proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=900)
        binary = find_chromium()
        if binary is None:
            reason = (proc.stdout + proc.stderr).strip().splitlines()
            pytest.skip(f"headless Chromium is not available: {reason[-1] if reason else 'setup_browser.sh failed'}")
    if binary is None:
        pytest.skip("headless Chromium is not available and scripts/setup_browser.sh is missing")
    return binary


class DevTools:
    """A headless Chromium and its DevTools protocol over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        cmd_read, cmd_write = os.pipe()  # we write commands, Chromium reads them on fd 3
        res_read, res_write = os.pipe()  # Chromium writes replies and events on fd 4
        # move Chromium's ends above 10 so the shell's `3<&N 4>&M` can never clobber them
        child_in = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(res_write, fcntl.F_DUPFD, 10)
        os.close(cmd_read)
        os.close(res_write)
        args = [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [BASH, "-c", f'exec "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-', "chromium", *args],
            pass_fds=(child_in, child_out),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        os.close(child_in)
        os.close(child_out)
        self._out = cmd_write
        self._in = res_read
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.session = ""

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._in, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._cond.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        session = self.session if session is None else session
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next_id not in self._replies:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited with code {self.proc.returncode} during {method}")
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no reply to {method} in {timeout} s")
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event.get("method") == method:
                        return event
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no {method} event in {timeout} s")

    def open_page(self, width: int = 1280, height: int = 900) -> None:
        targets = self.send("Target.getTargets", session="")["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        target_id = page["targetId"] if page else self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def navigate(self, url: str, timeout: float = 60) -> None:
        mark = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", timeout=timeout, after=mark)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"page never satisfied: {expression}")

    def type_text(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        keep = os.environ.get("DATAFLOW_MM_REPORT_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(keep) / path.name)
        return path

    def page_problems(self) -> list[str]:
        """Uncaught exceptions and console errors (a CSP violation shows up here)."""
        problems = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                problems.append(json.dumps(event["params"]["exceptionDetails"])[:500])
            elif event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
                problems.append(event["params"]["entry"].get("text", "")[:500])
        return problems

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", session="", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()


@pytest.fixture
def browser(chromium_binary: str, tmp_path: Path):
    tools = DevTools(chromium_binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        tools.open_page()
        yield tools
    finally:
        tools.close()


WAIT_IMAGES = """(async () => {
  const imgs = [...document.querySelectorAll('#rows img')];
  for (const img of imgs) {
    img.scrollIntoView();
    if (!img.complete) await new Promise((done) => {
      img.addEventListener('load', done, {once: true});
      img.addEventListener('error', done, {once: true});
      setTimeout(done, 10000);
    });
  }
  window.scrollTo(0, 0);
  return imgs.map((img) => ({src: img.getAttribute('src'), width: img.naturalWidth, loaded: img.complete}));
})()"""

CARDS = "[...document.querySelectorAll('#rows .row-card')].map((c) => Number(c.dataset.row))"


def search(browser: DevTools, text: str) -> list[int]:
    browser.evaluate("(() => { const s = document.getElementById('search'); s.value = ''; })()")
    browser.type_text("#search", text)
    # the search box filters 120 ms after the last keystroke; the page then records what it shows
    browser.wait_for(f"window.__reportState.query === {json.dumps(text)}")
    return browser.evaluate(CARDS)


def clear_search(browser: DevTools) -> list[int]:
    browser.evaluate(
        "(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); })()"
    )
    browser.wait_for("window.__reportState.query === ''")
    return browser.evaluate(CARDS)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with Image.open(path) as image:
        assert image.size[0] >= 800
        colors = image.convert("RGB").resize((64, 64)).getcolors(64 * 64)
        assert colors is None or len(colors) > 8, "the screenshot is blank"


# -- caches to look at ---------------------------------------------------------------------------
class InjectingServing(FakeVLMServing):
    """The fake VLM, whose first answer carries a script and an onerror handler."""

    def _chat_batch(self, conversations, sampling):  # type: ignore[no-untyped-def]
        completions = super()._chat_batch(conversations, sampling)
        if len(self.calls) == 1 and completions and completions[0].text:
            completions[0] = Completion(text=f"A red square. {INJECTED}", prompt_tokens=5, completion_tokens=5)
        return completions


def region_caption_cache(tmp_path: Path) -> Path:
    """The real region-caption pipeline script's output (fake VLM), with a missing image and a script."""
    ImageRegionCaptionPipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline
    table = write_region_caption_table(tmp_path / "images", n_rows=5, without_boxes=1)
    lines = table.read_text().splitlines()
    lines.append(json.dumps({"id": 5, "image": str(tmp_path / "images" / "missing.jpg")}))
    table.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    pipeline = ImageRegionCaptionPipeline(
        InjectingServing(), first_entry_file=str(table), cache_path=str(cache), output_image_with_bbox_path=None
    )
    pipeline.run()
    return cache


def imgdiff_demo_cache(cache: Path, blip: Path, clip: Path) -> Path:
    """The Img-Diff pipeline script on its demo pairs (fake VLM, tiny BLIP/CLIP): only the box whose
    captions differ (the injected one) survives the similarity window, the others are dropped."""
    import torch  # noqa: F401 - declared test dependencies: imported, never skipped
    import transformers  # noqa: F401

    ImgDiffPipeline = load_pipeline_script("imgdiff_pipeline").ImgDiffPipeline
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        pipeline = ImgDiffPipeline(
            InjectingServing(),
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


def imgdiff_cache(tmp_path: Path, n_rows: int = 4) -> Path:
    """An Img-Diff-shaped step file: image pairs with one changed object, kept boxes, captions, scores."""
    folder = tmp_path / "pairs"
    folder.mkdir(parents=True)
    rows = []
    for index in range(n_rows):
        before, boxes = scene_with_boxes((320, 240), 2, seed=100 + index)
        after = before.copy()
        x, y, w, h = boxes[0]
        ImageDraw.Draw(after).ellipse([x, y, x + w, y + h], fill=(20, 20, 20))
        path1, path2 = folder / f"pair{index}_a.png", folder / f"pair{index}_b.png"
        before.save(path1)
        after.save(path2)
        kept = [[x, y, x + w, y + h]] if index != 2 else []
        rows.append(
            {
                "id": f"pair-{index}",
                "image_path1": str(path1),
                "image_path2": str(path2),
                "bboxes": kept,
                "region_caption1": ["a red rectangle" if index else f"a red rectangle {INJECTED}"][: len(kept)],
                "region_caption2": ["a black circle"][: len(kept)],
                "bbox_difference_captions": [f"In image 2 the rectangle #{index} became a black circle."][: len(kept)],
                "clip_similarity": [0.213 + index / 100][: len(kept)],
                "caption_similarity": [0.41][: len(kept)],
                "error": "ServingError: the model timed out" if index == 3 else None,
            }
        )
    cache = tmp_path / "imgdiff_cache"
    write_jsonl(cache / "imgdiff_step3.jsonl", rows)
    return cache


# -- the tests -------------------------------------------------------------------------------------
def test_region_caption_report_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    report = write_report(region_caption_cache(tmp_path))
    browser.navigate(report.as_uri())
    ready = browser.wait_for("window.__reportReady")
    assert ready["rows"] == 6

    images = browser.evaluate(WAIT_IMAGES)
    assert len(images) == 5, images  # one per row with a drawn image; the missing one has a placeholder
    assert all(img["width"] > 0 for img in images), images
    missing = browser.evaluate("[...document.querySelectorAll('.fig.broken')].map((f) => f.textContent)")
    assert len(missing) == 1 and "missing.jpg" in missing[0]
    errors = browser.evaluate("[...document.querySelectorAll('.row-card.has-error .error')].map((e) => e.textContent)")
    assert len(errors) == 1 and "ImageNotFoundError" in errors[0]
    header = browser.evaluate("document.getElementById('summary').textContent")
    assert "fake-vlm" in header and "rows in" in header and "temperature=0.7" in header
    assert_png(browser.screenshot(tmp_path / "region_caption_report.png"))

    assert browser.evaluate("window.__pwned") is None, "an injected script ran"
    shown = browser.evaluate("[...document.querySelectorAll('.answer')].map((a) => a.textContent)")
    assert any(INJECTED in text for text in shown), "the injected caption is not shown as text"
    assert browser.evaluate("document.querySelectorAll('#rows script, img[src=\"x\"]').length") == 0

    assert search(browser, "red square") == [0]
    assert search(browser, "ImageNotFoundError") == [5]
    assert search(browser, "no-such-text-anywhere") == []
    assert browser.evaluate("document.querySelector('#rows .empty').textContent") == "No rows match."
    assert clear_search(browser) == list(range(6))
    assert browser.evaluate("window.__pwned") is None
    assert browser.page_problems() == []


def test_imgdiff_report_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    report = write_report(imgdiff_cache(tmp_path), out=tmp_path / "out" / "imgdiff.html")
    browser.navigate(report.as_uri())
    browser.wait_for("window.__reportReady")
    images = browser.evaluate(WAIT_IMAGES)
    assert len(images) == 8 and all(img["width"] > 0 for img in images), images
    assert all(img["src"].startswith("../") for img in images)
    # one red box over each image of each kept box, inside its image, at the drawn rectangle
    boxes = browser.evaluate(
        """[...document.querySelectorAll('.bx.red')].map((b) => {
          const f = b.parentElement.querySelector('img').getBoundingClientRect(), r = b.getBoundingClientRect();
          return {l: (r.left - f.left) / f.width, t: (r.top - f.top) / f.height,
                  w: r.width / f.width, h: r.height / f.height, row: b.closest('.row-card').dataset.row};
        })"""
    )
    assert len(boxes) == 6, boxes  # rows 0, 1, 3 keep one box each, shown on both images
    _, first = scene_with_boxes((320, 240), 2, seed=100)
    x, y, w, h = first[0]
    assert abs(boxes[0]["l"] - x / 320) < 0.02 and abs(boxes[0]["t"] - y / 240) < 0.02
    assert abs(boxes[0]["w"] - w / 320) < 0.03 and abs(boxes[0]["h"] - h / 240) < 0.03
    diff = browser.evaluate("document.querySelector('.diff-caption').textContent")
    assert diff == "In image 2 the rectangle #0 became a black circle."
    scores = browser.evaluate(
        "[...document.querySelectorAll('.row-card .score')].slice(0, 2).map((s) => s.textContent)"
    )
    assert scores == ["clip_similarity 0.213", "caption_similarity 0.41"]
    assert browser.evaluate("document.querySelectorAll('.row-card')[2].textContent").count("no kept boxes") == 1
    assert browser.evaluate("window.__pwned") is None
    assert browser.screenshot(tmp_path / "imgdiff_report.png")
    assert_png(tmp_path / "imgdiff_report.png")
    assert search(browser, "rectangle #1") == [1]
    assert search(browser, "timed out") == [3]
    assert browser.page_problems() == []


@pytest.mark.slow
def test_imgdiff_pipeline_demo_report_in_chromium(
    browser: DevTools, tmp_path: Path, tiny_blip_dir: Path, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = imgdiff_demo_cache(tmp_path / "cache", tiny_blip_dir, tiny_clip_dir)
    monkeypatch.chdir(REPO)
    report = write_report(cache)
    rows = [json.loads(line) for line in (cache / "imgdiff_step5.jsonl").read_text().splitlines()]
    kept = [(r, d) for r in rows for d in r["bbox_decisions"] if d["kept"]]
    assert len(kept) == 1
    browser.navigate(report.as_uri())
    browser.wait_for("window.__reportReady")
    images = browser.evaluate(WAIT_IMAGES)
    assert len(images) == 2 * len(rows) + 1, images  # every pair, plus the kept box's difference panel
    assert all(img["width"] > 0 for img in images), images
    # the red box sits where the pipeline put it: bbox_xyxy in image 1's pixels, on both images
    row, decision = kept[0]
    with Image.open(REPO / row["image_path1"]) as first:
        width, height = first.size
    x0, y0, x1, y1 = decision["bbox_xyxy"]
    boxes = browser.evaluate(
        """[...document.querySelectorAll('.bx.red')].map((b) => {
          const f = b.parentElement.querySelector('img').getBoundingClientRect(), r = b.getBoundingClientRect();
          return [(r.left - f.left) / f.width, (r.top - f.top) / f.height, r.right / f.width - f.left / f.width,
                  (r.bottom - f.top) / f.height];
        })"""
    )
    assert len(boxes) == 2
    for box in boxes:
        for got, want in zip(box, [x0 / width, y0 / height, x1 / width, y1 / height], strict=True):
            assert abs(got - want) < 0.02, (box, decision["bbox_xyxy"])
    dropped = browser.evaluate("[...document.querySelectorAll('.dropped summary')].map((s) => s.textContent)")
    assert len(dropped) == len(rows) and all(t.startswith("dropped candidate boxes") for t in dropped)
    no_boxes = browser.evaluate(
        "[...document.querySelectorAll('.row-card')].filter((c) => c.textContent.includes('no kept boxes')).length"
    )
    assert no_boxes == len(rows) - 1
    captions = browser.evaluate("[...document.querySelectorAll('.caption')].map((c) => c.textContent)")
    assert any(INJECTED in c for c in captions)
    assert browser.evaluate("window.__pwned") is None
    assert_png(browser.screenshot(tmp_path / "imgdiff_pipeline_report.png"))
    assert search(browser, "kitchen") == [rows.index(next(r for r in rows if r["id"] == "kitchen"))]
    assert browser.page_problems() == []


def test_ten_thousand_rows_open_fast_and_page(browser: DevTools, tmp_path: Path) -> None:
    images = write_region_caption_table(tmp_path / "images", n_rows=20)
    paths = [json.loads(line)["image"] for line in images.read_text().splitlines()]
    rows = [
        {
            "id": index,
            "image": paths[index % 20],
            "image_with_bbox": paths[index % 20],
            "bbox": [[10, 10, 50, 40], [100, 80, 60, 60]],
            "normalized_bbox": [[0.03, 0.04, 0.19, 0.21], [0.31, 0.33, 0.5, 0.58]] + [[0.0] * 4] * 8,
            "prompt": "Describe the content of each marked region in the image. There are 2 regions.",
            "answer": f"<region1>: a coloured box number {index}. <region2>: another box, row marker r{index:05d}x.",
            "error": None,
        }
        for index in range(10_000)
    ]
    write_jsonl(tmp_path / "big" / "rc_step2.jsonl", rows)
    started = time.perf_counter()
    report = write_report(tmp_path / "big")
    write_seconds = time.perf_counter() - started

    browser.navigate(report.as_uri())
    ready = browser.wait_for("window.__reportReady")
    print(
        f"10k rows: report written in {write_seconds:.2f} s, {report.stat().st_size / 1e6:.1f} MB, "
        f"first page ready {ready['ms']:.0f} ms after navigation start"
    )
    assert ready["rows"] == 10_000
    assert ready["ms"] < 5000
    assert browser.evaluate(CARDS) == list(range(50))
    browser.evaluate("document.querySelector('button.next').click()")
    assert browser.evaluate(CARDS) == list(range(50, 100))
    assert "page 2 of 200" in browser.evaluate("document.querySelector('.page-info').textContent")
    started = time.perf_counter()
    assert search(browser, "r09999x") == [9999]
    assert time.perf_counter() - started < 3
    assert search(browser, "coloured R0012") == list(range(120, 130))
    assert len(clear_search(browser)) == 50
    assert_png(browser.screenshot(tmp_path / "ten_thousand_rows.png"))
    assert browser.page_problems() == []
