"""Inputs and image cells on object storage, against a real S3-protocol server on loopback (moto's standalone
server): a glob of Parquet shards, WebDataset shards by brace pattern, a ``datasets`` folder saved to the
bucket, ``s3://`` image cells fetched once into the media cache; credentials only from the environment."""

from __future__ import annotations

import io
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataflow_mm.common.errors import ImageDownloadError, StorageError
from dataflow_mm.storage.formats import iter_table
from dataflow_mm.storage.media import resolve_media_path
from dataflow_mm.storage.sources import resolve_first_entry
from tests.support.s3_server import LocalS3, local_s3
from tests.support.user_inputs import image_bytes

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
wds = pytest.importorskip("webdataset")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


def picture(i: int) -> bytes:
    return image_bytes(Image.new("RGB", (20 + i, 12), (i * 30 % 255, 90, 10)))


def put_parquet(fs, key: str, table: pa.Table, row_group_size: int | None = None) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    fs.pipe(key, buffer.getvalue())


def test_a_glob_of_s3_parquet_shards_streams_as_one_table(s3: LocalS3, tmp_path: Path) -> None:
    fs = s3.fs()
    s3.make_bucket("glob")
    for shard in range(4):
        ids = list(range(shard * 6, shard * 6 + 6))
        table = pa.table({"id": ids, "image": [f"s3://glob/{i}.jpg" for i in ids]})
        put_parquet(fs, f"glob/part-{shard:05d}.parquet", table)
    fs.pipe("glob/other.parquet", b"not selected")
    source = resolve_first_entry("s3://glob/part-*.parquet", str(tmp_path), "t")
    chunks = [c.frame for c in iter_table(source, chunk_size=5)]
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 4]
    assert [i for c in chunks for i in c["id"].tolist()] == list(range(24))
    assert "s3://glob/part-00003.parquet" in source.read_text() and "other.parquet" not in source.read_text()
    # the endpoint and keys came from the environment: nothing of them is in the cache
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in source.read_text() and s3.endpoint not in source.read_text()


def test_memory_stays_flat_over_many_shards(s3: LocalS3, tmp_path: Path) -> None:
    fs = s3.fs()
    s3.make_bucket("flat")
    blob = b"x" * 2000
    for shard in range(12):
        put_parquet(fs, f"flat/p-{shard:02d}.parquet", pa.table({"id": list(range(300)), "blob": [blob] * 300}), 100)
    peaks = []
    for pattern in ("s3://flat/p-00.parquet", "s3://flat/p-*.parquet"):
        source = resolve_first_entry(pattern, str(tmp_path / pattern[-9:-8]), "t")
        tracemalloc.start()
        rows = sum(len(c.frame) for c in iter_table(source, chunk_size=100))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert rows == (300 if "00" in pattern else 3600)
    assert peaks[1] < 1.5 * peaks[0], peaks  # 12x the rows, not 12x the memory


def test_webdataset_shards_on_s3_by_brace_pattern(s3: LocalS3, tmp_path: Path) -> None:
    fs = s3.fs()
    s3.make_bucket("wds")
    for shard in range(2):
        buffer = io.BytesIO()
        with wds.TarWriter(buffer) as writer:
            for i in range(shard * 2, shard * 2 + 2):
                writer.write({"__key__": f"k{i}", "jpg": picture(i), "json": {"caption": f"cap {i}"}})
        fs.pipe(f"wds/train-{shard:04d}.tar", buffer.getvalue())
    source = resolve_first_entry("s3://wds/train-{0000..0001}.tar", str(tmp_path), "t")
    rows = [r for c in iter_table(source) for r in c.frame.to_dict(orient="records")]
    assert [r["__key__"] for r in rows] == ["k0", "k1", "k2", "k3"]
    assert [r["caption"] for r in rows] == ["cap 0", "cap 1", "cap 2", "cap 3"]
    assert rows[3]["image"]["bytes"] == picture(3) and rows[3]["__url__"] == "s3://wds/train-0001.tar"
    with pytest.raises(StorageError, match=r"Input file does not exist: 's3://wds/train-0002\.tar'"):
        resolve_first_entry("s3://wds/train-{0000..0002}.tar", str(tmp_path), "t")


