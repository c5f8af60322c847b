"""Background RoIs for the MaskIoU head (MODEL.ROI_MASKIOU_HEAD.NEGATIVE_ROIS_PER_IMAGE > 0).

The paper trains the MaskIoU head on positive RoIs only, so at test time its prediction on a
false positive is an extrapolation. Joint quality estimation (GFL, SparseInst) trains the
quality score on negatives too, with their true quality (0 where there is no object). This
module picks those RoIs and the class each is scored as; `MaskScoringMixin` computes their
targets and loss.
"""

import contextlib
from typing import Dict, List

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

__all__ = ["sample_negative_proposals", "predicted_foreground_classes", "batchnorm_statistics_kept"]


@contextlib.contextmanager
def batchnorm_statistics_kept(*modules: nn.Module):
    """Run the BatchNorm layers of `modules` in eval mode for the block, then restore them.

    The passes over background RoIs are extra batches of background only: in training mode a
    BatchNorm (BN, SyncBN, Detectron2's NaiveSyncBN) would normalize them by their own
    statistics and fold those into its running ones, and a synchronized one would add a
    collective call that ranks without negatives do not make. In eval mode it normalizes by the
    running statistics, updates nothing and synchronizes nothing; gradients still reach its
    affine parameters. Layers without running statistics (GroupNorm, FrozenBatchNorm) are
    untouched.
    """
    switched = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    for m in switched:
        m.train(False)
    try:
        yield
    finally:
        for m in switched:
            m.train(True)


def sample_negative_proposals(
    proposals: List[Instances], num_classes: int, per_image: int
) -> List[Instances]:
    """Up to `per_image` of each image's sampled background proposals, uniformly at random.

    They come from Detectron2's own RoI sampling (`ROI_HEADS.BATCH_SIZE_PER_IMAGE` and
    `POSITIVE_FRACTION`), so they span the same low-overlap and empty regions the box head
    learns to reject; their `gt_*` fields are those of the GT they overlap most (box IoU below
    `ROI_HEADS.IOU_THRESHOLDS`), set by Detectron2's `label_and_sample_proposals`.
    """
    out = []
    for inst in proposals:
        background = (inst.gt_classes == num_classes).nonzero().squeeze(1)
        if len(background) > per_image:
            pick = torch.randperm(len(background), device=background.device)[:per_image]
            background = background[pick.sort().values]
        out.append(inst[background])
    return out


@torch.no_grad()
def predicted_foreground_classes(
    heads: nn.Module, features: Dict[str, torch.Tensor], boxes: List[Boxes]
) -> torch.Tensor:
    """The class the box head predicts for each RoI (argmax over the foreground classes).

    That is the class such a RoI would be reported as at test time, so its mask and IoU column
    are the ones to train. The box head runs again on these few RoIs, without gradient (for a
    cascade, its last stage, the one whose boxes the mask branch sees at test time), its
    BatchNorm layers in eval mode (`batchnorm_statistics_kept`).
    """
    box_head, predictor = heads.box_head, heads.box_predictor
    if isinstance(predictor, nn.ModuleList):
        box_head, predictor = box_head[-1], predictor[-1]
    pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
    with batchnorm_statistics_kept(box_head, predictor):
        scores = predictor(box_head(pooled))[0]
    return scores[:, :-1].argmax(dim=1)
