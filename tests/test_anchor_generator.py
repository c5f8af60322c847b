"""The anchors of the peer configs: maskrcnn-benchmark's rounded, offset anchors reproduced
exactly, and mmdetection's equal to Detectron2's (the current configs and the mmdet ones)."""

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import build_anchor_generator
from peer_checkpoints import OFFICIAL_CELL_ANCHORS

import ms_rcnn

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "COCO-InstanceSegmentation"
STRIDES = (4, 8, 16, 32, 64)


def anchor_generator(config_name, **overrides):
    cfg = get_cfg()
    ms_rcnn.add_ms_rcnn_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config_name))
    for key, value in overrides.items():
        setattr(cfg.MODEL.ANCHOR_GENERATOR, key, value)
    return build_anchor_generator(cfg, [ShapeSpec(channels=8, stride=s) for s in STRIDES])


def cell_anchors(generator):
    return [b for _, b in generator.cell_anchors.named_buffers()]


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("arch", ["ms_rcnn", "mask_rcnn"])
def test_official_cell_anchors_are_the_listed_ones_plus_one_pixel(arch, depth):
    """Detectron2's box [x1, x2) covers what maskrcnn-benchmark's inclusive [x1, x2] does."""
    generator = anchor_generator(f"{arch}_R_{depth}_FPN_1x_maskrcnn_benchmark.yaml")
    assert type(generator).__name__ == "MaskrcnnBenchmarkAnchorGenerator"
    for level, (ours, listed) in enumerate(zip(cell_anchors(generator), OFFICIAL_CELL_ANCHORS)):
        expected = torch.tensor(listed, dtype=torch.float32) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert torch.equal(ours, expected), (level, ours.tolist())


def test_official_anchors_on_the_grid_are_shifted_by_whole_strides():
    """Anchor (y, x, a) of a level = cell anchor a + (x, y) * stride, row-major, anchors fastest:
    the order of the RPN head's outputs, checked position by position."""
    generator = anchor_generator("ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml")
    sizes = [(3, 5), (2, 4), (2, 3), (1, 2), (1, 1)]
    features = [torch.zeros(1, 8, h, w) for h, w in sizes]
    grids = generator(features)
    for level, ((h, w), boxes) in enumerate(zip(sizes, grids)):
        stride = STRIDES[level]
        expected = []
        for y in range(h):
            for x in range(w):
                for x1, y1, x2, y2 in OFFICIAL_CELL_ANCHORS[level]:
                    sx, sy = x * stride, y * stride
                    expected.append([x1 + sx, y1 + sy, x2 + 1 + sx, y2 + 1 + sy])
        assert torch.equal(boxes.tensor, torch.tensor(expected, dtype=torch.float32)), level


def test_official_anchor_centres_and_sizes():
    """Centre k * stride + stride / 2, and the listed effective sizes (48x24 at stride 4...)."""
    generator = anchor_generator("ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml")
    sizes = {4: [(48, 24), (32, 32), (24, 48)], 64: [(728, 368), (512, 512), (360, 720)]}
    for stride, cells in zip(STRIDES, cell_anchors(generator)):
        centres = (cells[:, :2] + cells[:, 2:]) / 2
        assert torch.equal(centres, torch.full_like(centres, stride / 2))
        if stride in sizes:
            wh = (cells[:, 2:] - cells[:, :2]).tolist()
            assert [tuple(map(int, s)) for s in wh] == sizes[stride]


def mmdet_cell_anchors(stride, scale=8, ratios=(0.5, 1.0, 2.0)):
    """mmdetection v2's AnchorGenerator for one level, from its definition: base size = stride,
    h_ratio = sqrt(r), w_ratio = 1 / h_ratio, no rounding, centred on 0 (center_offset 0)."""
    boxes = []
    for r in ratios:
        h_ratio = math.sqrt(r)
        w = stride * (1 / h_ratio) * scale
        h = stride * h_ratio * scale
        boxes.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(boxes)


@pytest.mark.parametrize(
    "config",
    [
        "ms_rcnn_R_50_FPN_1x_mmdet_caffe.yaml",
        "mask_rcnn_R_101_FPN_1x_mmdet_caffe.yaml",
        "ms_rcnn_R_50_FPN_1x.yaml",  # the current configs: the same anchors
        "mask_rcnn_R_50_FPN_1x.yaml",
    ],
)
def test_mmdet_anchors_equal_detectron2s(config):
    generator = anchor_generator(config)
    assert type(generator).__name__ == "DefaultAnchorGenerator" and generator.offset == 0.0
    for stride, ours in zip(STRIDES, cell_anchors(generator)):
        assert torch.allclose(ours, mmdet_cell_anchors(stride), atol=1e-4), stride
    # mmdetection's grid: shifts arange(W) * stride, no offset, anchors fastest.
    boxes = generator([torch.zeros(1, 8, 2, 3)] * 5)[0].tensor
    shifts = torch.tensor([[x * 4.0, y * 4.0] * 2 for y in range(2) for x in range(3)])
    expected = (shifts[:, None, :] + mmdet_cell_anchors(4)[None]).reshape(-1, 4)
    assert torch.allclose(boxes, expected, atol=1e-4)


def test_official_generator_refuses_a_half_stride_offset():
    with pytest.raises(ValueError, match=r"MODEL.ANCHOR_GENERATOR.OFFSET 0.0 \(got 0.5\)"):
        anchor_generator("ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml", OFFSET=0.5)


def official_decode(anchors, deltas):
    """maskrcnn-benchmark's box decoding from its definition, in its inclusive ("+1") frame:
    width x2 - x1 + 1, centre x1 + w / 2, and x2 = centre + w / 2 - 1 on the way back."""
    w = anchors[:, 2] - anchors[:, 0] + 1
    h = anchors[:, 3] - anchors[:, 1] + 1
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    dx, dy, dw, dh = deltas.unbind(1)
    pcx, pcy, pw, ph = cx + dx * w, cy + dy * h, w * dw.exp(), h * dh.exp()
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw - 1, pcy + 0.5 * ph - 1], 1)


def test_rpn_proposals_from_converted_weights_are_the_official_ones_plus_one_pixel():
    """The same RPN deltas on our anchors decode to the official proposals in Detectron2's frame
    (x2 + 1): anchors, not only their cell shapes, line up with what the weights were trained on."""
    from detectron2.modeling.box_regression import Box2BoxTransform

    generator = anchor_generator("ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml")
    ours = generator([torch.zeros(1, 8, 3, 4)] * 5)
    g = torch.Generator().manual_seed(0)
    for level, boxes in enumerate(ours):
        official_anchors = torch.tensor(OFFICIAL_CELL_ANCHORS[level], dtype=torch.float64)
        shifts = torch.tensor(
            [[x, y, x, y] for y in range(3) for x in range(4)], dtype=torch.float64
        )
        official_anchors = (shifts[:, None] * STRIDES[level] + official_anchors[None]).reshape(
            -1, 4
        )
        deltas = torch.randn(len(official_anchors), 4, generator=g, dtype=torch.float64) * 0.5
        decoded = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)).apply_deltas(
            deltas, boxes.tensor.double()
        )
        expected = official_decode(official_anchors, deltas) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        # Detectron2 decodes in float32: ~1e-5 px of rounding, against the 1 px being checked.
        torch.testing.assert_close(decoded, expected.to(decoded.dtype), rtol=0, atol=1e-3)
