"""Detectron2 features that v0.6 breaks on today's libraries, fixed by `make setup`.

Each test fails on a fallback built without the matching part of scripts/install_detectron2.py:
OpenCV and shapely installed beside Detectron2, fvcore's shapely-2 polygon crop, MapDataset's
`random.sample` on Python >= 3.11, and LR-scheduler state for torch >= 2 schedulers.
"""

import itertools

import numpy as np
import torch
from matplotlib.path import Path

# --- OpenCV: Visualizer and PointRend ---


def test_visualizer_draws_a_mask_with_a_hole():
    from detectron2.utils.visualizer import Visualizer

    image = np.zeros((60, 60, 3), dtype=np.uint8)
    mask = np.zeros((60, 60), dtype=np.uint8)
    mask[10:50, 10:50] = 1
    mask[22:38, 22:38] = 0  # the hole: a 16 x 16 square in a 40 x 40 ring
    drawn = Visualizer(image, scale=1.0).draw_binary_mask(mask, color=(1.0, 0.0, 0.0), alpha=0.8)
    out = drawn.get_image()
    assert out.shape == (60, 60, 3)
    # Away from the edges (where antialiasing blends), the hole keeps the black image and the
    # ring is red at 80% opacity over black: about 0.8 * 255 in the red channel only.
    hole = out[25:35, 25:35].astype(int)
    ring = np.concatenate([out[12:20, 12:48], out[40:48, 12:48]]).astype(int)
    outside = out[0:7, :].astype(int)
    assert hole.max() <= 10, hole.max()
    assert outside.max() <= 10, outside.max()
    assert np.all(np.abs(ring[..., 0] - 204) <= 12), (ring[..., 0].min(), ring[..., 0].max())
    assert ring[..., 1:].max() <= 10


def test_point_rend_project_imports_and_adds_its_config():
    from detectron2.config import get_cfg
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
    from detectron2.projects import point_rend

    cfg = get_cfg()
    point_rend.add_pointrend_config(cfg)
    assert cfg.MODEL.POINT_HEAD.NUM_CLASSES > 0
    assert ROI_MASK_HEAD_REGISTRY.get("PointRendMaskHead") is point_rend.PointRendMaskHead


# --- shapely: polygon crop ---


def vertex_set(polygon):
    return {tuple(np.round(p, 6)) for p in np.asarray(polygon).reshape(-1, 2)}


def test_crop_splits_a_concave_polygon_in_two():
    from detectron2.data import transforms as T

    # A U: two 2-wide arms rising from a 6 x 2 base. Cropping y in [3, 6] keeps the upper parts
    # of the arms only, two separate rectangles (a multi-part intersection).
    u_shape = np.array([[0, 0], [6, 0], [6, 6], [4, 6], [4, 2], [2, 2], [2, 6], [0, 6]], float)
    parts = T.CropTransform(0, 3, 6, 3).apply_polygons([u_shape])
    # In crop coordinates (y shifted by 3): x in [0, 2] and [4, 6], y in [0, 3].
    expected = [{(0, 0), (2, 0), (2, 3), (0, 3)}, {(4, 0), (6, 0), (6, 3), (4, 3)}]
    got = sorted((vertex_set(p) for p in parts), key=lambda s: min(s))
    assert got == expected


def rasterize(polygons, height, width):
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    centres = np.stack([xs.ravel(), ys.ravel()], 1)
    out = np.zeros(height * width, dtype=bool)
    for poly in polygons:
        out |= Path(np.asarray(poly).reshape(-1, 2)).contains_points(centres)
    return out.reshape(height, width)


def test_crop_of_a_star_matches_cropping_its_raster():
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    # A 7-pointed star (concave) whose lower strip holds two of its points, separate pieces after
    # the crop; through the same call the dataset mapper makes for a polygon annotation.
    angles = np.arange(14) * np.pi / 7
    radii = np.where(np.arange(14) % 2 == 0, 30.0, 11.0)
    star = np.stack([40 + radii * np.cos(angles), 40 + radii * np.sin(angles)], 1)
    anno = {"bbox": [10, 10, 70, 70], "bbox_mode": 0, "segmentation": [star.ravel().tolist()]}
    x0, y0, w, h = 5, 55, 70, 25
    crop = T.TransformList([T.CropTransform(x0, y0, w, h)])
    pieces = utils.transform_instance_annotations(anno, crop, (h, w))["segmentation"]
    assert len(pieces) == 2
    expected = rasterize([star], 80, 80)[y0 : y0 + h, x0 : x0 + w]
    got = rasterize(pieces, h, w)
    # Only pixel centres lying on the crop border or an edge could go either way.
    assert (got != expected).sum() <= 2, (got != expected).sum()
    assert expected.sum() > 30


# --- MapDataset on Python >= 3.11 ---


def test_map_dataset_retries_another_item_when_the_mapper_returns_none():
    from detectron2.data.common import MapDataset

    seen = []

    def mapper(item):
        seen.append(item)
        if item == 2 and seen.count(2) == 1:
            return None  # skip item 2 the first time only
        return item * 10

    dataset = MapDataset(list(range(5)), mapper)
    first = dataset[2]
    assert first in {0, 10, 30, 40}  # another item, mapped
    assert seen[0] == 2 and len(seen) == 2
    assert dataset[2] == 20  # the mapper accepts it now


# --- hooks.LRScheduler with a torch scheduler ---


class ConstantLossModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, batch):
        return {"loss_square": (self.weight**2).sum()}


def run_training(out_dir, start_iter, max_iter, resume):
    """SimpleTrainer with a torch StepLR through Detectron2's hooks and checkpointer.

    Returns the learning rate after each step and the scheduler's step count at the start.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import SimpleTrainer, hooks

    model = ConstantLossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    trainer = SimpleTrainer(model, itertools.repeat([{}]), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out_dir), optimizer=optimizer, trainer=trainer)
    lrs = []
    trainer.register_hooks(
        [
            hooks.LRScheduler(optimizer, scheduler),
            hooks.PeriodicCheckpointer(checkpointer, period=3, max_iter=max_iter),
            hooks.CallbackHook(after_step=lambda t: lrs.append(optimizer.param_groups[0]["lr"])),
        ]
    )
    if resume:
        checkpoint = checkpointer.resume_or_load("", resume=True)
        start_iter = checkpoint["iteration"] + 1
    restored_epoch = scheduler.last_epoch
    trainer.train(start_iter, max_iter)
    return lrs, restored_epoch


def test_resume_restores_a_torch_step_lr_schedule(tmp_path):
    # Uninterrupted, StepLR(step_size=2, gamma=0.1) gives lr 0.1 * 0.1 ** ((k + 1) // 2) after
    # step k: 0.1, 0.01, 0.01, 0.001, 0.001, 1e-4.
    expected = [0.1 * 0.1 ** ((k + 1) // 2) for k in range(6)]
    first, _ = run_training(tmp_path, 0, 3, resume=False)  # checkpoint after iteration 2
    assert (tmp_path / "model_0000002.pth").exists()
    resumed, restored_epoch = run_training(tmp_path, 0, 6, resume=True)
    assert restored_epoch == 3  # three scheduler steps taken before the checkpoint
    np.testing.assert_allclose(first + resumed, expected, rtol=1e-9)
