"""Render one synthetic scene: textured background, textured shapes, occlusion, noise, blur.

Everything random comes from one `numpy.random.Generator` per image, seeded from
(dataset seed, image index), so an image never depends on the images generated before it and
the dataset is the same whether images are generated in one process or in many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import CLASS_NAMES, SIZE_RANGES, draw_shape

__all__ = ["Instance", "SceneConfig", "render_scene"]


@dataclass(frozen=True)
class SceneConfig:
    """Scene parameters. All of them enter the dataset cache key.

    Attributes:
        image_size: side of the square image in pixels.
        min_instances: fewest annotated instances per image (at least 1).
        max_instances: most shapes drawn per image (before occlusion culling).
        min_visible_area: drop a shape whose visible area (pixels, at 128 px images; scaled
            with the image area) is below this.
        min_visible_fraction: drop a shape when less than this fraction of it is visible.
        cluster_prob: chance that a shape is placed next to an earlier one, so occlusion is
            common rather than accidental.
    """

    image_size: int = 128
    min_instances: int = 1
    max_instances: int = 6
    min_visible_area: float = 20.0
    min_visible_fraction: float = 0.25
    cluster_prob: float = 0.5


@dataclass
class Instance:
    """One annotated instance: its 0-based class index and its visible (unoccluded) mask."""

    category: int
    mask: np.ndarray


def _smooth_noise(rng, h, w, cells, channels):
    """Low-frequency noise in [-1, 1]: a coarse random grid bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, channels))
    ys = np.linspace(0.0, cells, h)
    xs = np.linspace(0.0, cells, w)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _grating(rng, yy, xx, min_period, max_period):
    theta = rng.uniform(0.0, math.pi)
    period = rng.uniform(min_period, max_period)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    return np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2.0 * math.pi / period) + phase)


def _texture(rng, yy, xx, size):
    """A zero-mean (H, W, 1) pattern: stripes, checks, blotches or a gradient, at random."""
    kind = rng.integers(4)
    if kind == 0:
        return _grating(rng, yy, xx, 3.0, max(4.0, size / 2.0))[..., None]
    if kind == 1:
        a = _grating(rng, yy, xx, 4.0, max(5.0, size / 1.5))
        b = _grating(rng, yy, xx, 4.0, max(5.0, size / 1.5))
        return np.sign(a * b)[..., None]
    if kind == 2:
        return _smooth_noise(rng, *yy.shape, int(rng.integers(6, 20)), 1)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    return ((ramp - ramp.mean()) / max(size, 1.0))[..., None]


def _background(rng, h, w, yy, xx):
    base = rng.uniform(30.0, 225.0, size=3)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    img = img + rng.uniform(15.0, 45.0) * _smooth_noise(rng, h, w, int(rng.integers(2, 6)), 3)
    for _ in range(int(rng.integers(1, 3))):
        amp = rng.uniform(5.0, 25.0, size=3)
        img = img + amp * _grating(rng, yy, xx, 4.0, 40.0)[..., None]
    return img, base


def _object_colour(rng, avoid):
    """A fill colour at least ~60 levels from the background's mean colour, else the best of 20.

    Colours are drawn independently of the class, so colour alone never identifies it.
    """
    best, best_d = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0.0, 255.0, size=3)
        d = float(np.linalg.norm(colour - avoid))
        if d > best_d:
            best, best_d = colour, d
        if d >= 60.0:
            break
    return best


def _clutter(rng, img, h, w):
    """Unannotated thin strokes blended into the background: edges that belong to no object."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(0, 4))):
        pts = rng.uniform(0, [w, h], size=(int(rng.integers(2, 4)), 2))
        draw.line(pts.ravel().tolist(), fill=255, width=int(rng.integers(1, 3)))
    alpha = np.asarray(layer, dtype=np.float32)[..., None] * (rng.uniform(0.2, 0.5) / 255.0)
    return img * (1 - alpha) + rng.uniform(0.0, 255.0, size=3) * alpha


def _draw_shapes(rng, cfg: SceneConfig):
    """Sample and rasterize the shapes, bottom first, as (category, full mask) pairs."""
    s = cfg.image_size
    count = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    shapes, placed = [], []
    for _ in range(count):
        category = int(rng.integers(len(CLASS_NAMES)))
        lo, hi = SIZE_RANGES[CLASS_NAMES[category]]
        size = s * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if placed and rng.random() < cfg.cluster_prob:
            # Next to an earlier shape, so that one of the two covers part of the other.
            cx, cy, other = placed[int(rng.integers(len(placed)))]
            dist = rng.uniform(0.25, 0.75) * (size + other) / 2.0
            theta = rng.uniform(0.0, 2.0 * math.pi)
            cx, cy = cx + dist * math.cos(theta), cy + dist * math.sin(theta)
        else:
            cx, cy = rng.uniform(0.0, s, size=2)
        # Keep centres inside the image so at most about half a shape is cut by the border.
        center = (float(np.clip(cx, 0.05 * s, 0.95 * s)), float(np.clip(cy, 0.05 * s, 0.95 * s)))
        angle = rng.uniform(0.0, 2.0 * math.pi)
        mask = draw_shape(CLASS_NAMES[category], rng, size, angle, center, (s, s))
        placed.append((center[0], center[1], size))
        shapes.append((category, mask))
    return shapes


def _resolve_occlusion(shapes, cfg: SceneConfig):
    """Visible masks, top shape first; shapes too hidden to annotate are dropped entirely.

    A dropped shape is not drawn at all (rather than drawn but unannotated), so every visible
    object in the image has a label. Dropping a shape only uncovers shapes below it, so walking
    top-down and deciding each one against the shapes kept above it is consistent.
    """
    min_area = cfg.min_visible_area * (cfg.image_size / 128.0) ** 2
    covered = np.zeros((cfg.image_size, cfg.image_size), dtype=bool)
    kept = []
    for category, full in reversed(shapes):
        full_area = int(full.sum())
        if full_area == 0:
            continue
        visible = full & ~covered
        area = int(visible.sum())
        if area < min_area or area < cfg.min_visible_fraction * full_area:
            continue
        covered |= full
        kept.append(Instance(category, visible))
    kept.reverse()
    return kept


def render_scene(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, list[Instance]]:
    """Render one image and its instances.

    Args:
        rng: the image's own generator (see the module docstring).
        cfg: scene parameters.

    Returns:
        ``(image, instances)``: an (H, W, 3) uint8 RGB image and its visible instances, bottom
        first, with pairwise-disjoint masks. There are at least ``cfg.min_instances`` of them.
    """
    s = cfg.image_size
    for _ in range(1000):
        instances = _resolve_occlusion(_draw_shapes(rng, cfg), cfg)
        if len(instances) >= cfg.min_instances:
            break
    else:
        raise ValueError(f"cannot fit {cfg.min_instances} visible instances; lower min_instances")
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img, bg_colour = _background(rng, s, s, yy, xx)
    img = _clutter(rng, img, s, s)
    for inst in instances:
        size = math.sqrt(float(inst.mask.sum()))
        colour = _object_colour(rng, bg_colour)
        fill = colour + rng.uniform(10.0, 45.0) * _texture(rng, yy, xx, size)
        img[inst.mask] = fill[inst.mask]
    img = img + rng.normal(0.0, rng.uniform(2.0, 8.0), size=img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    # Soft edges: the exact boundary pixel is then ambiguous in the image, as in real photos.
    radius = rng.uniform(0.0, 0.9)
    if radius > 0.3:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(out), instances
