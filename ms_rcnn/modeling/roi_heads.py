"""The registered ROI heads: SoftNMSROIHeads (a baseline with the Soft-NMS switch) and
MaskScoringROIHeads (that plus the MaskIoU head, from `MaskScoringMixin`).

Only the box predictor and `_forward_mask` differ from StandardROIHeads, so sampling, the box
head and keypoints stay Detectron2's.
"""

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads

from .box_predictor import SoftNMSFastRCNNOutputLayers
from .mask_scoring import MaskScoringMixin

__all__ = ["SoftNMSROIHeads", "MaskScoringROIHeads"]


@ROI_HEADS_REGISTRY.register()
class SoftNMSROIHeads(StandardROIHeads):
    """StandardROIHeads whose box predictor honours `TEST.SOFT_NMS` at test time.

    With `TEST.SOFT_NMS.ENABLED: False` it is StandardROIHeads exactly: same parameters, same
    initial weights for a given seed, same outputs. Use it as the plain Mask R-CNN baseline
    when comparing with Soft-NMS, so both arms rank boxes the same way.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        # Swap in the Soft-NMS-capable predictor with the parent's initial weights. Building it
        # under a forked RNG keeps the random stream, and so every later layer's initial
        # weights, identical to StandardROIHeads for the same seed.
        with torch.random.fork_rng(devices=[]):
            predictor = SoftNMSFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        predictor.load_state_dict(ret["box_predictor"].state_dict())
        ret["box_predictor"] = predictor
        return ret


@ROI_HEADS_REGISTRY.register()
class MaskScoringROIHeads(MaskScoringMixin, SoftNMSROIHeads):
    """StandardROIHeads (with the Soft-NMS switch) whose detections also get `pred_maskiou` and
    `mask_scores`: training adds `loss_maskiou`. See `MaskScoringMixin` for the arguments."""
