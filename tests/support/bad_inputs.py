"""A corpus of dirty inputs: broken images, bad boxes, bad table lines, each with its expected outcome.

Used by the reliability tests (and handy for trying a new operator): ``build_region_caption_corpus`` and
``build_imgdiff_corpus`` write every case into one JSONL table next to good rows, and return what each row
should become; ``build_chunk_corpus`` holds the faults that concern a whole chunk (run with ``chunk_size=1``).
Every class of fault of issue #12 has several variants: image paths the OS refuses, boxes beyond float range,
lines nested too deep, lone surrogates, rows without the image key, ``error`` fields that are not errors. Issue
#24 adds the classes an input file can carry: image URLs with a user name and password (refused, never written:
``URL_PASSWORD``), rows of tens of thousands of boxes (read up to the cap), and a cache whose ``logs`` cannot
hold the run log (``bad_input_runs``).

``python -m tests.support.bad_inputs`` runs the whole corpus through both shipped pipelines (a fake VLM,
tiny BLIP and CLIP scorers), twice each (the second run resumes), and prints the corpus figures the README
reports: rows tried, rows kept with an error, lines rejected, runs that stopped (``testing.bad_input_runs``).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dataflow_mm.storage.jsonl_reading import MAX_JSON_DEPTH
from tests.support.sample_data import scene_with_boxes

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
    for name, path in unopenable_paths(folder).items():
        row(Case(f"path:{name}", error="ImageNotFoundError"), None, extra=_field("image", path))
    for name, (bbox, case) in huge_box_cases().items():
        row(Case(f"box:{name}", **case), good, bbox)
    for name, (extra, case) in surrogate_cases().items():
        row(Case(f"surrogate:{name}", **case), good, extra=extra)
    for name, value in NON_ERROR_VALUES.items():
        row(Case(f"error field:{name}", valid_boxes=1), good, extra=_field("error", value))
    earlier = _field("error", "UpstreamError: failed before")
    row(Case("error field:earlier error", error="UpstreamError"), good, extra=earlier)
    for name, url in credential_urls().items():
        row(Case(f"url:{name}", error="ImageDownloadError"), url)
    for name, (bbox, case) in many_box_cases().items():
        row(Case(f"box:{name}", **case), good, bbox)
    lines.insert(3, '{"case_id": "malformed", "image": ')  # malformed JSON line in the middle
    lines.insert(5, "")  # blank lines are not rows
    lines.insert(6, "   ")
    lines.insert(8, f'{{"case_id": "dup", "image": {_json_str(good)}, "image": {_json_str(good)}}}')
    row(Case("good_last", valid_boxes=1), good)
    lines[10:10] = DEEP_LINES
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    raw = b"\xef\xbb\xbf" + raw + b'{"case_id": "latin1", "image": "caf\xe9.jpg"}\n'  # BOM first, non-UTF-8 last
    table = folder / "dirty.jsonl"
    table.write_bytes(raw)
    rejects = {"MalformedJSONLine": 1, "DuplicateKeyLine": 1, "NonUTF8Line": 1, "TooDeepJSONLine": len(DEEP_LINES)}
    return table, cases, rejects


def _json_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- the faults of issue #12, several variants each ----------------------------------------------------------

HUGE_INT = "1" + "0" * 400  # 10**400: JSON reads it as an exact integer that has no float value
# Lines nested far past the recursion limit, and a row one level past MAX_JSON_DEPTH: each a TooDeepJSONLine.
DEEP_LINES = [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    '{"case_id": "one too deep", "x": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",
]
# Values of an ``error`` field that are not errors (only a non-empty string is): the row is processed.
NON_ERROR_VALUES: dict[str, Any] = {"empty string": "", "false": False, "zero": 0, "empty list": [], "empty object": {}}


# -- the input-file faults of issue #24 ------------------------------------------------------------------------

URL_PASSWORD = "Pw-5ecret-c0rpus"  # no written file may hold it
MANY_BOXES = 20_000


def credential_urls() -> dict[str, str]:
    """Image URLs holding credentials: each is refused (ImageDownloadError) before any connection is made."""
    return {
        "user and password": f"http://alice:{URL_PASSWORD}@127.0.0.1:9/x.png",
        "password, https": f"https://bob:{URL_PASSWORD}@127.0.0.1:9/y.jpg",
        "token as user name": f"https://{URL_PASSWORD}@127.0.0.1:9/z.jpg",
    }


def many_box_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Rows of tens of thousands of boxes: read up to ``max_boxes`` (10), the rest counted, not listed."""
    valid = ", ".join(f"[{i % 300}, {i % 200}, 10, 10]" for i in range(MANY_BOXES))
    outside = ", ".join("[-100, -100, 5, 5]" for _ in range(MANY_BOXES))
    return {
        f"{MANY_BOXES} boxes": (f"[{valid}]", {"valid_boxes": 10}),
        f"{MANY_BOXES} outside, then one": (f"[{outside}, [10, 10, 20, 20]]", {"valid_boxes": 1}),
    }


