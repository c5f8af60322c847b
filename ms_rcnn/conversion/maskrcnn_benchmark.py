"""maskrcnn-benchmark checkpoints (the official MS R-CNN code is a fork of it) to Detectron2.

Names: docs/PUBLISHED_WEIGHTS.md. Layout changes, all of them due to the background class being
index 0 in maskrcnn-benchmark and absent (or last, for the classifier) in Detectron2:

- box classifier: its 81 rows are [background, class 1..80]; Detectron2 wants the background last;
- box regressor: 4 rows per class including the background's (rows 0-3), which Detectron2 lacks;
- mask logits: one channel per class including the background's (channel 0);
- MaskIoU output: one row per class including the background's (row 0, never trained).

FrozenBatchNorm: maskrcnn-benchmark scales by weight / sqrt(running_var), Detectron2 by
weight / sqrt(running_var + 1e-5). The converter stores running_var - 1e-5 so the two are the
same function; this is also what Detectron2 itself ends up with for Caffe2 Detectron weights,
which have no running_var (its FrozenBatchNorm2d starts from running_var = 1 - eps). Without it
each of the 53 layers would scale by 1 - 5e-6, which is negligible but not exact.

The checkpoint's anchor buffers are compared with what MaskrcnnBenchmarkAnchorGenerator
computes and then left out (Detectron2's anchors are not saved). A mismatch is an error, not a
warning: the configs here cannot express other anchors, and the RPN's deltas are only right on
the anchors they were trained for, so evaluating anyway would lose AP without saying why.
"""

import torch

from ..modeling.anchor_generator import maskrcnn_benchmark_cell_anchors
from .common import (
    BN_TENSORS,
    ConversionError,
    Converted,
    Drop,
    Rule,
    apply_rules,
    describe_architecture,
    resnet_rules,
)

__all__ = ["convert_maskrcnn_benchmark", "FROZEN_BN_EPS", "FPN_ANCHOR_STRIDES", "FPN_ANCHOR_SIZES"]

FROZEN_BN_EPS = 1e-5  # Detectron2's FrozenBatchNorm2d default
FPN_ANCHOR_STRIDES = (4, 8, 16, 32, 64)  # maskrcnn-benchmark's FPN defaults
FPN_ANCHOR_SIZES = (32, 64, 128, 256, 512)
FPN_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def _background_first_to_last(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[1:], t[:1]], dim=0)


def _without_background_box(t: torch.Tensor) -> torch.Tensor:
    return t[4:]


def _without_background_row(t: torch.Tensor) -> torch.Tensor:
    return t[1:]


def _check_cell_anchors(name: str, value: torch.Tensor) -> None:
    level = int(name.rsplit(".", 1)[1])
    if level >= len(FPN_ANCHOR_STRIDES):
        raise ConversionError(f"{name}: anchors for a 6th FPN level; the configs here have 5")
    expected = maskrcnn_benchmark_cell_anchors(
        FPN_ANCHOR_STRIDES[level], (FPN_ANCHOR_SIZES[level],), FPN_ASPECT_RATIOS
    )
    if value.shape != expected.shape or not torch.allclose(value.double(), expected, atol=1e-3):
        raise ConversionError(
            f"{name} = {value.tolist()} but MaskrcnnBenchmarkAnchorGenerator computes "
            f"{expected.tolist()} for stride {FPN_ANCHOR_STRIDES[level]}, size "
            f"{FPN_ANCHOR_SIZES[level]}, ratios {FPN_ASPECT_RATIOS}: the checkpoint was trained "
            "with other anchors, which the maskrcnn_benchmark configs do not reproduce"
        )


def _frozen_bn_variance(t: torch.Tensor) -> torch.Tensor:
    if bool((t <= FROZEN_BN_EPS).any()):
        raise ConversionError(
            f"a FrozenBatchNorm running_var holds {float(t.min())} <= {FROZEN_BN_EPS}: "
            "maskrcnn-benchmark would divide by its square root; not a usable checkpoint"
        )
    return t - FROZEN_BN_EPS


