"""Every form an image cell takes resolves to one local file: paths, lists of paths, Hugging Face
``{bytes, path}`` structs, raw bytes and http(s) URLs (a local server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataflow_mm.common.errors import ImageDownloadError, MissingFieldError
from dataflow_mm.imaging.loading import load_image
from dataflow_mm.storage.downloads import download_image
from dataflow_mm.storage.formats import read_table
from dataflow_mm.storage.media import externalize_media, image_count, resolve_media_path
from dataflow_mm.storage.table_writer import write_table
from tests.support.user_inputs import image_bytes, image_http_server

RED = image_bytes(Image.new("RGB", (40, 30), (200, 20, 20)))
BLUE = image_bytes(Image.new("RGB", (40, 30), (20, 20, 200)), "PNG")


def test_structs_bytes_and_lists_resolve_to_content_addressed_files(tmp_path: Path) -> None:
    cache = tmp_path / "media"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(RED)
    from_struct = resolve_media_path({"bytes": RED, "path": "cam/0001.jpg"}, cache_dir=cache)
    from_bytes = resolve_media_path(BLUE, cache_dir=cache)
    assert from_struct.parent == cache and from_struct.name.startswith("0001_") and from_struct.suffix == ".jpg"
    assert from_bytes.suffix == ".png" and load_image(from_bytes).size == (40, 30)
    assert resolve_media_path({"bytes": RED, "path": None}, cache_dir=cache) == from_struct.with_name(
        from_struct.name.replace("0001", "image")
    )  # the name follows the bytes, not the row
    assert resolve_media_path({"bytes": None, "path": "photo.jpg"}, tmp_path, cache) == photo  # path-only struct
    assert resolve_media_path(["photo.jpg", "other.jpg"], tmp_path) == photo  # a list: its first image
    assert resolve_media_path(np.array([str(photo)], dtype=object)) == photo  # a list read from Parquet
    assert [image_count(v) for v in (["a", "b"], "a", None, [], {"bytes": RED})] == [2, 1, 0, 0, 1]
    for bad, message in [([], "empty list"), ({"bytes": None, "path": None}, "neither"), ({"x": 1}, "dict with keys")]:
        with pytest.raises(MissingFieldError, match=message):
            resolve_media_path(bad, cache_dir=cache)


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "csv", "parquet"])
def test_step_files_keep_references_not_bytes_in_every_format(tmp_path: Path, cache_type: str) -> None:
    frame = pd.DataFrame(
        {
            "image": [{"bytes": RED, "path": "a.jpg"}, {"bytes": None, "path": "b.jpg"}],
            "raw": [BLUE, BLUE],
            "n": [1, 2],
        },
        dtype=object,
    )
    out = externalize_media(frame, tmp_path / "media")
    assert out["image"][0]["bytes"] is None and Path(out["image"][0]["path"]).read_bytes() == RED
    assert out["image"][1] == {"bytes": None, "path": "b.jpg"}  # path-only structs stay as they are
    assert Path(out["raw"][0]).read_bytes() == BLUE and out["raw"][0] == out["raw"][1]
    target = write_table(out, tmp_path / f"step.{cache_type}", cache_type)
    back = read_table(target).frame
    assert [cell["path"] for cell in back["image"]] == [out["image"][0]["path"], "b.jpg"]
    assert [cell["bytes"] for cell in back["image"]] == [None, None] and list(back["raw"]) == list(out["raw"])
    assert RED not in target.read_bytes() and BLUE not in target.read_bytes()  # references, not images
    plain = frame[["n"]]
    assert externalize_media(plain, tmp_path / "media") is plain  # nothing to store: no copy


def test_urls_download_once_and_failures_are_row_errors(tmp_path: Path) -> None:
    cache = tmp_path / "media"
    with image_http_server({"/cat.jpg": RED}, oversize_bytes=5000) as (base, hits):
        first = resolve_media_path(f"{base}/cat.jpg", cache_dir=cache)
        again = resolve_media_path(f"{base}/cat.jpg", cache_dir=cache)
        assert first == again and first.read_bytes() == RED and first.name.startswith("cat_")
        assert hits["/cat.jpg"] == 1  # cached content-addressed under the media folder
        with pytest.raises(ImageDownloadError, match="HTTP 404"):
            resolve_media_path(f"{base}/missing.jpg", cache_dir=cache)
        assert hits["/missing.jpg"] == 1  # a 4xx is final, as in the API backend
        with pytest.raises(ImageDownloadError, match="above the cap of 4096"):
            download_image(f"{base}/oversize.jpg", cache, max_bytes=4096)
    with pytest.raises(ImageDownloadError, match="malformed URL"):
        resolve_media_path("http://[::1/cat.jpg", cache_dir=cache)
    with pytest.raises(ImageDownloadError, match="connection error"):
        download_image(f"{base}/cat2.jpg", cache, max_retries=1, backoff_base=0.01, timeout=2)
    assert json.dumps(str(first))  # a plain path, fit for any step file


def test_a_custom_operator_writing_bytes_through_file_storage(tmp_path: Path) -> None:
    """DataFlow-MM-style code that reads and writes the storage itself gets references, not a crash."""
    from dataflow_mm.storage.file_storage import FileStorage
    from tests.support.user_inputs import write_hf_image_shard

    shard = write_hf_image_shard(tmp_path / "in.parquet", {"image": [{"bytes": RED, "path": "r.jpg"}]}, ["image"])
    storage = FileStorage(str(shard), cache_path=str(tmp_path / "cache"), cache_type="jsonl")
    step = storage.step()
    frame = step.read()
    frame["raw"] = [BLUE]
    written = json.loads(Path(step.write(frame)).read_text())
    assert written["image"]["bytes"] is None and Path(written["image"]["path"]).read_bytes() == RED
    assert Path(written["raw"]).read_bytes() == BLUE and Path(written["raw"]).parent == tmp_path / "cache" / "media"


def test_write_jpeg_names_a_drawing_by_its_bytes_and_writes_it_once(tmp_path) -> None:
    from PIL import Image

    from dataflow_mm.storage.media import write_jpeg

    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    first = write_jpeg(red, tmp_path, "a b/c", 90)
    mtime = os.stat(first).st_mtime_ns
    assert write_jpeg(red, tmp_path, "a b/c", 90) == first and os.stat(first).st_mtime_ns == mtime
    assert write_jpeg(blue, tmp_path, "a b/c", 90) != first
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".jpg", ".jpg"]


def test_write_jpeg_writes_the_bytes_of_an_in_memory_encoding_and_leaves_no_temp_file(tmp_path) -> None:
    """Encoded straight into its file (Pillow frees the GIL there), the JPEG is byte for byte the in-memory one."""
    import io

    import numpy as np
    from PIL import Image

    from dataflow_mm.storage.atomic import DurableBatch
    from dataflow_mm.storage.media import write_jpeg

    pixels = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    written = Path(write_jpeg(image, tmp_path / "now", "photo", 92))
    assert written.read_bytes() == buffer.getvalue()
    assert [p.name for p in (tmp_path / "now").iterdir()] == [written.name]

    batch = DurableBatch()
    pending = Path(write_jpeg(image, tmp_path / "batched", "photo", 92, batch))
    assert pending.name == written.name and not pending.exists()  # named only once durable
    batch.commit()
    assert [p.name for p in (tmp_path / "batched").iterdir()] == [written.name]
    assert pending.read_bytes() == buffer.getvalue()

    dropped = DurableBatch()
    write_jpeg(Image.new("RGB", (8, 8), "red"), tmp_path / "dropped", "x", 90, dropped)
    dropped.discard()  # the chunk failed: nothing left behind
    assert list((tmp_path / "dropped").iterdir()) == []


def test_a_drawn_image_is_hashed_once_for_its_name_and_the_next_steps_media_stamp(tmp_path, monkeypatch) -> None:
    import hashlib
    from types import SimpleNamespace

    from PIL import Image

    from dataflow_mm.storage import hashing
    from dataflow_mm.storage.atomic import DurableBatch
    from dataflow_mm.storage.media import write_jpeg
    from dataflow_mm.storage.media_stamps import changed_media, stamp

    batch = DurableBatch()
    path = write_jpeg(Image.new("RGB", (32, 24), "teal"), tmp_path, "drawn", 90, batch)
    batch.commit()
    data = Path(path).read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(hashing, "hashlib", SimpleNamespace(sha256=lambda: pytest.fail("the image was read again")))
        recorded = stamp(path)
    assert recorded == [len(data), os.stat(path).st_mtime_ns, hashlib.sha256(data).hexdigest()]

    Path(path).write_bytes(bytes(reversed(data)))  # replaced in place, same size: hashed again
    os.utime(path, ns=(recorded[1] + 10**9, recorded[1] + 10**9))
    assert stamp(path)[2] == hashlib.sha256(bytes(reversed(data))).hexdigest()
    assert changed_media({path: recorded}) == [path]
