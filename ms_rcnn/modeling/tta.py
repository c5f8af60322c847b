"""Test-time augmentation that keeps the mask scores.

Detectron2's GeneralizedRCNNWithTTA runs the mask branch once per augmentation on the merged
boxes, averages `pred_masks`, and rebuilds the output without any other field, so
`pred_maskiou` and `mask_scores` would be lost. This subclass averages the predicted IoUs the
same way and sets both fields, and honours `MODEL.ROI_MASKIOU_HEAD.OVERWRITE_SCORES`.

Soft-NMS (`TEST.SOFT_NMS.ENABLED`) is refused: the parent merges the augmentations with hard
NMS, which would drop the overlapping detections Soft-NMS keeps (docs/DESIGN.md says why this
does not merge with Soft-NMS instead).

A config whose INPUT.RESIZE_STYLE is not "detectron2" is refused too (without a `tta_mapper` of
one's own): Detectron2's TTA mapper resizes with Detectron2's rule and PIL, not the resize the
converted weights were trained with.
"""

import torch
from detectron2.modeling import GeneralizedRCNNWithTTA

from ..config import config_resize_style

__all__ = ["MaskScoringRCNNWithTTA", "check_tta_resize_style", "check_tta_supported"]


def check_tta_resize_style(cfg) -> None:
    """Raise ValueError if the config's INPUT.RESIZE_STYLE is not "detectron2" (or unknown):
    Detectron2's DatasetMapperTTA would resize each augmentation with Detectron2's rule."""
    style = config_resize_style(cfg)
    if style != "detectron2":
        raise ValueError(
            f"TEST.AUG.ENABLED=True with INPUT.RESIZE_STYLE={style!r}: Detectron2's test-time "
            "augmentation (DatasetMapperTTA) resizes with Detectron2's own rule and PIL, not "
            f"the {style} resize this config's weights expect. Turn TEST.AUG.ENABLED off, or set "
            "INPUT.RESIZE_STYLE detectron2 to augment with Detectron2's resize anyway."
        )


def check_tta_supported(model) -> None:
    """Raise ValueError if `model` runs test-time Soft-NMS, which TTA cannot honour.

    Args:
        model: the detector (unwrapped from DistributedDataParallel).
    """
    if any(getattr(m, "soft_nms_enabled", False) for m in model.modules()):
        raise ValueError(
            "TEST.SOFT_NMS.ENABLED=True cannot be combined with test-time augmentation "
            "(TEST.AUG.ENABLED=True, MaskScoringRCNNWithTTA): merging the augmentations would "
            "replace Soft-NMS by hard NMS. Set one of the two to False."
        )


class MaskScoringRCNNWithTTA(GeneralizedRCNNWithTTA):
    """GeneralizedRCNNWithTTA for models with MaskScoringROIHeads (same constructor).

    Raises:
        ValueError: if the model runs Soft-NMS (`check_tta_supported`), or without `tta_mapper`
            if INPUT.RESIZE_STYLE is not "detectron2" (`check_tta_resize_style`).
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size=3):
        if tta_mapper is None:
            check_tta_resize_style(cfg)
        super().__init__(cfg, model, tta_mapper=tta_mapper, batch_size=batch_size)
        check_tta_supported(self.model)

    def _rescale_detected_boxes(self, augmented_inputs, merged_instances, tfms):
        # The parent later sets pred_masks on this very object; remember it so the averaged
        # IoUs land on it too, before detector_postprocess filters and copies its fields.
        self._merged_instances = merged_instances
        return super()._rescale_detected_boxes(augmented_inputs, merged_instances, tfms)

    def _reduce_pred_masks(self, outputs, tfms):
        merged = self._merged_instances
        self._merged_instances = None
        if all(o.has("pred_maskiou") for o in outputs):
            # The boxes were detected with the mask branch off, so merged.scores are still the
            # classification scores here, whatever OVERWRITE_SCORES says.
            maskiou = torch.stack([o.pred_maskiou for o in outputs], dim=0).mean(dim=0)
            merged.pred_maskiou = maskiou
            merged.mask_scores = merged.scores * maskiou
            if getattr(self.model.roi_heads, "overwrite_scores", False):
                merged.scores = merged.mask_scores
        return super()._reduce_pred_masks(outputs, tfms)