def _rules():
    rules = resnet_rules("backbone.body.", "stem.conv1", "stem.bn1")
    # running_var needs the eps change; make every backbone running_var rule carry it.
    rules = [
        Rule(
            r.pattern.replace(BN_TENSORS, "(running_var)"),
            r.target,
            _frozen_bn_variance,
            f"running_var - {FROZEN_BN_EPS} (Detectron2's FrozenBN adds eps)",
        )
        for r in rules
        if BN_TENSORS in r.pattern
    ] + rules
    fpn = r"backbone\.fpn\."
    rpn = r"rpn\.head\."
    box = r"roi_heads\.box\."
    mask = r"roi_heads\.mask\."
    iou = r"roi_heads\.maskiou\."
    wb = r"\.(weight|bias)"
    rules += [
        Rule(
            fpn + r"fpn_inner([1-4])" + wb,
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(
            fpn + r"fpn_layer([1-4])" + wb,
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(rpn + r"conv" + wb, lambda m: f"proposal_generator.rpn_head.conv.{m.group(1)}"),
        Rule(
            rpn + r"cls_logits" + wb,
            lambda m: f"proposal_generator.rpn_head.objectness_logits.{m.group(1)}",
        ),
        Rule(
            rpn + r"bbox_pred" + wb,
            lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m.group(1)}",
        ),
        Rule(
            box + r"feature_extractor\.fc6" + wb, lambda m: f"roi_heads.box_head.fc1.{m.group(1)}"
        ),
        Rule(
            box + r"feature_extractor\.fc7" + wb, lambda m: f"roi_heads.box_head.fc2.{m.group(1)}"
        ),
        Rule(
            box + r"predictor\.cls_score" + wb,
            lambda m: f"roi_heads.box_predictor.cls_score.{m.group(1)}",
            _background_first_to_last,
            "background row 0 moved last",
        ),
        Rule(
            box + r"predictor\.bbox_pred" + wb,
            lambda m: f"roi_heads.box_predictor.bbox_pred.{m.group(1)}",
            _without_background_box,
            "background rows 0-3 dropped",
        ),
        Rule(
            mask + r"feature_extractor\.mask_fcn([1-4])" + wb,
            lambda m: f"roi_heads.mask_head.mask_fcn{m.group(1)}.{m.group(2)}",
        ),
        Rule(
            mask + r"predictor\.conv5_mask" + wb,
            lambda m: f"roi_heads.mask_head.deconv.{m.group(1)}",
        ),
        Rule(
            mask + r"predictor\.mask_fcn_logits" + wb,
            lambda m: f"roi_heads.mask_head.predictor.{m.group(1)}",
            _without_background_row,
            "background channel 0 dropped",
        ),
        Rule(
            iou + r"feature_extractor\.maskiou_fcn([1-4])" + wb,
            lambda m: f"roi_heads.maskiou_head.maskiou_conv{m.group(1)}.{m.group(2)}",
        ),
        Rule(
            iou + r"feature_extractor\.maskiou_fc([12])" + wb,
            lambda m: f"roi_heads.maskiou_head.maskiou_fc{m.group(1)}.{m.group(2)}",
        ),
        Rule(
            iou + r"predictor\.maskiou" + wb,
            lambda m: f"roi_heads.maskiou_head.predictor.{m.group(1)}",
            _without_background_row,
            "background row 0 dropped (never trained)",
        ),
    ]
    return rules


DROPS = [
    Drop(
        r"rpn\.anchor_generator\.cell_anchors\.\d+",
        "anchor buffer, equal to MaskrcnnBenchmarkAnchorGenerator's (checked)",
        _check_cell_anchors,
    ),
    Drop(r".*\.num_batches_tracked", "BatchNorm step counter (FrozenBN has none)"),
]


def convert_maskrcnn_benchmark(state) -> Converted:
    """Convert a maskrcnn-benchmark / official MS R-CNN state dict (no `module.` prefix)."""
    converted = apply_rules(state, _rules(), DROPS, "maskrcnn-benchmark")
    describe_architecture(converted)
    converted.notes.append(
        "evaluate with the config below: maskrcnn-benchmark's pixel mean, rounded anchors, "
        "non-aligned RoIAlign (sampling ratio 2) and truncating resize (INPUT.RESIZE_STYLE); "
        "its '+1' box extents in RoIAlign and its mask "
        "paste are not emulated (docs/PUBLISHED_WEIGHTS.md: expected AP gap)"
    )
    return converted