def unopenable_paths(folder: Path) -> dict[str, str]:
    """Image paths the OS refuses or cannot resolve: each must end its row with ImageNotFoundError."""
    return {
        "component over 255 bytes": str(folder / ("a" * 300 + ".jpg")),
        "inner component over 255 bytes": str(folder / ("b" * 256) / "c.jpg"),
        "relative component over 255 bytes": "d" * 400 + ".png",
        "unknown user": "~nosuchuser/a.jpg",
        "NUL byte": str(folder / "a\x00b.jpg"),
        "lone surrogate": str(folder / "x\ud800.jpg"),
        "ANSI escapes": str(folder / "\x1b[2J\x1b[31mred\x1b[0m\r.jpg"),  # never printed raw (issue #24)
    }


def huge_box_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Region-caption boxes holding an integer beyond float range: (bbox JSON text, expected Case fields)."""
    return {
        "10**400 only box": (f"[[{HUGE_INT}, 10, 20, 20]]", {"error": "InvalidBoxError"}),
        "10**400 width": (f"[[10, 10, {HUGE_INT}, 20]]", {"error": "InvalidBoxError"}),
        "-10**400 flat box": (f"[-{HUGE_INT}, 10, 20, 20]", {"error": "InvalidBoxError"}),
        "10**400 among good": (f"[[10, 10, 20, 20], [{HUGE_INT}, 1, 1, 1]]", {"valid_boxes": 1}),
    }


def surrogate_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Lone surrogates outside the image path: (extra JSON fields, expected Case fields)."""
    return {
        "in a text field": (_field("note", "a\ud800b"), {"valid_boxes": 1}),
        "in a key": (_field("k\udfff", 1), {"valid_boxes": 1}),
        "in a nested list": (_field("tags", ["\udbff", "ok"]), {"valid_boxes": 1}),
    }


def _field(key: str, value: Any) -> str:
    """``, "key": value`` as ASCII JSON (lone surrogates stay escapes, as a JSON writer would put them)."""
    return ", " + json.dumps({key: value})[1:-1]


def build_chunk_corpus(folder: Path) -> tuple[Path, list[Case], Path, str]:
    """Chunks in which no row has the image key, for ``chunk_size=1``: the region-caption table, its cases,
    and the Img-Diff table (same cases, keyed ``image_path1``/``image_path2``)."""
    good = str(write_bad_images(folder / "images")["good.jpg"])
    shapes: list[tuple[Case, dict[str, Any] | None]] = [
        (Case("chunk:only id", error="MissingFieldError"), {"id": 1}),
        (Case("chunk:good", valid_boxes=1), None),
        (Case("chunk:empty object", error="MissingFieldError"), {}),
        (Case("chunk:other keys", error="MissingFieldError"), {"picture": good, "bbox": [[1, 1, 5, 5]]}),
        (Case("chunk:good again", valid_boxes=1), None),
    ]
    region = [json.dumps({"case_id": c.case_id, **(r if r is not None else {"image": good})}) for c, r in shapes]
    pair = {"image_path1": good, "image_path2": good, "bboxes": [[10, 10, 20, 20]]}
    imgdiff = [json.dumps({"case_id": c.case_id, **(r if r is not None else pair)}) for c, r in shapes]
    table = folder / "chunks.jsonl"
    table.write_text("\n".join(region) + "\n", encoding="utf-8")
    pairs = folder / "chunk_pairs.jsonl"
    pairs.write_text("\n".join(imgdiff) + "\n", encoding="utf-8")
    return table, [c for c, _ in shapes], pairs, good


