"""Binary-mask helpers: COCO RLE, tight boxes, and exact mask -> polygon conversion.

COCO polygons cannot express holes directly: pycocotools rasterizes each polygon with the
even-odd rule and then takes the union of an annotation's polygons. `mask_to_polygons` still
represents any mask exactly. It traces the pixel-corner boundary of every 4-connected component
(so edges lie on integer coordinates, which pycocotools rasterizes without rounding error) and
splices each hole's boundary into its component's outer boundary through a zero-width "keyhole"
bridge, a segment walked once in each direction. Under the even-odd rule the two walks cancel,
so decoding the polygons with pycocotools (as `COCO.annToMask` and Detectron2's
`polygons_to_bitmask` do) gives back the original mask pixel for pixel, and the shoelace area of
each polygon (what Detectron2's `PolygonMasks.area` computes) is the component's pixel count.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_util

__all__ = [
    "encode_rle",
    "mask_bbox",
    "mask_to_polygons",
    "mask_topology",
    "polygons_to_mask",
    "trace_boundaries",
]

# Direction codes of boundary edges: right, down, left, up in image coordinates (y down).
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])


def encode_rle(mask: np.ndarray) -> dict:
    """Encode a binary mask as compressed COCO RLE with a JSON-friendly ``str`` counts field.

    Args:
        mask: (H, W) boolean or 0/1 array.

    Returns:
        ``{"size": [H, W], "counts": str}``.
    """
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Tight XYWH box of the non-zero pixels, in COCO's pixel-corner convention.

    Floats on purpose: Detectron2 transforms boxes and polygons in place with numpy, and an
    integer array there would silently truncate resized coordinates.

    Args:
        mask: (H, W) array with at least one non-zero pixel.

    Returns:
        ``[x, y, w, h]`` where a single pixel at column c, row r is ``[c, r, 1, 1]``.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_bbox of an empty mask")
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def trace_boundaries(mask: np.ndarray) -> list[np.ndarray]:
    """Trace the closed pixel-corner boundaries of a binary mask.

    Foreground is 4-connected (pixels touching only at a corner are separate components) and
    background 8-connected, so every component has exactly one outer loop and one loop per hole.

    Args:
        mask: (H, W) boolean array.

    Returns:
        One (N, 2) integer array of (x, y) corner vertices per loop, collinear vertices removed.
        Outer loops have positive shoelace area in image coordinates, holes negative, and the
        absolute area is the number of enclosed pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    p = np.pad(mask, 1)
    fg = p[1:-1, 1:-1]
    # An edge exists where a foreground pixel borders background; orienting each one clockwise
    # around its pixel (right along the top, down the right side, ...) makes every loop keep
    # the foreground on the same side, so loops close and the signed area tells outer from hole.
    starts = []
    for d, (nbr, ox, oy) in enumerate(
        ((p[:-2, 1:-1], 0, 0), (p[1:-1, 2:], 1, 0), (p[2:, 1:-1], 1, 1), (p[1:-1, :-2], 0, 1))
    ):
        r, c = np.nonzero(fg & ~nbr)
        starts.append(np.stack([c + ox, r + oy, np.full_like(r, d)], axis=1))
    edges = np.concatenate(starts)
    if len(edges) == 0:
        return []
    sx, sy, dirs = edges[:, 0], edges[:, 1], edges[:, 2]
    stride = w + 1
    start_v = sy * stride + sx
    end_v = (sy + _DY[dirs]) * stride + (sx + _DX[dirs])
    out = np.full(((h + 1) * stride, 4), -1, dtype=np.int64)
    out[start_v, dirs] = np.arange(len(edges))
    # At a vertex shared by two diagonal foreground pixels, two loops meet; turning towards the
    # pixel just walked around keeps them apart (4-connected foreground). Elsewhere only one of
    # the three candidates exists.
    nxt = out[end_v, (dirs + 1) % 4]
    nxt = np.where(nxt >= 0, nxt, out[end_v, dirs])
    nxt = np.where(nxt >= 0, nxt, out[end_v, (dirs + 3) % 4])
    nxt_list = nxt.tolist()

    loops = []
    seen = np.zeros(len(edges), dtype=bool)
    for first in range(len(edges)):
        if seen[first]:
            continue
        cycle = [first]
        e = nxt_list[first]
        while e != first:
            cycle.append(e)
            e = nxt_list[e]
        idx = np.array(cycle)
        seen[idx] = True
        corner = dirs[idx] != dirs[np.roll(idx, 1)]
        loops.append(np.stack([sx[idx][corner], sy[idx][corner]], axis=1))
    return loops


def _signed_area(loop: np.ndarray) -> float:
    x, y = loop[:, 0].astype(np.int64), loop[:, 1].astype(np.int64)
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()) / 2.0


def _inside(point: tuple[float, float], loop: np.ndarray) -> bool:
    """Even-odd point-in-polygon; `point` is a pixel centre, so it never lies on an edge."""
    px, py = point
    x0, y0 = loop[:, 0].astype(float), loop[:, 1].astype(float)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    straddles = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(straddles & (px < x_cross)) % 2)


def _pixel_inside(loop: np.ndarray) -> tuple[float, float]:
    """Centre of the foreground pixel on the inner side of a loop's first edge."""
    (x0, y0), (x1, y1) = loop[0], loop[1]
    dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
    # Foreground lies to the right of the walking direction (clockwise in image coordinates).
    return (x0 + 0.5 * dx - 0.5 * dy, y0 + 0.5 * dy + 0.5 * dx)


def _splice(poly: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join `hole` to `poly` by a bridge between their closest vertices, walked both ways."""
    d2 = ((poly[:, None, :] - hole[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
    hole = np.roll(hole, -j, axis=0)
    return np.concatenate([poly[: i + 1], hole, hole[:1], poly[i:]])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Convert a binary mask to COCO polygons that rasterize back to exactly the same mask.

    Args:
        mask: (H, W) boolean array.

    Returns:
        One flat ``[x0, y0, x1, y1, ...]`` list of floats per 4-connected component, with the
        component's holes spliced in through keyhole bridges (see the module docstring).
        Empty list for an empty mask.
    """
    loops = trace_boundaries(mask)
    areas = [_signed_area(loop) for loop in loops]
    outers = [i for i, a in enumerate(areas) if a > 0]
    holes_of: dict[int, list[int]] = {i: [] for i in outers}
    for k, a in enumerate(areas):
        if a > 0:
            continue
        # The hole belongs to the smallest outer loop around a pixel that borders it.
        point = _pixel_inside(loops[k])
        owners = [i for i in outers if _inside(point, loops[i])]
        holes_of[min(owners, key=lambda i: areas[i])].append(k)
    polygons = []
    for i in outers:
        poly = loops[i]
        for k in holes_of[i]:
            poly = _splice(poly, loops[k])
        polygons.append(poly.astype(float).ravel().tolist())
    return polygons


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterize COCO polygons (union of even-odd fills) with pycocotools, as COCO and D2 do."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    return mask_util.decode(rle).astype(bool)


def mask_topology(mask: np.ndarray) -> tuple[int, int]:
    """Count 4-connected foreground components and the holes (enclosed background regions).

    Returns:
        ``(num_components, num_holes)``.
    """
    areas = [_signed_area(loop) for loop in trace_boundaries(mask)]
    return sum(a > 0 for a in areas), sum(a < 0 for a in areas)
