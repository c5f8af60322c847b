"""The mask branch's side of mask scoring: what a mask branch hands the MaskIoU head
(`MaskScoringInputs`, returned by `MaskScoringMixin.mask_scoring_inputs`), and the view of
precomputed GT crops through which Mask R-CNN's branch reuses Detectron2's `mask_rcnn_loss`."""

from typing import Dict, List, NamedTuple, Optional

import torch
from detectron2.structures import Instances

__all__ = ["MaskScoringInputs", "with_cropped_masks"]


class MaskScoringInputs(NamedTuple):
    """What `MaskScoringMixin.mask_scoring_inputs` returns for R RoIs.

    mask_logits: (R, K, 2S, 2S) class-specific or (R, 1, 2S, 2S) class-agnostic logits of the
        mask the MaskIoU head scores, over each RoI's box. The IoU targets are computed from
        them (against the whole GT instance) at this 2S x 2S resolution.
    roi_features: (R, C, S, S) RoI features the MaskIoU head sees next to that mask.
    mask_losses: in training, the mask branch's own losses (`loss_*` scalars, weighted), or
        None to have the mixin add Mask R-CNN's `loss_mask` on `mask_logits`. None at inference.
    """

    mask_logits: torch.Tensor
    roi_features: torch.Tensor
    mask_losses: Optional[Dict[str, torch.Tensor]] = None


class _CroppedMasks:
    """Stands in for `gt_masks` in Detectron2's `mask_rcnn_loss`, which only calls
    `crop_and_resize(proposal_boxes, M)`: it returns the crops computed already. This keeps
    Detectron2's own loss (class-agnostic masks, metrics, visualization) instead of a copy."""

    def __init__(self, crops: torch.Tensor):
        self.crops = crops

    def __len__(self):
        return len(self.crops)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        if len(boxes) != len(self.crops) or mask_size != self.crops.shape[-1]:
            raise ValueError(
                f"precomputed crops are {tuple(self.crops.shape)}, asked for {len(boxes)} boxes "
                f"at {mask_size}"
            )
        return self.crops


def with_cropped_masks(instances: List[Instances], crops: List[torch.Tensor]):
    out = []
    for inst, crop in zip(instances, crops):
        view = Instances(inst.image_size, proposal_boxes=inst.proposal_boxes)
        if len(inst):
            view.gt_classes = inst.gt_classes
            view.gt_masks = _CroppedMasks(crop)
        out.append(view)
    return out
