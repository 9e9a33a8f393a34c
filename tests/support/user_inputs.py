"""Input files as users bring them, built for tests: Hugging Face Image shards, image folders,
a local HTTP image server and a Hugging Face hub cache laid out offline."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

HF_IMAGE_TYPE_FIELDS = (("bytes", "binary"), ("path", "string"))


def image_bytes(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_hf_image_shard(path: Path, columns: dict[str, Sequence[Any]], image_columns: Sequence[str]) -> Path:
    """A Parquet shard as ``datasets`` writes an ``Image`` feature: ``struct<bytes: binary, path: string>``.

    ``columns`` maps names to values; the ``image_columns`` values are ``{"bytes", "path"}`` dicts.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    struct = pa.struct([(name, getattr(pa, kind)()) for name, kind in HF_IMAGE_TYPE_FIELDS])
    arrays = {
        name: pa.array(list(values), type=struct) if name in image_columns else pa.array(list(values))
        for name, values in columns.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(arrays), path)
    return path


def lay_out_hub_dataset(hub_cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "0" * 40) -> Path:
    """Put a dataset into a Hugging Face hub cache as ``huggingface_hub`` stores it (blobs, snapshot links, refs).

    Returns the snapshot folder. ``huggingface_hub.scan_cache_dir`` reads it as a cached repo.
    """
    repo = hub_cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(Path(name).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@contextmanager
def image_http_server(
    routes: dict[str, bytes],
    oversize_bytes: int = 0,
    redirects: dict[str, str] | None = None,
    trickle: dict[str, float] | None = None,
) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve ``routes`` (URL path -> body) on 127.0.0.1; other paths are 404; ``/oversize.jpg`` sends
    ``oversize_bytes`` bytes when that is non-zero; a path in ``redirects`` answers 302 to its URL; a
    path in ``trickle`` sends its body one byte every that many seconds (until the client leaves or the
    server stops). Yields the base URL and the requests counted per path (to check caching); stops on exit.
    """
    hits: dict[str, int] = {}
    stopping = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path in (redirects or {}):
                self.send_response(302)
                self.send_header("Location", (redirects or {})[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path in (trickle or {}):
                self._trickle(routes[self.path], (trickle or {})[self.path])
                return
            if self.path == "/oversize.jpg" and oversize_bytes:
                body = b"\xff" * oversize_bytes
            elif self.path in routes:
                body = routes[self.path]
            else:
                self.send_error(404, "not here")
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, body: bytes, seconds: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for index in range(len(body)):
                    if stopping.wait(seconds):
                        return
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
            except OSError:  # the client gave up
                return

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