def test_a_datasets_folder_saved_to_the_bucket(s3: LocalS3, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {"id": [1, 2, 3], "image": [picture(i) for i in (1, 2, 3)]},
        features=datasets.Features({"id": datasets.Value("int64"), "image": datasets.Image()}),
    )
    s3.make_bucket("dsets")
    data.save_to_disk("s3://dsets/saved", storage_options={"client_kwargs": {"endpoint_url": s3.endpoint}})
    source = resolve_first_entry("s3://dsets/saved", str(tmp_path), "t")
    rows = [r for c in iter_table(source) for r in c.frame.to_dict(orient="records")]
    assert [r["id"] for r in rows] == [1, 2, 3] and rows[1]["image"]["bytes"] == picture(2)


def test_s3_image_cells_are_fetched_once_into_the_media_cache(s3: LocalS3, tmp_path: Path) -> None:
    fs = s3.fs()
    s3.make_bucket("imgs")
    fs.pipe("imgs/a/photo.jpg", picture(5))
    media = tmp_path / "media"
    first = resolve_media_path("s3://imgs/a/photo.jpg", cache_dir=media)
    assert first.parent == media and first.name.startswith("photo_") and first.read_bytes() == picture(5)
    fs.rm("imgs/a/photo.jpg")  # the second use is served from the cache's URL index
    assert resolve_media_path("s3://imgs/a/photo.jpg", cache_dir=media) == first
    with pytest.raises(ImageDownloadError, match=r"cannot fetch s3://imgs/missing.jpg: FileNotFoundError"):
        resolve_media_path("s3://imgs/missing.jpg", cache_dir=media)
    fs.pipe("imgs/big.jpg", b"\xff" * 5000)
    from dataflow_mm.storage.remote_media import fetch_remote_image

    with pytest.raises(ImageDownloadError, match="5000 bytes, above the cap of 4000"):
        fetch_remote_image("s3://imgs/big.jpg", media, max_bytes=4000)


@pytest.mark.parametrize("signature_version", ["s3", "s3v4"])
def test_a_presigned_url_is_read_and_its_signature_is_never_shown(
    s3: LocalS3, tmp_path: Path, signature_version: str
) -> None:
    """A URL as boto3's ``generate_presigned_url`` gives it (query authentication, v2 and v4): one Parquet
    shard read over https-like HTTP, its query not taken for a glob or a file suffix; the signature,
    session token and key id are kept out of the log and of the one-line error of a URL that fails."""
    from dataflow_mm.common.logger import get_logger
    from dataflow_mm.common.secrets import scrub

    bucket = s3.make_bucket(f"presigned-{signature_version}")
    put_parquet(s3.fs(), f"{bucket}/part-0.parquet", pa.table({"id": [1, 2, 3], "image": ["a.jpg"] * 3}))

    def presigned(key: str) -> str:
        return s3.presigned_url(bucket, key, signature_version)

    url = presigned("part-0.parquet")
    query = query_of(url)
    secrets = [v for k, v in query.items() if k.lower() in ("signature", "x-amz-signature", "x-amz-security-token")]
    assert len(secrets) == 2  # the signature and the session token
    handler = get_logger().handlers[0]  # the package's stderr handler, its filter and all
    log = io.StringIO()
    stream = handler.setStream(log)
    try:
        source = resolve_first_entry(url, str(tmp_path), "t")
    finally:
        handler.setStream(stream)
    assert [i for c in iter_table(source, chunk_size=2) for i in c.frame["id"].tolist()] == [1, 2, 3]
    missing = presigned("part-9.parquet")
    with pytest.raises(StorageError) as failed:
        resolve_first_entry(missing, str(tmp_path), "u")
    shown = log.getvalue() + scrub(str(failed.value))  # the log line, and the error line run_main prints
    assert f"{bucket}/part-0.parquet" in shown and f"{bucket}/part-9.parquet" in shown
    assert not [secret for secret in secrets if secret in shown]
    assert not [v for k, v in query.items() if k.lower() in ("awsaccesskeyid", "x-amz-credential") and v in shown]


