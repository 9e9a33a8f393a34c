"""Content-derived file names and atomic image writes."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from dataflow_mm.imaging.saving import save_image_atomic
from dataflow_mm.storage.naming import content_name, safe_stem


def test_content_name_is_stable_and_content_dependent():
    name = content_name("photo", b"payload", ".jpg")
    assert name == f"photo_{hashlib.sha256(b'payload').hexdigest()[:16]}.jpg"
    assert content_name("photo", b"payload", ".jpg") == name
    assert content_name("photo", "payload", ".jpg") == name  # str payloads are hashed as UTF-8
    assert content_name("photo", b"other", ".jpg") != name


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\evil", "evil"),
        ("data/images/20.jpg", "20_jpg"),
        ("my photo (1)", "my_photo_1"),
        ("фото_图像-é", "фото_图像-é"),
        ("..", "image"),
        ("", "image"),
        ("a/b/", "b"),
        ("x" * 100, "x" * 60),
    ],
)
def test_safe_stem(stem, expected):
    assert safe_stem(stem) == expected


def test_content_name_never_escapes_the_directory():
    name = content_name("../../../tmp/evil", b"x", ".png")
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.startswith("evil_")


@pytest.mark.parametrize("suffix", ["jpg", ".j/pg", "", ".tar.gz"])
def test_content_name_rejects_bad_suffix(suffix):
    with pytest.raises(ValueError, match="suffix must look like"):
        content_name("a", b"x", suffix)


def test_save_image_atomic_writes_png_and_jpeg(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 128))
    png = save_image_atomic(rgba, tmp_path / "out.png")
    jpg = save_image_atomic(rgba, tmp_path / "sub dir" / "out.jpg", quality=90)
    with Image.open(png) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (8, 6))
    with Image.open(jpg) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.jpg", "out.png", "sub dir"]


def test_save_image_atomic_replaces_an_existing_file(tmp_path):
    target = tmp_path / "same.png"
    save_image_atomic(Image.new("RGB", (2, 2), (0, 0, 0)), target)
    save_image_atomic(Image.new("RGB", (3, 3), (255, 255, 255)), str(target))
    with Image.open(target) as image:
        assert image.size == (3, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["same.png"]


def test_failed_save_leaves_no_temp_file_and_no_target(tmp_path):
    float_image = Image.new("F", (4, 4))  # PNG cannot store 32-bit float
    with pytest.raises(OSError):
        save_image_atomic(float_image, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_save_interrupted_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    save_image_atomic(Image.new("RGB", (2, 2)), target)
    old_bytes = target.read_bytes()

    def write_half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_image_atomic(Image.new("RGB", (5, 5)), target)
    assert target.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_unknown_suffix_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the image format from the suffix '\.xyz'"):
        save_image_atomic(Image.new("RGB", (2, 2)), tmp_path / "a.xyz")
    assert list(tmp_path.iterdir()) == []
