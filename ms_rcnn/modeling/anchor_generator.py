"""maskrcnn-benchmark's anchors, exactly, for weights trained with them (the official MS R-CNN).

maskrcnn-benchmark (and so the official MS R-CNN code) builds each level's cell anchors the
Detectron1 way: start from the inclusive box [0, 0, stride - 1, stride - 1], give each aspect
ratio a width and height *rounded to whole pixels* at that base size, scale them up to the anchor
size, and centre the result on the base box's centre (stride - 1) / 2. Corners are inclusive
("+1" convention: a box [x1, x2] covers x2 - x1 + 1 pixels). Grid shifts start at 0.

Detectron2's DefaultAnchorGenerator cannot express these (its sides are exact, not rounded, and
its centres sit on k * stride + OFFSET * stride), and a shifted or resized anchor silently
changes which proposals the RPN's trained deltas produce. This generator reproduces them in
Detectron2's continuous frame, where the inclusive box [x1, x2] is [x1, x2 + 1]; its grid shifts
are Detectron2's with OFFSET 0.
"""

import math
from typing import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    BufferList,
    DefaultAnchorGenerator,
)

__all__ = ["MaskrcnnBenchmarkAnchorGenerator", "maskrcnn_benchmark_cell_anchors"]


def maskrcnn_benchmark_cell_anchors(
    stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]
) -> torch.Tensor:
    """The cell anchors maskrcnn-benchmark computes for one level, in its inclusive frame.

    Order is ratio-major, then size (maskrcnn-benchmark's order; with one size per level, as in
    FPN, it is simply the ratios' order, which is also Detectron2's). Aspect ratio is h / w.
    Returns a float64 (len(aspect_ratios) * len(sizes), 4) tensor of inclusive x1, y1, x2, y2.
    """
    centre = (stride - 1) / 2.0
    area = float(stride * stride)
    boxes = []
    for ratio in aspect_ratios:
        # Python's round() rounds halves to even, as numpy's round does in the original.
        base_w = round(math.sqrt(area / ratio))
        base_h = round(base_w * ratio)
        for size in sizes:
            scale = size / stride
            w, h = base_w * scale, base_h * scale
            boxes.append(
                [
                    centre - (w - 1) / 2,
                    centre - (h - 1) / 2,
                    centre + (w - 1) / 2,
                    centre + (h - 1) / 2,
                ]
            )
    return torch.tensor(boxes, dtype=torch.float64)


@ANCHOR_GENERATOR_REGISTRY.register()
class MaskrcnnBenchmarkAnchorGenerator(DefaultAnchorGenerator):
    """DefaultAnchorGenerator whose cell anchors are maskrcnn-benchmark's, moved to Detectron2's
    continuous frame (+1 on x2 and y2). Use it with MODEL.ANCHOR_GENERATOR.OFFSET 0.0: the
    original's grid shifts are k * stride, which is what OFFSET 0.0 gives.
    """

    @configurable
    def __init__(self, *, sizes, aspect_ratios, strides, offset=0.0):
        if offset != 0.0:
            raise ValueError(
                f"MaskrcnnBenchmarkAnchorGenerator reproduces maskrcnn-benchmark's anchors, whose "
                f"grid starts at 0: set MODEL.ANCHOR_GENERATOR.OFFSET 0.0 (got {offset}). The "
                "half-stride centre is already in its cell anchors."
            )
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides, offset=offset)

    def _calculate_anchors(self, sizes, aspect_ratios):
        # DefaultAnchorGenerator sets self.strides before calling this; the rounding depends on
        # each level's stride, which generate_cell_anchors is not given.
        cell_anchors = []
        for stride, level_sizes, level_ratios in zip(self.strides, sizes, aspect_ratios):
            inclusive = maskrcnn_benchmark_cell_anchors(stride, level_sizes, level_ratios)
            continuous = inclusive + inclusive.new_tensor([0.0, 0.0, 1.0, 1.0])
            cell_anchors.append(continuous.float())
        return BufferList(cell_anchors)
