"""The model: ROI heads with mask scoring, the MaskIoU head and its targets, Soft-NMS, and the
pieces that plug mask scoring into Cascade, PointRend, TTA and export.

Importing it registers the heads in Detectron2's registries (PointRend's heads register when
`ms_rcnn.modeling.pointrend` is imported, which needs Detectron2's PointRend project).
"""

from .anchor_generator import MaskrcnnBenchmarkAnchorGenerator
from .box_predictor import SoftNMSFastRCNNOutputLayers
from .cascade import CascadeMaskScoringROIHeads
from .lazy import add_mask_scoring
from .mask_branch import MaskScoringInputs
from .mask_scoring import MaskScoringMixin
from .maskiou_head import (
    ROI_MASKIOU_HEAD_REGISTRY,
    MaskIoUHead,
    build_maskiou_head,
    mask_iou_inference,
    mask_iou_loss,
)
from .maskiou_targets import gt_mask_crops, mask_iou_targets
from .roi_heads import MaskScoringROIHeads, SoftNMSROIHeads
from .soft_nms import batched_soft_nms, soft_nms
from .tta import MaskScoringRCNNWithTTA

__all__ = [
    "ROI_MASKIOU_HEAD_REGISTRY",
    "MaskIoUHead",
    "MaskrcnnBenchmarkAnchorGenerator",
    "build_maskiou_head",
    "mask_iou_targets",
    "gt_mask_crops",
    "mask_iou_loss",
    "mask_iou_inference",
    "MaskScoringMixin",
    "MaskScoringInputs",
    "MaskScoringROIHeads",
    "CascadeMaskScoringROIHeads",
    "add_mask_scoring",
    "SoftNMSROIHeads",
    "SoftNMSFastRCNNOutputLayers",
    "MaskScoringRCNNWithTTA",
    "soft_nms",
    "batched_soft_nms",
]
