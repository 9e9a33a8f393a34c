"""Safe image loading: every mode to RGB as displayed, and one specific row error per failure."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from dataflow_mm.common.errors import (
    ImageDecodeError,
    ImageLoadError,
    ImageNotFoundError,
    ImageTooLargeError,
    RowError,
)
from dataflow_mm.imaging import image_size, load_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close_to(pixel, expected, tolerance=8):
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` RGB pixels but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def exif_rotated_jpeg(path, orientation=6):
    """A 40x20 JPEG (left half red, right half blue) whose EXIF says: rotate for display."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def test_rgba_png_is_composited_over_white(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == BLUE
    assert close_to(loaded.getpixel((2, 0)), (127, 127, 127), 2)


def test_palette_png_with_and_without_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "opaque.png")
    image.save(tmp_path / "transparent.png", transparency=0)
    assert list(load_image(tmp_path / "opaque.png").getdata()) == [(0, 255, 0), RED]
    assert list(load_image(tmp_path / "transparent.png").getdata()) == [WHITE, RED]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    image = Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16))
    assert image.mode == "I;16"
    image.save(tmp_path / "deep.png")
    for source in (image, tmp_path / "deep.png"):
        values = [p[0] for p in load_image(source).getdata()]
        assert values == [0, 4, 128, 255]


def test_32_bit_integer_and_float_grayscale():
    as_int = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert [p[0] for p in load_image(as_int).getdata()] == [0, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [p[0] for p in load_image(as_float).getdata()] == [0, 128, 255]


def test_grayscale_l_becomes_gray_rgb(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (77, 77, 77)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as raw:
        assert raw.mode == "CMYK"
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.mode == "RGB"
    assert close_to(loaded.getpixel((8, 8)), RED)


def test_exif_rotation_is_applied_and_size_is_as_displayed(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "rotated.jpg")
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert image_size(path) == (20, 40)
    assert close_to(loaded.getpixel((10, 5)), RED, 30)  # stored left half is displayed on top
    assert close_to(loaded.getpixel((10, 35)), BLUE, 30)


def test_exif_orientation_without_rotation_keeps_size(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "mirrored.jpg", orientation=2)
    assert image_size(path) == (40, 20)
    assert load_image(path).size == (40, 20)


def rotated_png(exif_after_pixels: bool) -> bytes:
    """A 40x20 PNG whose EXIF says "rotate 90 degrees": before its pixel data (as Pillow writes it), or after
    it, just before IEND (as the PNG extensions of 2017 allowed; Pillow reads it only by decoding the pixels)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes().removeprefix(b"Exif\x00\x00")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), BLUE).save(buffer, "PNG", **({} if exif_after_pixels else {"exif": raw}))
    data = buffer.getvalue()
    if not exif_after_pixels:
        return data
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw + struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    end = data.rindex(b"IEND") - 4
    return data[:end] + chunk + data[end:]


@pytest.mark.parametrize("exif_after_pixels", [False, True])
def test_a_rotated_png_is_sized_as_displayed_without_decoding_its_pixels(tmp_path, monkeypatch, exif_after_pixels):
    from PIL import ImageFile

    data = rotated_png(exif_after_pixels)
    (tmp_path / "rotated.png").write_bytes(data)
    assert load_image(data).size == (20, 40)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 20)).save(plain)

    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    assert image_size(tmp_path / "rotated.png") == image_size(data) == (20, 40)
    assert image_size(plain) == (40, 20)
    assert decoded == []


def test_a_jpeg_is_decoded_at_the_reduction_asked_for_and_other_formats_whole(tmp_path):
    asked = []

    def quarter(size):
        asked.append(size)
        return size[0] // 4, size[1] // 4

    Image.new("RGB", (800, 600), RED).save(tmp_path / "photo.jpg", quality=90)
    Image.new("RGB", (800, 600), RED).save(tmp_path / "photo.png")
    assert load_image(tmp_path / "photo.jpg", reduce=quarter).size == (200, 150)
    assert load_image(tmp_path / "photo.png", reduce=quarter).size == (800, 600)
    assert load_image(tmp_path / "photo.jpg", reduce=lambda size: None).size == (800, 600)
    rotated = exif_rotated_jpeg(tmp_path / "rotated.jpg")  # stored 40x20, displayed 20x40
    assert load_image(rotated, reduce=lambda size: (size[0] // 2, size[1] // 2)).size == (10, 20)
    assert asked == [(800, 600)]  # the stored size; a PNG is not asked about


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageNotFoundError, match=r"image file not found: '.*nope\.jpg'") as info:
        load_image(missing)
    assert isinstance(info.value, RowError)
    with pytest.raises(ImageNotFoundError):
        image_size(str(missing))


def test_directory(tmp_path):
    with pytest.raises(ImageNotFoundError, match="is a directory, not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("source", [None, ""])
def test_no_path(source):
    with pytest.raises(ImageNotFoundError):
        load_image(source)


def test_unsupported_source_type():
    with pytest.raises(ImageLoadError, match="unsupported image source type int"):
        load_image(42)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty \(0 bytes\): '.*empty\.jpg'"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"cannot decode image '.*cut\.jpg': .*truncated"):
        load_image(path)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(ImageDecodeError, match=r"not an image or unsupported format: '.*notes\.jpg'"):
        load_image(tmp_path / "notes.jpg")


def test_decompression_bomb_header_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30000, 30000))
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        load_image(path)
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=None)  # Pillow's own guard still applies
    assert time.perf_counter() - start < 1.0  # 2.7 GB of pixels were never allocated


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_is_checked_from_the_header(tmp_path):
    small_limit = png_header_only(2000, 1000)
    with pytest.raises(ImageTooLargeError, match=r"declares 2000x1000 = 2000000 pixels, above the limit of 1000000"):
        load_image(small_limit, max_pixels=1_000_000)
    above_default = png_header_only(12000, 12000)  # 144 MP: above DEFAULT_MAX_PIXELS, below Pillow's guard
    with pytest.raises(ImageTooLargeError, match="144000000 pixels"):
        load_image(above_default)
    assert image_size(above_default) == (12000, 12000)  # header only, nothing decoded


def test_bytes_input():
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), RED).save(buffer, "PNG")
    loaded = load_image(buffer.getvalue())
    assert loaded.size == (5, 3)
    assert loaded.getpixel((0, 0)) == RED
    assert image_size(bytearray(buffer.getvalue())) == (5, 3)
    with pytest.raises(ImageDecodeError, match=r"not an image or unsupported format: <7 bytes in memory>"):
        load_image(b"garbage")


def test_path_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "my photos 2024"
    folder.mkdir()
    path = folder / "фото 图像 é.png"
    Image.new("RGB", (7, 9), BLUE).save(path)
    assert load_image(str(path)).size == (7, 9)
    assert image_size(path) == (7, 9)


def test_pil_input_is_not_modified():
    original = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    loaded = load_image(original)
    assert loaded is not original
    assert loaded.getpixel((0, 0)) == WHITE
    assert original.mode == "RGBA"
    assert original.getpixel((0, 0)) == (0, 0, 0, 0)
    rgb = Image.new("RGB", (2, 2), RED)
    assert load_image(rgb) is not rgb