def query_of(url: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in url.split("?", 1)[1].split("&"))


@pytest.mark.parametrize("signature_version", ["s3", "s3v4"])
def test_a_fresh_presigned_url_of_the_same_object_resumes_and_no_signature_reaches_the_cache(
    s3: LocalS3, tmp_path: Path, signature_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Presigned URLs expire, so a user resumes with a new one: the run takes it for the same input (nothing
    is redone) as long as the object is unchanged, and no signature, key id or session token is written to
    any file of the cache. Reading the cache's source file in a process never given the URL says so."""
    from dataflow_mm.pipeline.templates import load_pipeline_script
    from dataflow_mm.storage import source_tables
    from tests.support.fake_serving import FakeVLMServing
    from tests.support.sample_data import scene_with_boxes

    bucket = s3.make_bucket(f"resume-{signature_version}")
    picture, boxes = scene_with_boxes((96, 72), 2, seed=1)
    picture.save(tmp_path / "photo.jpg")
    rows = {"id": [1, 2, 3], "image": [str(tmp_path / "photo.jpg")] * 3, "bbox": [boxes] * 3}
    put_parquet(s3.fs(), f"{bucket}/part-0.parquet", pa.table(rows))
    urls = [s3.presigned_url(bucket, "part-0.parquet", signature_version, expires) for expires in (600, 900)]
    assert urls[0].split("?")[0] == urls[1].split("?")[0] and urls[0] != urls[1]
    cache = tmp_path / "cache"
    serving = FakeVLMServing()
    pipeline = load_pipeline_script("image_region_caption_pipeline").ImageRegionCaptionPipeline

    def run_from(url: str):
        return pipeline(serving, first_entry_file=url, cache_path=str(cache), output_image_with_bbox_path=None).run()

    first = run_from(urls[0])
    calls = serving.calls.total
    second = run_from(urls[1])
    assert calls >= 1 and serving.calls.total == calls  # the second URL redid nothing
    assert first.rows_out == second.rows_out == 3 and (cache / "report.html").is_file()
    written = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file()).decode("utf-8", "replace")
    signing = ("awsaccesskeyid", "signature", "x-amz-credential", "x-amz-security-token", "x-amz-signature")
    credentials = [v for url in urls for k, v in query_of(url).items() if k.lower() in signing]
    assert len(credentials) == 6 and not [v for v in credentials for form in (v, unquote(v)) if form in written]
    assert f"{bucket}/part-0.parquet" in written  # the object is still named

    monkeypatch.setattr(source_tables, "_SIGNED_URLS", {})  # as in a process that was never given the URL
    (source,) = cache.glob("*.dfmm-source.json")
    with pytest.raises(StorageError, match="given as a signed URL, which the cache does not keep"):
        list(iter_table(source))


def test_without_s3fs_the_error_names_the_pip_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['s3fs'] = None\n"  # s3fs absent, as on an install without the extra
        "from dataflow_mm.storage.sources import resolve_first_entry\n"
        "from dataflow_mm.common.errors import MissingDependencyError\n"
        "try:\n"
        f"    resolve_first_entry('s3://b/part-*.parquet', {str(tmp_path)!r}, 't')\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "reading s3:// URLs needs s3fs" in proc.stdout, proc.stderr[-2000:]
    assert "pip install 'dataflow-mm[remote]'" in proc.stdout and proc.stdout.count("\n") == 1
