"""Test-time augmentation that keeps the mask scores.

Detectron2's GeneralizedRCNNWithTTA runs the mask branch once per augmentation on the merged
boxes, averages `pred_masks`, and rebuilds the output without any other field, so
`pred_maskiou` and `mask_scores` would be lost. This subclass averages the predicted IoUs the
same way and sets both fields.
"""

import torch
from detectron2.modeling import GeneralizedRCNNWithTTA

__all__ = ["MaskScoringRCNNWithTTA"]


class MaskScoringRCNNWithTTA(GeneralizedRCNNWithTTA):
    """GeneralizedRCNNWithTTA for models with MaskScoringROIHeads (same constructor)."""

    def _rescale_detected_boxes(self, augmented_inputs, merged_instances, tfms):
        # The parent later sets pred_masks on this very object; remember it so the averaged
        # IoUs land on it too, before detector_postprocess filters and copies its fields.
        self._merged_instances = merged_instances
        return super()._rescale_detected_boxes(augmented_inputs, merged_instances, tfms)

    def _reduce_pred_masks(self, outputs, tfms):
        merged = self._merged_instances
        self._merged_instances = None
        if all(o.has("pred_maskiou") for o in outputs):
            maskiou = torch.stack([o.pred_maskiou for o in outputs], dim=0).mean(dim=0)
            merged.pred_maskiou = maskiou
            merged.mask_scores = merged.scores * maskiou
        return super()._reduce_pred_masks(outputs, tfms)
