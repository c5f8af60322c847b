"""Cascade Mask R-CNN with mask scoring: Detectron2's CascadeROIHeads plus `MaskScoringMixin`.

The mixin is the whole of the mask-scoring code, shared with `MaskScoringROIHeads`; this module
registers the combination, refuses the one setting Cascade R-CNN cannot honour (Soft-NMS), and
keeps v0.6's inference traceable (see `_run_stage`).
"""

from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import CascadeROIHeads

from .mask_scoring import MaskScoringMixin

__all__ = ["CascadeMaskScoringROIHeads"]


@ROI_HEADS_REGISTRY.register()
class CascadeMaskScoringROIHeads(MaskScoringMixin, CascadeROIHeads):
    """CascadeROIHeads whose detections also get `pred_maskiou` and `mask_scores`.

    Everything but the mask branch is Detectron2's Cascade R-CNN: the box stages, their
    losses (`loss_cls_stage{k}`, `loss_box_reg_stage{k}`), and the final scores (the stages'
    class probabilities averaged, then hard NMS). As in Detectron2, the mask branch, and so the
    MaskIoU head, trains on the first stage's sampled proposals and runs at inference on the
    final detections; `mask_scores` = those averaged `scores` * `pred_maskiou`.

    Arguments: those of `MaskScoringMixin` and of `CascadeROIHeads`. With a YAML config, set
    `MODEL.ROI_HEADS.NAME: CascadeMaskScoringROIHeads` and `MODEL.ROI_BOX_HEAD.
    CLS_AGNOSTIC_BBOX_REG: True` (a requirement of Detectron2's Cascade heads).
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        soft_nms = cfg.TEST.get("SOFT_NMS")
        if soft_nms is not None and soft_nms.get("ENABLED", False):
            # Detectron2's cascade inference calls fast_rcnn_inference (hard NMS) on the
            # averaged stage scores itself, past any box predictor: refuse rather than ignore.
            raise ValueError(
                f"TEST.SOFT_NMS.ENABLED=True is not supported by MODEL.ROI_HEADS.NAME="
                f"{cls.__name__}: Cascade R-CNN averages its stages' scores and then runs "
                "Detectron2's hard NMS (MODEL.ROI_HEADS.NMS_THRESH_TEST). Set "
                "TEST.SOFT_NMS.ENABLED False, or use MaskScoringROIHeads for Soft-NMS."
            )
        return super().from_config(cfg, input_shape)

    def _run_stage(self, features, proposals, stage):
        if self.training:
            return super()._run_stage(features, proposals, stage)
        # Detectron2 v0.6 also applies its gradient-scaling autograd Function at inference,
        # where it is the identity but makes a traced model impossible to save (TorchScript
        # cannot serialize a Python Function); upstream Detectron2 now skips it there too.
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)
