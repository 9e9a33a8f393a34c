"""Regenerate the Img-Diff demo pairs shipped in data/imgdiff/ (synthetic scenes drawn with Pillow).

    python scripts/make_imgdiff_demo_data.py

Each pair is a scene and an edited copy in which one or two objects were recoloured, replaced,
moved, added or removed (the kind of pair Img-Diff is built from). The first row of the table
carries boxes in Data-Juicer's pixel centre format ``[cx, cy, w, h]`` (one around the edit, one
around an unchanged object); the other rows have none, so the pipeline's difference-area
proposer finds them. Every edited object covers well under 1/10 of the image, the default
``max_box_area_ratio``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1] / "data" / "imgdiff"
SIZE = (480, 320)
QUALITY = 88

Draw = Callable[[ImageDraw.ImageDraw, dict], None]


def _texture(image: Image.Image, seed: int, amount: float = 2.0) -> Image.Image:
    """Light seeded per-pixel noise, so the scene is not flat colour (reproducible byte for byte)."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, amount, size=(SIZE[1], SIZE[0], 1))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _sky_ground(d: ImageDraw.ImageDraw, sky: tuple, ground: tuple, horizon: float = 0.62) -> None:
    w, h = SIZE
    d.rectangle([0, 0, w, int(h * horizon)], fill=sky)
    d.rectangle([0, int(h * horizon), w, h], fill=ground)


def street(d: ImageDraw.ImageDraw, v: dict) -> None:
    _sky_ground(d, (135, 190, 235), (95, 95, 100))
    d.rectangle([40, 90, 170, 198], fill=(200, 80, 60))  # house
    d.polygon([(32, 90), (105, 40), (178, 90)], fill=(120, 40, 30))  # roof
    d.rectangle([92, 150, 118, 198], fill=(90, 60, 40))  # door
    d.rounded_rectangle([270, 200, 380, 240], 12, fill=v["car"])  # car body
    d.ellipse([284, 228, 314, 258], fill=(20, 20, 20))
    d.ellipse([338, 228, 368, 258], fill=(20, 20, 20))
    d.ellipse([400, 24, 456, 80], fill=(250, 210, 40))  # sun


def park(d: ImageDraw.ImageDraw, v: dict) -> None:
    _sky_ground(d, (170, 210, 250), (70, 150, 60))
    d.rectangle([75, 130, 97, 215], fill=(110, 70, 40))  # trunk
    d.ellipse([30, 50, 142, 150], fill=(30, 120, 40))  # crown
    d.rectangle([200, 225, 420, 238], fill=v["bench"])  # bench seat
    d.rectangle([210, 238, 220, 262], fill=(60, 40, 20))
    d.rectangle([400, 238, 410, 262], fill=(60, 40, 20))
    if v["ball"]:
        d.ellipse([330, 270, 366, 306], fill=(240, 240, 240))  # a ball added in the edited copy
        d.arc([330, 270, 366, 306], 200, 340, fill=(200, 30, 30), width=4)


def kitchen(d: ImageDraw.ImageDraw, v: dict) -> None:
    d.rectangle([0, 0, SIZE[0], SIZE[1]], fill=(235, 225, 205))
    d.rectangle([0, 205, SIZE[0], SIZE[1]], fill=(160, 120, 80))  # table
    d.ellipse([40, 170, 150, 226], fill=(245, 245, 245))  # plate
    d.ellipse([72, 176, 120, 216], fill=v["fruit"])  # orange -> green apple
    x = v["cup_x"]
    d.rectangle([x, 130, x + 44, 212], fill=(40, 90, 200))  # cup, moved in the edited copy
    d.rectangle([x + 44, 150, x + 60, 190], outline=(40, 90, 200), width=5)


def shapes(d: ImageDraw.ImageDraw, v: dict) -> None:
    d.rectangle([0, 0, SIZE[0], SIZE[1]], fill=(240, 240, 235))
    d.rectangle([40, 40, 120, 110], fill=(220, 40, 40))
    if v["triangle"]:
        d.polygon([(250, 60), (210, 140), (290, 140)], fill=(40, 160, 60))
    else:
        d.ellipse([212, 62, 288, 138], fill=(40, 160, 60))  # triangle replaced by a circle
    d.ellipse([360, 200, 440, 280], fill=(40, 80, 220))
    d.rectangle([80, 210, 180, 260], fill=(230, 200, 40))


# name -> (draw, original values, edited values, boxes in cxcywh for the table or None)
SCENES: dict[str, tuple[Draw, dict, dict, list[list[float]] | None]] = {
    "street": (
        street,
        {"car": (220, 30, 30)},
        {"car": (30, 90, 220)},
        [[325.0, 229.0, 118.0, 62.0], [428.0, 52.0, 60.0, 60.0]],  # the recoloured car; the unchanged sun
    ),
    "park": (park, {"bench": (140, 90, 50), "ball": False}, {"bench": (140, 90, 50), "ball": True}, None),
    "kitchen": (
        kitchen,
        {"fruit": (230, 120, 40), "cup_x": 300},
        {"fruit": (120, 200, 60), "cup_x": 380},
        None,
    ),
    "shapes": (shapes, {"triangle": True}, {"triangle": False}, None),
}


def render(draw: Draw, values: dict, seed: int) -> Image.Image:
    image = Image.new("RGB", SIZE)
    draw(ImageDraw.Draw(image), values)
    return _texture(image, seed)


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (name, (draw, original, edited, boxes)) in enumerate(SCENES.items()):
        first, second = ROOT / f"{name}_1.jpg", ROOT / f"{name}_2.jpg"
        render(draw, original, seed=2 * index).save(first, quality=QUALITY)
        render(draw, edited, seed=2 * index + 1).save(second, quality=QUALITY)
        row = {
            "id": name,
            "image_path1": f"./data/imgdiff/{first.name}",
            "image_path2": f"./data/imgdiff/{second.name}",
        }
        if boxes is not None:
            row["bboxes"] = boxes
        rows.append(row)
    table = ROOT / "imgdiff_demo.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    for path in sorted(ROOT.iterdir()):
        print(f"{path.stat().st_size:>7} {path}")


if __name__ == "__main__":
    main()
