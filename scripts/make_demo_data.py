"""Regenerate the demo images and table shipped in data/ (synthetic scenes drawn with Pillow).

    python scripts/make_demo_data.py

The images are drawn, not photographed, so the project may ship them; the boxes in the
table are the drawn objects' boxes in the seed's pixel ``[x, y, w, h]`` format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1] / "data" / "image_region_caption"


def _sky_and_ground(draw: ImageDraw.ImageDraw, size: tuple[int, int], sky: tuple, ground: tuple) -> None:
    w, h = size
    draw.rectangle([0, 0, w, int(h * 0.62)], fill=sky)
    draw.rectangle([0, int(h * 0.62), w, h], fill=ground)


def street_scene() -> tuple[Image.Image, list[list[int]]]:
    img = Image.new("RGB", (640, 420))
    d = ImageDraw.Draw(img)
    _sky_and_ground(d, img.size, (135, 190, 235), (90, 90, 95))
    d.rectangle([60, 120, 240, 260], fill=(200, 80, 60))  # house
    d.polygon([(50, 120), (150, 50), (250, 120)], fill=(120, 40, 30))  # roof
    d.rectangle([130, 190, 170, 260], fill=(90, 60, 40))  # door
    d.rounded_rectangle([330, 250, 540, 320], 20, fill=(220, 30, 30))  # car body
    d.ellipse([355, 300, 405, 350], fill=(20, 20, 20))
    d.ellipse([465, 300, 515, 350], fill=(20, 20, 20))
    d.ellipse([520, 30, 600, 110], fill=(250, 210, 40))  # sun
    return img, [[50, 50, 200, 210], [330, 250, 210, 100], [520, 30, 80, 80]]


def park_scene() -> tuple[Image.Image, list[list[int]]]:
    img = Image.new("RGB", (600, 400))
    d = ImageDraw.Draw(img)
    _sky_and_ground(d, img.size, (170, 210, 250), (70, 150, 60))
    d.rectangle([95, 170, 125, 300], fill=(110, 70, 40))  # trunk
    d.ellipse([40, 60, 180, 200], fill=(30, 120, 40))  # crown
    d.ellipse([330, 260, 430, 330], fill=(150, 100, 60))  # dog body
    d.ellipse([410, 235, 460, 285], fill=(150, 100, 60))  # dog head
    d.rectangle([250, 300, 560, 320], fill=(140, 90, 50))  # bench seat
    return img, [[40, 60, 140, 240], [330, 235, 130, 95]]


def kitchen_scene() -> tuple[Image.Image, list[list[int]]]:
    img = Image.new("RGB", (512, 384), (235, 225, 205))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 250, 512, 384], fill=(160, 120, 80))  # table
    d.ellipse([60, 190, 200, 270], fill=(245, 245, 245))  # plate
    d.ellipse([95, 205, 165, 255], fill=(230, 120, 40))  # orange
    d.rectangle([300, 150, 360, 260], fill=(40, 90, 200))  # cup
    d.rectangle([360, 180, 380, 230], outline=(40, 90, 200), width=6)
    return img, [[60, 190, 140, 80], [300, 150, 85, 110]]


def shapes_without_boxes() -> Image.Image:
    rng = random.Random(7)
    img = Image.new("RGB", (560, 400), (245, 245, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([50, 60, 200, 180], fill=(30, 110, 200))
    d.ellipse([300, 80, 480, 240], fill=(220, 60, 60))
    d.polygon([(120, 360), (200, 230), (280, 360)], fill=(40, 160, 80))
    for _ in range(30):  # a little texture so proposals face more than flat colour
        x, y = rng.randrange(560), rng.randrange(400)
        d.point((x, y), fill=(200, 200, 195))
    return img


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (image, boxes) in {
        "street": street_scene(),
        "park": park_scene(),
        "kitchen": kitchen_scene(),
    }.items():
        image.save(ROOT / f"{name}.jpg", quality=88)
        rows.append({"image": f"./data/image_region_caption/{name}.jpg", "bbox": boxes})
    shapes_without_boxes().save(ROOT / "shapes.jpg", quality=88)
    rows.append({"image": "./data/image_region_caption/shapes.jpg"})
    with (ROOT / "image_region_caption_demo.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
