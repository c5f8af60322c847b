"""Preview grid of a COCO-format dataset: each image next to its mask overlay (PIL only)."""

from __future__ import annotations

import colorsys
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from .masks import mask_bbox
from .masks import polygons_to_mask as _polys_to_mask

__all__ = ["render_preview"]


def _decode(segm, h, w):
    if isinstance(segm, list):
        return _polys_to_mask(segm, h, w)
    from pycocotools import mask as mask_util

    if isinstance(segm.get("counts"), list):  # uncompressed RLE, as COCO's crowd regions
        segm = mask_util.frPyObjects(segm, h, w)
    return mask_util.decode(segm).astype(bool)


def _palette(n):
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0))
        for i in range(n)
    ]


def render_preview(
    json_file: str,
    image_root: str,
    out_file: str,
    num_images: int = 12,
    cols: int = 4,
    scale: int = 2,
) -> str:
    """Write a PNG grid of the first images of a dataset with coloured instance overlays.

    Each cell shows the image and, to its right, the same image with every instance's mask
    tinted in its own colour, its tight box, and its class name.

    Args:
        json_file: COCO annotations (RLE or polygon segmentations).
        image_root: directory of the images named in `json_file`.
        out_file: where to write the PNG.
        num_images: how many images to show.
        cols: cells per row.
        scale: nearest-neighbour upscaling factor, so thin strokes and holes stay visible.

    Returns:
        `out_file`.
    """
    from detectron2.data.detection_utils import read_image

    with open(json_file) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    cells = []
    for info in data["images"][:num_images]:
        h, w = info["height"], info["width"]
        path = os.path.join(image_root, info["file_name"])
        # Upright (EXIF orientation applied) and RGB, as Detectron2's mappers read it.
        img = read_image(path, format="RGB")
        if img.shape[:2] != (h, w):
            raise ValueError(
                f"{path} is {img.shape[1]}x{img.shape[0]} (upright), but {json_file} says "
                f"{w}x{h} (width x height)"
            )
        overlay = img.astype(np.float32)
        anns = by_image.get(info["id"], [])
        colours = _palette(len(anns))
        for ann, colour in zip(anns, colours):
            m = _decode(ann["segmentation"], h, w)
            overlay[m] = 0.45 * overlay[m] + 0.55 * np.array(colour, dtype=np.float32)
        pair = np.concatenate([img, overlay.astype(np.uint8)], axis=1)
        cell = Image.fromarray(pair).resize((2 * w * scale, h * scale), Image.NEAREST)
        draw = ImageDraw.Draw(cell)
        for ann, colour in zip(anns, colours):
            x, y, bw, bh = mask_bbox(_decode(ann["segmentation"], h, w))
            x0, y0 = (x + w) * scale, y * scale
            draw.rectangle([x0, y0, x0 + bw * scale - 1, y0 + bh * scale - 1], outline=colour)
            draw.text((x0 + 2, y0 + 1), names[ann["category_id"]], fill=colour)
        cells.append(cell)
    if not cells:
        raise ValueError(f"{json_file} has no images")
    cw, ch = cells[0].size
    rows = (len(cells) + cols - 1) // cols
    pad = 4
    grid = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ch + pad) + pad), (255, 255, 255))
    for i, cell in enumerate(cells):
        grid.paste(cell, (pad + (i % cols) * (cw + pad), pad + (i // cols) * (ch + pad)))
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    grid.save(out_file)
    return out_file