def build_imgdiff_corpus(folder: Path) -> tuple[Path, list[Case], dict[str, int]]:
    """The Img-Diff table (``image_path1``, ``image_path2``, ``bboxes`` in xywh), each row's expected error
    class (None: the row is processed; bad boxes are dropped with their reason), and the rejects by cause."""
    images = write_bad_images(folder / "images")
    good = str(images["good.jpg"])
    box = [10, 10, 30, 30]
    lines: list[str] = []
    cases: list[Case] = []

    def row(case: Case, fields: dict[str, Any], raw_extra: str = "") -> None:
        text = json.dumps({"case_id": case.case_id, **fields})
        lines.append(text[:-1] + raw_extra + "}")
        cases.append(case)

    pair = {"image_path1": good, "image_path2": good}
    row(Case("good_first"), {**pair, "bboxes": [box]})
    for name, error in {
        "missing.jpg": "ImageNotFoundError",
        "a_directory.jpg": "ImageNotFoundError",
        "zero_byte.jpg": "ImageDecodeError",
        "truncated.jpg": "ImageDecodeError",
        "bomb.png": "ImageTooLargeError",
        "cmyk.jpg": None,
        "sixteen_bit.png": None,
    }.items():
        row(Case(f"image1:{name}", error=error), {**pair, "image_path1": str(images[name]), "bboxes": [box]})
    row(Case("image2:truncated.jpg", error="ImageDecodeError"), {**pair, "image_path2": str(images["truncated.jpg"])})
    for name, path in unopenable_paths(folder).items():
        row(Case(f"path1:{name}", error="ImageNotFoundError"), {**pair, "image_path1": path, "bboxes": [box]})
        row(Case(f"path2:{name}", error="ImageNotFoundError"), {**pair, "image_path2": path, "bboxes": [box]})
    for name, raw in {
        "10**400 only box": f"[[{HUGE_INT}, 10, 20, 20]]",
        "10**400 among good": f"[[10, 10, 20, 20], [{HUGE_INT}, 0, 0, 0]]",
        "-10**400 flat box": f"[-{HUGE_INT}, 0, 0, 0]",
        "10**400 height": f"[[10, 10, 20, {HUGE_INT}]]",
    }.items():
        row(Case(f"box:{name}"), pair, f', "bboxes": {raw}')
    for name, (extra, _) in surrogate_cases().items():
        row(Case(f"surrogate:{name}"), {**pair, "bboxes": [box]}, extra)
    row(Case("surrogate:in the box cell", error="InvalidBoxError"), {**pair, "bboxes": "\ud800"})
    for name, value in NON_ERROR_VALUES.items():
        row(Case(f"error field:{name}"), {**pair, "bboxes": [box], "error": value})
    row(Case("error field:earlier error", error="UpstreamError"), {**pair, "error": "UpstreamError: failed before"})
    for name, url in credential_urls().items():
        row(Case(f"url1:{name}", error="ImageDownloadError"), {**pair, "image_path1": url, "bboxes": [box]})
    many = [[10 + i % 250, 10 + i % 180, 30, 30] for i in range(MANY_BOXES)]
    row(Case(f"boxes:{MANY_BOXES} boxes"), {**pair, "bboxes": many})  # read up to max_input_boxes
    row(Case("table:no image_path1", error="MissingFieldError"), {"image_path2": good, "bboxes": [box]})
    row(Case("table:null image_path2", error="MissingFieldError"), {"image_path1": good, "image_path2": None})
    row(Case("good_last"), {**pair, "bboxes": [box]})
    lines[3:3] = DEEP_LINES
    lines.insert(2, '{"case_id": "malformed", "image_path1": ')
    raw = ("\n".join(lines) + "\n").encode("utf-8") + b'{"case_id": "latin1", "image_path1": "caf\xe9.jpg"}\n'
    table = folder / "pairs.jsonl"
    table.write_bytes(raw)
    return table, cases, {"MalformedJSONLine": 1, "NonUTF8Line": 1, "TooDeepJSONLine": len(DEEP_LINES)}


def build_data_juicer_corpus(folder: Path) -> tuple[Path, list[Case]]:
    """A Data-Juicer Img-Diff table (boxes in ``__dj__meta__.__dj__bbox__``, pixel cx, cy, w, h) whose metas are
    not all dicts: a meta that is not one keeps its value and the row gets a ``DJMetaError``."""
    images = write_bad_images(folder / "images")
    good = str(images["good.jpg"])
    meta = {"__dj__bbox__": [[30, 30, 20, 20]], "source": "shard-0"}
    shapes: dict[str, tuple[Any, str | None]] = {
        "dj:dict meta": (meta, None),
        "dj:meta as JSON text": (json.dumps(meta), None),
        "dj:meta a list": (["a", "list"], "DJMetaError"),
        "dj:meta a number": (7, "DJMetaError"),
        "dj:meta free text": ("free text, not JSON", "DJMetaError"),
    }
    cases = [Case(case_id, error=error) for case_id, (_, error) in shapes.items()]
    rows = [
        {"case_id": case_id, "image_path1": good, "image_path2": good, "text": "", "__dj__meta__": value}
        for case_id, (value, _) in shapes.items()
    ]
    table = folder / "dj_meta.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return table, cases


if __name__ == "__main__":
    from tests.support.bad_input_runs import main

    main()
