"""mmdetection 2.x/3.x caffe-style R-50/R-101 FPN Mask R-CNN and MS R-CNN to Detectron2.

mmdetection already puts the background last in its classifier and has no background rows
elsewhere, uses BatchNorm eps 1e-5 like Detectron2, and the same box-delta and anchor order, so
the tensors are copied as they are; only the names change, and BatchNorm's num_batches_tracked
counters are left out. Names: docs/PUBLISHED_WEIGHTS.md.

mmdetection's pytorch-style backbones (stride in the 3x3 conv, RGB input with a std) have the
same tensor names but need another config; the checkpoint's config text (meta["config"] from
mmdetection 2.x, meta["cfg"] from mmengine's Runner in 3.x) says which style it is, and a
pytorch-style one is refused rather than evaluated with the wrong stride and colours.
"""

import re

from .common import (
    ConversionError,
    Converted,
    Drop,
    Rule,
    apply_rules,
    describe_architecture,
    resnet_rules,
)

__all__ = ["convert_mmdet", "check_mmdet_meta"]


def _rules():
    wb = r"\.(weight|bias)"
    rpn = r"rpn_head\."
    box = r"roi_head\.bbox_head\."
    mask = r"roi_head\.mask_head\."
    iou = r"roi_head\.mask_iou_head\."
    return resnet_rules("backbone.", "conv1", "bn1") + [
        Rule(
            r"neck\.lateral_convs\.([0-3])\.conv" + wb,
            lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 2}.{m.group(2)}",
        ),
        Rule(
            r"neck\.fpn_convs\.([0-3])\.conv" + wb,
            lambda m: f"backbone.fpn_output{int(m.group(1)) + 2}.{m.group(2)}",
        ),
        Rule(rpn + r"rpn_conv" + wb, lambda m: f"proposal_generator.rpn_head.conv.{m.group(1)}"),
        Rule(
            rpn + r"rpn_cls" + wb,
            lambda m: f"proposal_generator.rpn_head.objectness_logits.{m.group(1)}",
        ),
        Rule(
            rpn + r"rpn_reg" + wb,
            lambda m: f"proposal_generator.rpn_head.anchor_deltas.{m.group(1)}",
        ),
        Rule(
            box + r"shared_fcs\.([01])" + wb,
            lambda m: f"roi_heads.box_head.fc{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(box + r"fc_cls" + wb, lambda m: f"roi_heads.box_predictor.cls_score.{m.group(1)}"),
        Rule(box + r"fc_reg" + wb, lambda m: f"roi_heads.box_predictor.bbox_pred.{m.group(1)}"),
        Rule(
            mask + r"convs\.([0-3])\.conv" + wb,
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(mask + r"upsample" + wb, lambda m: f"roi_heads.mask_head.deconv.{m.group(1)}"),
        Rule(mask + r"conv_logits" + wb, lambda m: f"roi_heads.mask_head.predictor.{m.group(1)}"),
        Rule(
            iou + r"convs\.([0-3])" + wb,
            lambda m: f"roi_heads.maskiou_head.maskiou_conv{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(
            iou + r"fcs\.([01])" + wb,
            lambda m: f"roi_heads.maskiou_head.maskiou_fc{int(m.group(1)) + 1}.{m.group(2)}",
        ),
        Rule(iou + r"fc_mask_iou" + wb, lambda m: f"roi_heads.maskiou_head.predictor.{m.group(1)}"),
    ]


DROPS = [Drop(r".*\.num_batches_tracked", "BatchNorm step counter (FrozenBN has none)")]


def _config_texts(meta: dict) -> dict:
    """The config texts a checkpoint carries: mmdetection 2.x's runner saved it as
    meta["config"], mmengine's Runner (mmdetection 3.x) as meta["cfg"]."""
    return {key: meta[key] for key in ("config", "cfg") if isinstance(meta.get(key), str)}


def check_mmdet_meta(meta: dict) -> list:
    """Refuse a pytorch-style or RGB model named by the checkpoint's config text (meta["config"]
    or meta["cfg"]); return notes for the report."""
    texts = _config_texts(meta)
    if not texts:
        return [
            "the checkpoint has no meta['config'] or meta['cfg']: assumed caffe-style, BGR "
            "(check the file name)"
        ]
    for key, config in texts.items():
        problems = []
        if re.search(r"style\s*=\s*['\"]pytorch['\"]", config):
            problems.append(
                "style='pytorch' (stride in the 3x3 conv; the configs here are caffe-style)"
            )
        # to_rgb=True (2.x img_norm_cfg) and bgr_to_rgb=True (3.x data_preprocessor) alike.
        if re.search(r"to_rgb\s*=\s*True", config):
            problems.append("to_rgb=True (RGB input; the configs here take BGR)")
        if problems:
            raise ConversionError(
                f"mmdetection checkpoint's meta['{key}'] says " + " and ".join(problems) + ": "
                "only the caffe-style models (…_caffe_fpn_…) have a config here"
            )
    where = " and ".join(f"meta['{key}']" for key in texts)
    versions = [f"{k} {meta[k]}" for k in ("mmdet_version", "mmengine_version") if meta.get(k)]
    return [", ".join(versions + [f"caffe-style BGR (from {where})"])]


def _drop_unused_maskiou_row(converted: Converted) -> None:
    """Early mmdetection v2 MS R-CNN configs built fc_mask_iou with num_classes=81 (later ones
    with 80). Its labels are 0..79, so row 80 is never trained nor read: drop it, and say so."""
    model = converted.model
    cls = model.get("roi_heads.box_predictor.cls_score.weight")
    iou = "roi_heads.maskiou_head.predictor."
    if cls is None or iou + "weight" not in model or len(model[iou + "weight"]) != len(cls):
        return
    doc = "last row dropped (fc_mask_iou built for 81 classes; labels 0..79 never read it)"
    for i, (peer, d2, before, _, _) in enumerate(converted.mapped):
        if d2.startswith(iou):
            model[d2] = model[d2][:-1].clone()
            converted.mapped[i] = (peer, d2, before, tuple(model[d2].shape), doc)


def convert_mmdet(state, meta=None) -> Converted:
    """Convert an mmdetection 2.x or 3.x state dict (no `module.` prefix), checking its meta."""
    notes = check_mmdet_meta(meta or {})
    converted = apply_rules(state, _rules(), DROPS, "mmdet")
    _drop_unused_maskiou_row(converted)
    describe_architecture(converted)
    converted.notes += notes
    converted.notes.append(
        "mmdetection's test-time settings are Detectron2's (RoIAlignV2, anchors with OFFSET 0, "
        "BGR caffe mean) except its cv2 resize, which the config below reproduces "
        "(INPUT.RESIZE_STYLE mmdet; docs/MODEL_OPTIONS.md)"
    )
    if converted.num_classes != 80:
        converted.notes.append(f"{converted.num_classes} classes: not a COCO model")
    return converted
