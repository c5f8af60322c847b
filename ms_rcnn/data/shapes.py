"""Shape classes of the synthetic dataset, each rasterized into a full-canvas boolean mask.

The classes are chosen so that their boxes are easy to find and their silhouettes easy to tell
apart, while their masks are easy to get wrong: a ring has a hole that a blobby mask fills in,
a crescent and a star are deeply concave, and a cross or a zigzag stroke is a few pixels wide,
so a mask head that outputs "roughly the box" scores a high box IoU but a low mask IoU.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "SIZE_RANGES", "draw_shape"]

CLASS_NAMES = ("ellipse", "ring", "crescent", "star", "cross", "zigzag")

# Nominal size (the shape's longest extent) as a fraction of the image side, drawn
# log-uniformly. Thin classes start larger so that their strokes stay at least 2 px wide.
SIZE_RANGES = {
    "ellipse": (0.12, 0.45),
    "ring": (0.16, 0.48),
    "crescent": (0.15, 0.48),
    "star": (0.15, 0.48),
    "cross": (0.2, 0.5),
    "zigzag": (0.22, 0.5),
}


def _place(points: np.ndarray, angle: float, cx: float, cy: float) -> list[float]:
    """Rotate local (x, y) points by `angle` and move them to (cx, cy); flat list for PIL."""
    c, s = math.cos(angle), math.sin(angle)
    x = points[:, 0] * c - points[:, 1] * s + cx
    y = points[:, 0] * s + points[:, 1] * c + cy
    return np.stack([x, y], axis=1).ravel().tolist()


def _ellipse_points(a: float, b: float, n: int = 48, dx: float = 0.0, dy: float = 0.0):
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t) + dx, b * np.sin(t) + dy], axis=1)


def _bar(length: float, width: float, offset: float = 0.0, angle: float = 0.0) -> np.ndarray:
    """Corners of a length x width rectangle centred at (offset, 0), rotated by `angle`."""
    hl, hw = length / 2.0, width / 2.0
    pts = np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + np.array([offset, 0.0])


def _ellipse(draw, rng, size, angle, cx, cy):
    a = size / 2.0
    b = a * rng.uniform(0.4, 1.0)
    draw.polygon(_place(_ellipse_points(a, b), angle, cx, cy), fill=1)


def _ring(draw, rng, size, angle, cx, cy):
    a = size / 2.0
    b = a * rng.uniform(0.7, 1.0)
    k = rng.uniform(0.4, 0.72)
    # An off-centre hole gives rings of uneven thickness: thin sides are where masks bleed.
    slack = (1.0 - k) * b * 0.45
    dx, dy = rng.uniform(-slack, slack, size=2)
    draw.polygon(_place(_ellipse_points(a, b), angle, cx, cy), fill=1)
    draw.polygon(_place(_ellipse_points(a * k, b * k, dx=dx, dy=dy), angle, cx, cy), fill=0)


def _crescent(draw, rng, size, angle, cx, cy):
    r = size / 2.0
    r_cut = r * rng.uniform(0.7, 1.0)
    d = r * rng.uniform(0.45, 0.8)
    draw.polygon(_place(_ellipse_points(r, r), angle, cx, cy), fill=1)
    draw.polygon(_place(_ellipse_points(r_cut, r_cut, dx=d), angle, cx, cy), fill=0)


def _star(draw, rng, size, angle, cx, cy):
    spikes = int(rng.integers(4, 8))
    r_out = size / 2.0
    r_in = r_out * rng.uniform(0.3, 0.55)
    radii = np.tile([r_out, r_in], spikes) * rng.uniform(0.88, 1.0, size=2 * spikes)
    t = np.arange(2 * spikes) * (math.pi / spikes)
    pts = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    draw.polygon(_place(pts, angle, cx, cy), fill=1)


def _cross(draw, rng, size, angle, cx, cy):
    width = max(2.0, size * rng.uniform(0.09, 0.17))
    draw.polygon(_place(_bar(size, width), angle, cx, cy), fill=1)
    # The second bar crosses anywhere along the middle half, at roughly a right angle, so the
    # class spans "+", "T"-ish and skewed crosses.
    second = _bar(size * rng.uniform(0.55, 1.0), width, angle=math.pi / 2 + rng.uniform(-0.3, 0.3))
    second[:, 0] += size * rng.uniform(-0.25, 0.25)
    draw.polygon(_place(second, angle, cx, cy), fill=1)


def _zigzag(draw, rng, size, angle, cx, cy):
    segments = int(rng.integers(3, 6))
    amplitude = size * rng.uniform(0.13, 0.28)
    x = np.linspace(-size / 2.0, size / 2.0, segments + 1)
    y = amplitude * (np.where(np.arange(segments + 1) % 2 == 0, 1.0, -1.0))
    y = y * rng.uniform(0.7, 1.0, size=segments + 1)
    width = max(2, int(round(size * rng.uniform(0.07, 0.12))))
    draw.line(_place(np.stack([x, y], axis=1), angle, cx, cy), fill=1, width=width, joint="curve")


_DRAWERS = {
    "ellipse": _ellipse,
    "ring": _ring,
    "crescent": _crescent,
    "star": _star,
    "cross": _cross,
    "zigzag": _zigzag,
}


def draw_shape(
    class_name: str,
    rng: np.random.Generator,
    size: float,
    angle: float,
    center: tuple[float, float],
    canvas_hw: tuple[int, int],
) -> np.ndarray:
    """Rasterize one shape, with shape-specific random parameters drawn from `rng`.

    Args:
        class_name: one of `CLASS_NAMES`.
        rng: source of the shape's own randomness (aspect ratio, hole offset, spikes, ...).
        size: the shape's longest extent in pixels.
        angle: rotation in radians.
        center: (x, y) of the shape's centre in pixels; the shape may extend off the canvas.
        canvas_hw: (height, width) of the mask.

    Returns:
        (H, W) boolean mask of the whole shape as if nothing covered it.
    """
    h, w = canvas_hw
    img = Image.new("L", (w, h), 0)
    _DRAWERS[class_name](ImageDraw.Draw(img), rng, float(size), float(angle), *center)
    return np.asarray(img, dtype=bool)
