"""Synthetic checkpoints in the exact tensor names and shapes of each peer, with no download.

Written from the name/shape table of the shared CHECKPOINTS.md fact sheet (docs/
PUBLISHED_WEIGHTS.md summarizes it), independently of ms_rcnn.conversion: each tensor is first
drawn in Detectron2's layout (the intended result), then put into the peer's layout by hand
(background row first, extra background rows and channels, FrozenBN without eps, BatchNorm
counters, anchor buffers). A converter is right when it gives back the Detectron2 tensors.
"""

import functools
from typing import Dict, Tuple

import torch

BN = ("weight", "bias", "running_mean", "running_var")
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EPS = 1e-5

# maskrcnn-benchmark's cell anchors per FPN level (inclusive corners), as listed in the fact
# sheet; they are in every official checkpoint as rpn.anchor_generator.cell_anchors.{0..4}.
OFFICIAL_CELL_ANCHORS = [
    [[-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]],
    [[-40, -20, 47, 27], [-28, -28, 35, 35], [-20, -44, 27, 51]],
    [[-84, -40, 99, 55], [-56, -56, 71, 71], [-36, -80, 51, 95]],
    [[-164, -72, 195, 103], [-112, -112, 143, 143], [-76, -168, 107, 199]],
    [[-332, -152, 395, 215], [-224, -224, 287, 287], [-148, -328, 211, 391]],
]


class _Builder:
    def __init__(self, source: str, seed: int):
        self.source = source
        self.g = torch.Generator().manual_seed(seed)
        self.peer: Dict[str, torch.Tensor] = {}
        self.d2: Dict[str, torch.Tensor] = {}

    def rand(self, *shape):
        return torch.randn(*shape, generator=self.g) * 0.01

    def same(self, peer_name, d2_name, *shape):
        self.peer[peer_name] = self.d2[d2_name] = self.rand(*shape)

    def conv(self, peer, d2, *shape, bias=True):
        self.same(f"{peer}.weight", f"{d2}.weight", *shape)
        if bias:
            self.same(f"{peer}.bias", f"{d2}.bias", shape[0])

    def bn(self, peer, d2, channels):
        for name in BN:
            value = self.rand(channels)
            if name == "running_var":
                value = torch.rand(channels, generator=self.g) + 0.5
            if name == "weight":
                value = value + 1.0
            self.peer[f"{peer}.{name}"] = value
            # maskrcnn-benchmark's FrozenBN has no eps: Detectron2 must get var - eps.
            shift = EPS if (name == "running_var" and self.source == "official") else 0.0
            self.d2[f"{d2}.{name}"] = value - shift
        if self.source == "mmdet":
            self.peer[f"{peer}.num_batches_tracked"] = torch.tensor(12345)


def _resnet(b: _Builder, depth: int):
    official = b.source == "official"
    body = "backbone.body." if official else "backbone."
    b.conv(
        f"{body}{'stem.' if official else ''}conv1",
        "backbone.bottom_up.stem.conv1",
        64,
        3,
        7,
        7,
        bias=False,
    )
    b.bn(f"{body}{'stem.' if official else ''}bn1", "backbone.bottom_up.stem.conv1.norm", 64)
    in_ch = 64
    for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
        mid, out = 64 * 2**stage, 256 * 2**stage
        for block in range(blocks):
            peer = f"{body}layer{stage + 1}.{block}"
            d2 = f"backbone.bottom_up.res{stage + 2}.{block}"
            shapes = [(mid, in_ch, 1, 1), (mid, mid, 3, 3), (out, mid, 1, 1)]
            for k, shape in enumerate(shapes, 1):
                b.conv(f"{peer}.conv{k}", f"{d2}.conv{k}", *shape, bias=False)
                b.bn(f"{peer}.bn{k}", f"{d2}.conv{k}.norm", shape[0])
            if block == 0:
                b.conv(f"{peer}.downsample.0", f"{d2}.shortcut", out, in_ch, 1, 1, bias=False)
                b.bn(f"{peer}.downsample.1", f"{d2}.shortcut.norm", out)
            in_ch = out


def _fpn_rpn(b: _Builder):
    official = b.source == "official"
    for i, c in enumerate((256, 512, 1024, 2048)):
        lateral = f"backbone.fpn.fpn_inner{i + 1}" if official else f"neck.lateral_convs.{i}.conv"
        output = f"backbone.fpn.fpn_layer{i + 1}" if official else f"neck.fpn_convs.{i}.conv"
        b.conv(lateral, f"backbone.fpn_lateral{i + 2}", 256, c, 1, 1)
        b.conv(output, f"backbone.fpn_output{i + 2}", 256, 256, 3, 3)
    rpn = "proposal_generator.rpn_head"
    names = ("rpn.head.conv", "rpn.head.cls_logits", "rpn.head.bbox_pred") if official else (
        "rpn_head.rpn_conv", "rpn_head.rpn_cls", "rpn_head.rpn_reg")  # fmt: skip
    b.conv(names[0], f"{rpn}.conv", 256, 256, 3, 3)
    b.conv(names[1], f"{rpn}.objectness_logits", 3, 256, 1, 1)
    b.conv(names[2], f"{rpn}.anchor_deltas", 12, 256, 1, 1)
    if official:
        for level, cell in enumerate(OFFICIAL_CELL_ANCHORS):
            b.peer[f"rpn.anchor_generator.cell_anchors.{level}"] = torch.tensor(
                cell, dtype=torch.float32
            )


