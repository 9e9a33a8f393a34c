"""Image downloads: a whole-download deadline, http(s) on every redirect hop, no credentials (issue 24, 8, 9, 13).

A loopback server sends an image one byte per second: the per-read timeout never tripped, so the
download went on for as long as the server liked. A redirect to ``ftp://`` was followed. A URL with
``alice:PW@`` put the password into the row's error.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from dataflow_mm.common.errors import ImageDownloadError
from dataflow_mm.storage.downloads import download_image, mask_credentials
from tests.support.time_limit import time_limit
from tests.support.user_inputs import image_bytes, image_http_server

PICTURE = image_bytes(Image.new("RGB", (40, 30), (200, 20, 20)))
PASSWORD = "Pw-5ecret-9x"


def test_a_server_sending_one_byte_per_second_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    with (
        image_http_server({"/slow.jpg": PICTURE}, trickle={"/slow.jpg": 1.0}) as (base, hits),
        time_limit(20, "still downloading"),
    ):
        started = time.monotonic()
        with pytest.raises(ImageDownloadError, match=r"no complete download within 2 s \(download_timeout\)"):
            download_image(f"{base}/slow.jpg", tmp_path, timeout=2, max_retries=0)
        took = time.monotonic() - started
    assert 1.9 <= took < 6, took
    assert hits["/slow.jpg"] == 1
    assert not list(tmp_path.rglob("*.jpg"))  # nothing half-downloaded is stored


def test_the_deadline_bounds_each_attempt_and_a_timeout_is_retried(tmp_path: Path) -> None:
    with (
        image_http_server({"/slow.jpg": PICTURE}, trickle={"/slow.jpg": 1.0}) as (base, hits),
        time_limit(20, "still downloading"),
    ):
        started = time.monotonic()
        with pytest.raises(ImageDownloadError, match="after 2 attempts"):
            download_image(f"{base}/slow.jpg", tmp_path, timeout=1, max_retries=1, backoff_base=0.01)
        assert time.monotonic() - started < 5
    assert hits["/slow.jpg"] == 2


def test_a_fast_server_still_downloads_within_the_deadline(tmp_path: Path) -> None:
    with image_http_server({"/cat.jpg": PICTURE}) as (base, _):
        path = download_image(f"{base}/cat.jpg", tmp_path, timeout=1, max_retries=0)
    assert path.read_bytes() == PICTURE


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9/x.png", "file:///etc/passwd", "gopher://127.0.0.1:9/x"])
def test_a_redirect_to_another_scheme_is_refused(tmp_path: Path, target: str) -> None:
    refused = r"HTTP 302 redirect refused: not an http\(s\) URL"
    with (
        image_http_server({}, redirects={"/r.jpg": target}) as (base, hits),
        time_limit(20, "still downloading"),
        pytest.raises(ImageDownloadError, match=refused) as caught,
    ):
        download_image(f"{base}/r.jpg", tmp_path, max_retries=2, backoff_base=0.01)
    assert hits["/r.jpg"] == 1  # final at once, not retried
    assert target[:20] in str(caught.value)


def test_every_hop_of_a_redirect_chain_is_checked(tmp_path: Path) -> None:
    with image_http_server({"/cat.jpg": PICTURE}, redirects={"/a": "/b", "/b": "/cat.jpg"}) as (base, hits):
        assert download_image(f"{base}/a", tmp_path, max_retries=0).read_bytes() == PICTURE  # http hops: followed
        with image_http_server({}, redirects={"/c": f"{base}/a", "/e": "/f", "/f": "ftp://127.0.0.1:9/x"}) as (
            other,
            seen,
        ):
            download_image(f"{other}/c", tmp_path / "2", max_retries=0)  # to another server, then two more hops
            with pytest.raises(ImageDownloadError, match="redirect refused"):
                download_image(f"{other}/e", tmp_path / "3", max_retries=0)  # the second hop is ftp
    assert hits["/a"] == 2 and seen["/f"] == 1


def test_a_url_with_credentials_is_refused_with_the_password_masked(tmp_path: Path) -> None:
    with image_http_server({"/cat.jpg": PICTURE}, redirects={"/r": "http://bob:" + PASSWORD + "@127.0.0.1:9/x"}) as (
        base,
        hits,
    ):
        host = base.removeprefix("http://")
        with pytest.raises(ImageDownloadError, match="user name or password") as caught:
            download_image(f"http://alice:{PASSWORD}@{host}/cat.jpg", tmp_path, max_retries=0)
        assert PASSWORD not in str(caught.value) and f"alice:***@{host}/cat.jpg" in str(caught.value)
        with pytest.raises(ImageDownloadError, match="redirect refused") as redirected:
            download_image(f"{base}/r", tmp_path, max_retries=0)
        assert PASSWORD not in str(redirected.value) and "bob:***@" in str(redirected.value)
    assert "/cat.jpg" not in hits  # nothing was sent with the credentials
    assert mask_credentials(f"https://{PASSWORD}@h/x.png") == "https://***@h/x.png"  # a token as user name
    assert mask_credentials("https://h/x.png?a=b@c") == "https://h/x.png?a=b@c"
