"""A corpus of dirty inputs: broken images, bad boxes, bad table lines, each with its expected outcome.

Used by the reliability tests (and handy for trying a new operator): ``build_region_caption_corpus``
writes every case into one JSONL table next to good rows, and returns what each row should become.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.testing.sample_data import scene_with_boxes

GOOD_SIZE = (320, 240)


@dataclass(frozen=True)
class Case:
    """One row of the corpus: its id, and either the expected error class or the expected box type."""

    case_id: str
    error: str | None = None
    box_type: str | None = "with_bbox"
    valid_boxes: int | None = None
    normalized_first: list[float] | None = None


def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels (never decode it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_bytes(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def write_bad_images(folder: Path) -> dict[str, Path]:
    """Every bad or unusual image file the corpus uses, by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    scene, _ = scene_with_boxes(GOOD_SIZE, 2, seed=1)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = folder / name
        files[name].write_bytes(data)

    put("good.jpg", _jpeg_bytes(scene))
    put("zero_byte.jpg", b"")
    put("truncated.jpg", _jpeg_bytes(scene)[:600])
    put("text_file.jpg", b"this is not an image, just text that ends in .jpg\n")
    put("bomb.png", decompression_bomb_png())
    for name, mode in {"alpha.png": "RGBA", "palette.png": "P", "gray.png": "L"}.items():
        buffer = io.BytesIO()
        scene.convert(mode).save(buffer, format="PNG")
        put(name, buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("I;16", GOOD_SIZE, 40000).save(buffer, format="PNG")
    put("sixteen_bit.png", buffer.getvalue())
    put("cmyk.jpg", _jpeg_bytes(scene.convert("CMYK")))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    put("exif_rotated.jpg", _jpeg_bytes(scene.resize((200, 100)), exif=exif.tobytes()))
    odd_dir = folder / "dir with spaces" / "ünïcödé"
    odd_dir.mkdir(parents=True, exist_ok=True)
    files["odd path.jpg"] = odd_dir / "fotó 1.jpg"
    files["odd path.jpg"].write_bytes(_jpeg_bytes(scene))
    files["a_directory.jpg"] = folder / "a_directory.jpg"
    files["a_directory.jpg"].mkdir(exist_ok=True)
    files["missing.jpg"] = folder / "missing.jpg"
    return files


def build_region_caption_corpus(folder: Path) -> tuple[Path, list[Case], dict[str, int]]:
    """The table, the expected outcome of each readable row (in order), and the expected rejects by cause."""
    images = write_bad_images(folder / "images")
    good = str(images["good.jpg"])
    lines: list[str] = []
    cases: list[Case] = []

    def row(case: Case, image: str | None, bbox: Any = "[[10, 10, 50, 40]]", extra: str = "") -> None:
        fields = [f'"case_id": "{case.case_id}"']
        if image is not None:
            fields.append(f'"image": {_json_str(image)}')
        if bbox is not None:
            fields.append(f'"bbox": {bbox}')
        lines.append("{" + ", ".join(fields) + extra + "}")
        cases.append(case)

    row(Case("good_first", valid_boxes=1, normalized_first=[0.031, 0.042, 0.188, 0.208]), good)
    for name, error in {
        "missing.jpg": "ImageNotFoundError",
        "a_directory.jpg": "ImageNotFoundError",
        "zero_byte.jpg": "ImageDecodeError",
        "truncated.jpg": "ImageDecodeError",
        "text_file.jpg": "ImageDecodeError",
        "bomb.png": "ImageTooLargeError",
    }.items():
        row(Case(f"image:{name}", error=error), str(images[name]))
    for name in ("alpha.png", "palette.png", "gray.png", "sixteen_bit.png", "cmyk.jpg", "odd path.jpg"):
        row(Case(f"image:{name}", valid_boxes=1), str(images[name]))
    # Displayed as 100x200 after the EXIF rotation: boxes refer to the displayed image.
    row(
        Case("image:exif_rotated", valid_boxes=1, normalized_first=[0.1, 0.05, 0.6, 0.25]),
        str(images["exif_rotated.jpg"]),
    )
    (images["good.jpg"].parent / "x").mkdir(exist_ok=True)
    traversal = str(images["good.jpg"].parent / "x" / ".." / ".." / "images" / "good.jpg")
    row(Case("image:../ traversal", valid_boxes=1), traversal)
    box_cases: list[tuple[Case, str]] = [
        (Case("box:partly negative", valid_boxes=1, normalized_first=[0.0, 0.0, 0.125, 0.167]), "[[-10, -10, 50, 50]]"),
        (Case("box:fully negative", error="InvalidBoxError"), "[[-100, -100, 50, 50]]"),
        (Case("box:partly beyond", valid_boxes=1, normalized_first=[0.938, 0.833, 1.0, 1.0]), "[[300, 200, 100, 100]]"),
        (Case("box:fully beyond", error="InvalidBoxError"), "[[400, 300, 10, 10]]"),
        (Case("box:zero width", error="InvalidBoxError"), "[[10, 10, 0, 20]]"),
        (Case("box:negative height", error="InvalidBoxError"), "[[10, 10, 20, -5]]"),
        (Case("box:NaN", error="InvalidBoxError"), "[[NaN, 10, 20, 20]]"),
        (Case("box:strings", error="InvalidBoxError"), '[["10", "10", "20", "20"]]'),
        (Case("box:string cell", error="InvalidBoxError"), '"10,10,20,20"'),
        (Case("box:too deep", error="InvalidBoxError"), "[[[10, 10, 20, 20]]]"),
        (Case("box:2-value point", error="InvalidBoxError"), "[5, 5]"),
        (Case("box:one bad among good", valid_boxes=2), '[[10, 10, 20, 20], "oops", [30, 30, 20, 20]]'),
        (
            Case("box:more than max_boxes", valid_boxes=10),
            "[" + ", ".join(f"[{i * 20}, 5, 10, 10]" for i in range(12)) + "]",
        ),
        (Case("box:empty list", box_type="without_bbox"), "[]"),
        (Case("box:null", box_type="without_bbox"), "null"),
    ]
    for case, bbox in box_cases:
        row(case, good, bbox)
    row(Case("table:no image key", error="MissingFieldError"), None)
    row(Case("table:null image", error="MissingFieldError"), None, extra=', "image": null')
    lines.insert(3, '{"case_id": "malformed", "image": ')  # malformed JSON line in the middle
    lines.insert(5, "")  # blank lines are not rows
    lines.insert(6, "   ")
    lines.insert(8, f'{{"case_id": "dup", "image": {_json_str(good)}, "image": {_json_str(good)}}}')
    row(Case("good_last", valid_boxes=1), good)
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    raw = b"\xef\xbb\xbf" + raw + b'{"case_id": "latin1", "image": "caf\xe9.jpg"}\n'  # BOM first, non-UTF-8 last
    table = folder / "dirty.jsonl"
    table.write_bytes(raw)
    rejects = {"MalformedJSONLine": 1, "DuplicateKeyLine": 1, "NonUTF8Line": 1}
    return table, cases, rejects


def _json_str(value: str) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
