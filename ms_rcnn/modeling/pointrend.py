"""Mask scoring on PointRend (Kirillov et al., CVPR 2020): the worked example of the
`MaskScoringMixin.mask_scoring_inputs` hook for a mask branch that is not Mask R-CNN's.

PointRend's mask head pools its own RoI features (point-sampled from `p2`, no `mask_pooler`),
predicts a coarse 7 x 7 mask from them, and refines it with a point head (an MLP on fine
features and the coarse prediction at chosen points): in training on sampled points
(`loss_mask` on the coarse mask, `loss_mask_point` on the points), at inference by adaptive
subdivision up to 224 x 224. `PointRendMaskScoringROIHeads` keeps all of that, PointRend's own
code, and gives the MaskIoU head:

* RoI features: the coarse head's input, PointRend's S x S RoI features (S =
  `ROI_MASK_HEAD.POOLER_RESOLUTION`), as the MaskIoU head sees the mask head's input in
  Mask R-CNN;
* the mask, by `MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK`: "refined" (default), the point head's
  prediction on the regular 2S x 2S grid of cell centres of the box; or "coarse", the coarse
  prediction bilinearly upsampled to 2S x 2S. The IoU target is that mask's, at 2S x 2S,
  against the whole GT instance (`mask_iou_targets`). docs/DESIGN.md says why.

Importing this module imports PointRend (`import_point_rend`) and registers the ROI heads.
"""

import importlib
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, interpolate
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances

from ..config import check_pointrend_config, import_point_rend
from .mask_branch import MaskScoringInputs
from .mask_scoring import MaskScoringMixin

__all__ = [
    "POINTREND_MASKS",
    "PointRendMaskScoringROIHeads",
]

POINTREND_MASKS = ("refined", "coarse")


_point_rend = import_point_rend()
_roi_heads_module = importlib.import_module(_point_rend.__name__ + ".roi_heads")
_point_features = importlib.import_module(_point_rend.__name__ + ".point_features")


@ROI_HEADS_REGISTRY.register()
class PointRendMaskScoringROIHeads(MaskScoringMixin, _roi_heads_module.PointRendROIHeads):
    """PointRend's ROI heads whose detections also get `pred_maskiou` and `mask_scores`.

    Training returns PointRend's `loss_mask` (coarse mask) and `loss_mask_point`, computed by
    its mask head exactly as without mask scoring, plus `loss_maskiou`. At inference
    `pred_masks` are PointRend's subdivided masks; the MaskIoU head scores the mask chosen by
    `MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK` (see the module docstring).

    Arguments: those of `MaskScoringMixin` and of StandardROIHeads, plus `pointrend_mask`.
    """

    @configurable
    def __init__(self, *, pointrend_mask: str = "refined", **kwargs):
        super().__init__(**kwargs)
        if pointrend_mask not in POINTREND_MASKS:
            raise ValueError(
                f"MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK must be one of {POINTREND_MASKS}, "
                f"got {pointrend_mask!r}"
            )
        if pointrend_mask == "refined" and not getattr(self.mask_head, "mask_point_on", False):
            raise ValueError(
                "MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK='refined' needs the point head "
                "(MODEL.ROI_MASK_HEAD.POINT_HEAD_ON True); use 'coarse' without it"
            )
        self.pointrend_mask = pointrend_mask

    @classmethod
    def from_config(cls, cfg, input_shape):
        name = cfg.MODEL.ROI_MASK_HEAD.NAME
        if name != "PointRendMaskHead":
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME={cls.__name__} scores PointRend's masks, so it needs "
                f"MODEL.ROI_MASK_HEAD.NAME 'PointRendMaskHead', got {name!r}"
            )
        if cfg.INPUT.MASK_FORMAT != "bitmask":
            # PointRend samples its point labels from bitmasks; polygons fail deep in its loss.
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME={cls.__name__} (PointRend) needs INPUT.MASK_FORMAT "
                f"'bitmask', got {cfg.INPUT.MASK_FORMAT!r}"
            )
        check_pointrend_config(cfg)  # before PointRend's bare assert on the class counts
        ret = super().from_config(cfg, input_shape)
        ret["pointrend_mask"] = cfg.MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK
        return ret

    @classmethod
    def _maskiou_input_shape(cls, cfg, input_shape) -> ShapeSpec:
        # PointRend's coarse head input: the ROI_MASK_HEAD.IN_FEATURES point-sampled on an
        # S x S grid and concatenated along channels.
        in_features = cfg.MODEL.ROI_MASK_HEAD.IN_FEATURES
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.IN_FEATURES {list(in_features)}: {missing} not among the "
                f"backbone's outputs {sorted(input_shape)}"
            )
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        channels = sum(input_shape[f].channels for f in in_features)
        return ShapeSpec(channels=channels, height=resolution, width=resolution)

    def mask_scoring_inputs(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> MaskScoringInputs:
        head = self.mask_head
        # PointRend's own forward: its losses, or its subdivided pred_masks. It is the same call
        # PointRendROIHeads makes, so those stay PointRend's for the same weights and RNG.
        out = head(features, instances)
        losses = out if self.training else None
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        # Recomputing the coarse head's input (and output) costs one small pooling and FC pass
        # but keeps PointRend's forward untouched.
        roi_features = head._roi_pooler(features, boxes)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_mask):
            coarse = head.coarse_head(roi_features)
            size = 2 * roi_features.shape[-1]
            if self.pointrend_mask == "coarse":
                mask_logits = interpolate(
                    coarse, size=(size, size), mode="bilinear", align_corners=False
                )
            else:
                mask_logits = self._refined_on_grid(features, boxes, coarse, size)
        return MaskScoringInputs(mask_logits, roi_features, losses)

    def _refined_on_grid(self, features, boxes, coarse, size):
        """The point head's logits at the size x size cell centres of each box: the mask
        PointRend's subdivision computes at that resolution when all its cells are refined."""
        head = self.mask_head
        num_rois = coarse.shape[0]
        if num_rois == 0:
            channels = head.point_head.predictor.out_channels
            return coarse.new_zeros((0, channels, size, size))
        points = _point_features.generate_regular_grid_point_coords(num_rois, size, coarse.device)
        fine = head._point_pooler(features, boxes, points)
        logits = head._get_point_logits(fine, points, coarse)  # (R, C, size * size)
        return logits.reshape(num_rois, logits.shape[1], size, size)