def _with_background_first(b: _Builder, peer, d2, rows_before: int, *shape):
    """Draw the Detectron2 tensor, then prepend `rows_before` background rows for the peer."""
    for suffix, s in (("weight", shape), ("bias", shape[:1])):
        value = b.rand(*s)
        b.d2[f"{d2}.{suffix}"] = value
        b.peer[f"{peer}.{suffix}"] = torch.cat([b.rand(rows_before, *s[1:]), value])


def _heads(b: _Builder, num_classes: int, mask_scoring: bool):
    k = num_classes
    if b.source == "official":
        box, mask, iou = "roi_heads.box.", "roi_heads.mask.", "roi_heads.maskiou."
        b.conv(box + "feature_extractor.fc6", "roi_heads.box_head.fc1", 1024, 256 * 7 * 7)
        b.conv(box + "feature_extractor.fc7", "roi_heads.box_head.fc2", 1024, 1024)
        for suffix, shape in (("weight", (k + 1, 1024)), ("bias", (k + 1,))):
            value = b.rand(*shape)  # Detectron2: classes, then the background last
            b.d2[f"roi_heads.box_predictor.cls_score.{suffix}"] = value
            b.peer[f"{box}predictor.cls_score.{suffix}"] = torch.cat([value[-1:], value[:-1]])
        _with_background_first(
            b, box + "predictor.bbox_pred", "roi_heads.box_predictor.bbox_pred", 4, 4 * k, 1024
        )
        for i in range(1, 5):
            b.conv(
                f"{mask}feature_extractor.mask_fcn{i}",
                f"roi_heads.mask_head.mask_fcn{i}",
                256,
                256,
                3,
                3,
            )
        b.conv(mask + "predictor.conv5_mask", "roi_heads.mask_head.deconv", 256, 256, 2, 2)
        _with_background_first(
            b, mask + "predictor.mask_fcn_logits", "roi_heads.mask_head.predictor", 1, k, 256, 1, 1
        )
        if mask_scoring:
            fe = iou + "feature_extractor."
            for i in range(1, 5):
                b.conv(
                    f"{fe}maskiou_fcn{i}",
                    f"roi_heads.maskiou_head.maskiou_conv{i}",
                    256,
                    257 if i == 1 else 256,
                    3,
                    3,
                )
            b.conv(fe + "maskiou_fc1", "roi_heads.maskiou_head.maskiou_fc1", 1024, 256 * 7 * 7)
            b.conv(fe + "maskiou_fc2", "roi_heads.maskiou_head.maskiou_fc2", 1024, 1024)
            _with_background_first(
                b, iou + "predictor.maskiou", "roi_heads.maskiou_head.predictor", 1, k, 1024
            )
        return
    box, mask, iou = "roi_head.bbox_head.", "roi_head.mask_head.", "roi_head.mask_iou_head."
    b.conv(box + "shared_fcs.0", "roi_heads.box_head.fc1", 1024, 256 * 7 * 7)
    b.conv(box + "shared_fcs.1", "roi_heads.box_head.fc2", 1024, 1024)
    b.conv(box + "fc_cls", "roi_heads.box_predictor.cls_score", k + 1, 1024)  # background last
    b.conv(box + "fc_reg", "roi_heads.box_predictor.bbox_pred", 4 * k, 1024)
    for i in range(4):
        b.conv(f"{mask}convs.{i}.conv", f"roi_heads.mask_head.mask_fcn{i + 1}", 256, 256, 3, 3)
    b.conv(mask + "upsample", "roi_heads.mask_head.deconv", 256, 256, 2, 2)
    b.conv(mask + "conv_logits", "roi_heads.mask_head.predictor", k, 256, 1, 1)
    if mask_scoring:
        for i in range(4):
            b.conv(
                f"{iou}convs.{i}",
                f"roi_heads.maskiou_head.maskiou_conv{i + 1}",
                256,
                257 if i == 0 else 256,
                3,
                3,
            )
        b.conv(iou + "fcs.0", "roi_heads.maskiou_head.maskiou_fc1", 1024, 256 * 7 * 7)
        b.conv(iou + "fcs.1", "roi_heads.maskiou_head.maskiou_fc2", 1024, 1024)
        b.conv(iou + "fc_mask_iou", "roi_heads.maskiou_head.predictor", k, 1024)


@functools.lru_cache(maxsize=4)
def _build(source, depth, num_classes, seed):
    b = _Builder(source, seed)
    _resnet(b, depth)
    _fpn_rpn(b)
    _heads(b, num_classes, mask_scoring=True)
    return b.peer, b.d2


def peer_checkpoint(
    source: str, depth: int = 50, mask_scoring: bool = True, num_classes: int = 80, seed: int = 0
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(peer state dict, the Detectron2 state dict a correct conversion gives).

    source: "official" (maskrcnn-benchmark / official MS R-CNN) or "mmdet". The plain Mask
    R-CNN is the MS R-CNN without its MaskIoU head. The tensors are drawn once per argument set
    and shared (R-50 is 60M values): the dicts are new, so replace tensors, never edit them.
    """
    assert source in ("official", "mmdet"), source
    peer, d2 = _build(source, depth, num_classes, seed)
    if not mask_scoring:
        iou = ("roi_heads.maskiou.", "roi_head.mask_iou_head.", "roi_heads.maskiou_head.")
        return (
            {k: v for k, v in peer.items() if not k.startswith(iou)},
            {k: v for k, v in d2.items() if not k.startswith(iou)},
        )
    return dict(peer), dict(d2)
