"""Mask scoring as a mixin: adds a MaskIoU head to any ROI heads with Detectron2's mask branch.

`MaskScoringMixin` overrides only `_forward_mask` (and tags GT indices in
`label_and_sample_proposals`), so it composes with StandardROIHeads, CascadeROIHeads or a
project's own subclass of either: put it first in the bases,

    @ROI_HEADS_REGISTRY.register()
    class MyMaskScoringROIHeads(MaskScoringMixin, MyROIHeads):
        pass

It pools the mask-branch RoI features once and feeds them to both the mask head and the MaskIoU
head, which also sees the predicted mask of the ground-truth class (training) or of the predicted
class (inference).

A mask branch of another shape (no RoI pooler of its own, no `layers()`, losses of its own, e.g.
PointRend) plugs in through one hook: override `mask_scoring_inputs` in the ROI heads class
(see its docstring and `ms_rcnn.modeling.pointrend`).
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import (
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.modeling.roi_heads.roi_heads import (
    ROIHeads,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from .mask_branch import MaskScoringInputs, with_cropped_masks
from .maskiou_head import (
    build_maskiou_head,
    check_head_shapes,
    log_maskiou_metrics,
    mask_iou_inference,
    mask_iou_loss,
)
from .maskiou_targets import gt_mask_crops, mask_iou_targets
from .negative_rois import (
    batchnorm_statistics_kept,
    predicted_foreground_classes,
    sample_negative_proposals,
)
from .quality_targets import QUALITY_TARGETS, boundary_iou_targets, combine_quality

__all__ = ["MaskScoringMixin"]


class MaskScoringMixin:
    """Adds `loss_maskiou` in training and `pred_maskiou`, `mask_scores` at inference.

    Requirements on the class it is mixed into (Detectron2's ROIHeads with a mask branch): the
    attributes `mask_on`, `mask_pooler`, `mask_in_features`, `mask_head` (a `BaseMaskRCNNHead`),
    `num_classes`, and `_forward_mask(features, instances)` being the place the mask branch
    runs, as in StandardROIHeads and CascadeROIHeads. A class that overrides
    `mask_scoring_inputs` needs only `mask_on`, `mask_head` and `num_classes`.

    Inference adds, per detection, `pred_maskiou` (predicted IoU of its mask with the object) and
    `mask_scores` = `scores` * `pred_maskiou`, leaving `scores` as the box predictor gave it (the
    classification score, or with Soft-NMS the decayed one) unless `overwrite_scores`.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # With the ROI heads class first in the bases, its __init__, from_config and
        # _forward_mask would win and the mixin would silently do nothing.
        mro = cls.__mro__
        # (A subclass of a class that already has the mixin, e.g. of MaskScoringROIHeads, is
        # fine: only ROI heads classes without the mixin must come after it.)
        first_heads = next(
            (k for k in mro if issubclass(k, ROIHeads) and not issubclass(k, MaskScoringMixin)),
            None,
        )
        if first_heads is not None and mro.index(first_heads) < mro.index(MaskScoringMixin):
            raise TypeError(
                f"{cls.__name__}: put MaskScoringMixin before {first_heads.__name__} in the "
                f"bases, e.g. class {cls.__name__}(MaskScoringMixin, {first_heads.__name__})"
            )

    @configurable
    def __init__(
        self,
        *,
        maskiou_head: nn.Module,
        maskiou_loss_weight: float = 1.0,
        mask_logit_threshold: float = 0.0,
        detach_mask: bool = True,
        detach_features: bool = False,
        clamp_maskiou: bool = True,
        overwrite_scores: bool = False,
        quality_target: str = "mask_iou",
        boundary_width: int = 1,
        negative_rois_per_image: int = 0,
        **kwargs,
    ):
        """
        Args:
            maskiou_head: module mapping (RoI features, mask probabilities) to (R, K) IoUs.
            maskiou_loss_weight: weight of `loss_maskiou`.
            mask_logit_threshold: a mask logit above this is foreground for the IoU target.
            detach_mask: stop the MaskIoU loss's gradient at the mask input.
            detach_features: stop the MaskIoU loss's gradient at the RoI features.
            clamp_maskiou: clamp predicted IoUs to [0, 1] at inference.
            overwrite_scores: at inference, also set `scores` to `mask_scores`.
            quality_target: what the head learns, one of `QUALITY_TARGETS` (see
                `ms_rcnn.modeling.quality_targets`); "mask_iou" is the paper's.
            boundary_width: boundary band, in mask-grid cells, of the boundary IoU targets.
            negative_rois_per_image: also train the head on up to this many of each image's
                sampled background RoIs, with their true quality as target (see
                `ms_rcnn.modeling.negative_rois`); 0 is the paper's positives-only training.
            kwargs: arguments of the ROI heads class mixed with; a mask head and pooler are
                required.
        """
        super().__init__(**kwargs)
        name = type(self).__name__
        own_branch = self._has_own_mask_branch()
        if own_branch and negative_rois_per_image > 0:
            raise ValueError(
                f"MODEL.ROI_MASKIOU_HEAD.NEGATIVE_ROIS_PER_IMAGE={negative_rois_per_image} is not "
                f"supported by {name}, whose mask branch comes from mask_scoring_inputs: set it 0"
            )
        if not getattr(self, "mask_on", False):
            raise ValueError(f"{name} needs the mask branch: set MODEL.MASK_ON=True")
        if not own_branch and getattr(self, "mask_pooler", None) is None:
            raise ValueError(
                f"{name} needs the mask branch with its own RoI pooler: set MODEL.MASK_ON=True "
                "(and keep ROI_MASK_HEAD.POOLER_TYPE set)"
            )
        replaced = _replaced_mask_branch(type(self))
        if replaced is not None:
            # The mixin's _forward_mask would silently take the place of that class's own.
            raise TypeError(
                f"{name} puts MaskScoringMixin before {replaced.__qualname__}, which overrides "
                "_forward_mask: its mask branch would be replaced, not scored. The mixin fits "
                "ROI heads that keep StandardROIHeads._forward_mask (see "
                "docs/USING_IN_YOUR_PROJECT.md for other mask branches)"
            )
        if not own_branch and not isinstance(self.mask_head, BaseMaskRCNNHead):
            raise TypeError(
                f"{name} needs a mask head derived from BaseMaskRCNNHead (it calls its layers() "
                f"to reuse the logits), got {type(self.mask_head).__name__}; for another mask "
                "head, override mask_scoring_inputs (docs/USING_IN_YOUR_PROJECT.md)"
            )
        self.maskiou_head = maskiou_head
        self.maskiou_loss_weight = maskiou_loss_weight
        self.mask_logit_threshold = mask_logit_threshold
        self.detach_mask = detach_mask
        self.detach_features = detach_features
        self.clamp_maskiou = clamp_maskiou
        self.overwrite_scores = overwrite_scores
        if quality_target not in QUALITY_TARGETS:
            raise ValueError(
                f"MODEL.ROI_MASKIOU_HEAD.TARGET must be one of {QUALITY_TARGETS}, "
                f"got {quality_target!r}"
            )
        if boundary_width < 1 or negative_rois_per_image < 0:
            raise ValueError(
                "MODEL.ROI_MASKIOU_HEAD.BOUNDARY_WIDTH must be >= 1 and "
                f"NEGATIVE_ROIS_PER_IMAGE >= 0, got {boundary_width} and "
                f"{negative_rois_per_image}"
            )
        self.quality_target = quality_target
        self.boundary_width = boundary_width
        self.negative_rois_per_image = negative_rois_per_image

    @classmethod
    def from_config(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            raise ValueError(
                f"MODEL.ROI_HEADS.NAME={cls.__name__} scores masks, so it needs MODEL.MASK_ON=True"
            )
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_maskiou_head(cfg, input_shape))
        # Both heads exist now: refuse shapes that do not chain, naming the config keys.
        feature_shape = cls._maskiou_input_shape(cfg, input_shape)
        check_head_shapes(cfg, feature_shape, ret["mask_head"], ret["maskiou_head"])
        return ret

    @classmethod
    def _maskiou_input_shape(cls, cfg, input_shape) -> ShapeSpec:
        """The MaskIoU head sees the same pooled features as the mask head, before its convs."""
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"ROI_HEADS.IN_FEATURES {in_features} have different channel counts")
        resolution = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
        return ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)

    @classmethod
    def _init_maskiou_head(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_MASKIOU_HEAD
        return {
            "maskiou_head": build_maskiou_head(cfg, cls._maskiou_input_shape(cfg, input_shape)),
            "maskiou_loss_weight": head.LOSS_WEIGHT,
            "mask_logit_threshold": head.MASK_LOGIT_THRESHOLD,
            "detach_mask": head.DETACH_MASK,
            "detach_features": head.DETACH_FEATURES,
            "clamp_maskiou": head.CLAMP_PREDICTION,
            "overwrite_scores": head.OVERWRITE_SCORES,
            "quality_target": head.TARGET,
            "boundary_width": head.BOUNDARY_WIDTH,
            "negative_rois_per_image": head.NEGATIVE_ROIS_PER_IMAGE,
        }

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]):
        # Detectron2 copies every `gt_*` field of the targets to the proposals matched to them,
        # so a `gt_index` field tells which sampled proposals share a GT instance: the mask
        # targets then convert each GT bitmask once, not once per proposal (`gt_mask_crops`).
        tagged = []
        for t in targets:
            if t.has("gt_index"):
                raise ValueError(
                    "the targets already have a 'gt_index' field; MaskScoringMixin sets it to "
                    "each GT's index in its image (to crop each GT mask once): rename yours"
                )
            t = Instances(t.image_size, **t.get_fields())  # the caller's targets stay untouched
            t.gt_index = torch.arange(len(t), device=t.gt_classes.device)
            if self.negative_rois_per_image > 0:
                # Background proposals get gt_classes = num_classes; this keeps their matched
                # GT's class, which their quality target needs.
                t.gt_instance_classes = t.gt_classes
            tagged.append(t)
        return super().label_and_sample_proposals(proposals, tagged)

    def mask_scoring_inputs(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> MaskScoringInputs:
        """The hook between a mask branch and the MaskIoU head: run the mask branch on
        `instances` and return what the MaskIoU head needs (see `MaskScoringInputs`).

        `instances` are the foreground proposals (training: `proposal_boxes`, `gt_*` fields)
        or the detections (inference: `pred_boxes`, `pred_classes`). At inference the hook
        also sets `pred_masks` on them, as the mask branch would without mask scoring.

        This default is Mask R-CNN's branch: `mask_pooler`, then the mask head's `layers()`
        on the same features. ROI heads whose mask branch has another shape override it
        (`ms_rcnn.modeling.pointrend.PointRendMaskScoringROIHeads` is a worked example), and also
        `_maskiou_input_shape` if their RoI features are not the default pooler's.
        """
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        roi_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        mask_logits = self.mask_head.layers(roi_features)
        if not self.training:
            mask_rcnn_inference(mask_logits, instances)  # pred_masks: (N, 1, M, M) probabilities
        return MaskScoringInputs(mask_logits, roi_features)

    def _has_own_mask_branch(self) -> bool:
        return type(self).mask_scoring_inputs is not MaskScoringMixin.mask_scoring_inputs

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Mask head and MaskIoU head on shared RoI features.

        Returns a dict with the mask branch's losses and `loss_maskiou` in training; in
        inference, the instances with `pred_masks`, `pred_maskiou` and `mask_scores` set.
        """
        if not self.mask_on:  # test-time augmentation turns the mask branch off for a while
            return {} if self.training else instances
        negatives = None
        if self.training:
            if self.negative_rois_per_image > 0:
                negatives = sample_negative_proposals(
                    instances, self.num_classes, self.negative_rois_per_image
                )
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        mask_logits, roi_features, mask_losses = self.mask_scoring_inputs(features, instances)
        if self.training:
            return self._maskiou_losses(
                features, roi_features, mask_logits, instances, negatives, mask_losses
            )
        classes = cat([x.pred_classes for x in instances]).to(torch.int64)
        mask_probs = _class_masks(mask_logits, classes).sigmoid()
        pred_maskiou = self.maskiou_head(roi_features, mask_probs)
        mask_iou_inference(pred_maskiou, instances, self.clamp_maskiou, self.overwrite_scores)
        return instances

    def _maskiou_losses(
        self, features, roi_features, mask_logits, instances, negatives=None, mask_losses=None
    ):
        if mask_losses is None:
            # The GT crops are the mask loss's targets and the MaskIoU targets' G_in: crop once.
            crops = cat(gt_mask_crops(instances, mask_logits.shape[-1]))
            loss_mask = mask_rcnn_loss(
                mask_logits,
                with_cropped_masks(instances, crops.split([len(x) for x in instances])),
                getattr(self.mask_head, "vis_period", 0),  # a hook's head may lack them
            )
            losses = {"loss_mask": loss_mask * getattr(self.mask_head, "loss_weight", 1.0)}
        else:  # a mask branch with losses of its own (mask_scoring_inputs)
            crops, losses = None, dict(mask_losses)
        gt_classes = cat([x.gt_classes for x in instances]).to(torch.int64)
        mask_iou = mask_iou_targets(
            mask_logits, instances, self.mask_logit_threshold, gt_crops=crops
        )
        targets = self._quality(mask_logits, instances, gt_classes, mask_iou)

        # The mask of the ground-truth class (channel 0 if masks are class-agnostic); the IoU
        # column is the ground-truth class either way, as at inference (predicted class).
        pred_maskiou = self._predict_maskiou_for_training(roi_features, mask_logits, gt_classes)
        # The paper's rule: positives count only where the mask overlaps its GT at all (mask
        # IoU > 0, whatever the target: a boundary-aware one may be 0 there). The logged
        # metrics describe these same RoIs.
        counted = mask_iou > 0
        log_maskiou_metrics(pred_maskiou.detach(), gt_classes, targets, counted)
        terms = (pred_maskiou, gt_classes, targets, counted)
        if negatives is not None:
            terms = [
                torch.cat(pair) for pair in zip(terms, self._negative_terms(features, negatives))
            ]
        losses["loss_maskiou"] = mask_iou_loss(*terms) * self.maskiou_loss_weight
        return losses

    def _predict_maskiou_for_training(self, roi_features, mask_logits, classes):
        """The head's IoU predictions for RoIs scored as `classes`, with the configured
        gradient stops (DETACH_MASK, DETACH_FEATURES)."""
        mask_probs = _class_masks(mask_logits, classes).sigmoid()
        if self.detach_mask:
            mask_probs = mask_probs.detach()
        if self.detach_features:
            roi_features = roi_features.detach()
        return self.maskiou_head(roi_features, mask_probs)

    def _quality(self, mask_logits, instances, classes, mask_iou):
        """The head's target for RoIs whose mask is channel `classes` (see `quality_target`)."""
        if self.quality_target == "mask_iou":
            return mask_iou
        pred = _class_masks(mask_logits, classes)[:, 0].detach() > self.mask_logit_threshold
        boundary = boundary_iou_targets(pred, instances, self.boundary_width)
        return combine_quality(mask_iou, boundary, self.quality_target)

    def _negative_terms(self, features, negatives):
        """(predictions, classes, targets, counted) of the sampled background RoIs, which join
        the positives in `loss_maskiou`'s mean.

        Each background RoI is scored as the detection it would become: the mask and IoU column
        of the class the box head predicts for it; its target is that mask's quality against
        the GT it overlaps most (by box IoU, as Detectron2 matched it) when that GT has this
        class, else 0 (COCO matches detections only to GT of their class). All of them count
        in the loss, zeros included: learning 0 there is the point.
        """
        boxes = [x.proposal_boxes for x in negatives]
        classes = predicted_foreground_classes(self, features, boxes)
        roi_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        with (
            torch.set_grad_enabled(not self.detach_mask),
            batchnorm_statistics_kept(self.mask_head),
        ):
            mask_logits = self.mask_head.layers(roi_features)
        targets = self._negative_targets(mask_logits, negatives, classes)
        pred = self._predict_maskiou_for_training(roi_features, mask_logits, classes)
        get_event_storage().put_scalar("maskiou/num_neg", float(len(targets)))
        if len(targets):
            get_event_storage().put_scalar("maskiou/mean_target_neg", float(targets.mean()))
        return pred, classes, targets, torch.ones_like(targets, dtype=torch.bool)

    def _negative_targets(self, mask_logits, negatives, classes):
        """Quality of each background RoI's predicted-class mask against its matched GT."""
        targets = torch.zeros(len(classes), device=mask_logits.device)
        start = 0
        for inst in negatives:
            end = start + len(inst)
            if len(inst) and inst.has("gt_masks"):  # images without GT keep 0
                view = Instances(inst.image_size, proposal_boxes=inst.proposal_boxes)
                view.gt_masks, view.gt_index = inst.gt_masks, inst.gt_index
                view.gt_classes = classes[start:end]
                logits = mask_logits[start:end].detach()
                mask_iou = mask_iou_targets(logits, [view], self.mask_logit_threshold)
                quality = self._quality(logits, [view], classes[start:end], mask_iou)
                same = inst.gt_instance_classes.to(classes.device) == classes[start:end]
                targets[start:end] = torch.where(same, quality, torch.zeros_like(quality))
            start = end
        return targets


def _class_masks(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(R, 1, M, M) logits of each RoI's class (channel 0 if the masks are class-agnostic)."""
    channel = classes if mask_logits.shape[1] > 1 else torch.zeros_like(classes)
    index = torch.arange(mask_logits.shape[0], device=mask_logits.device)
    return mask_logits[index, channel].unsqueeze(1)


def _replaced_mask_branch(cls):
    """The class after MaskScoringMixin in `cls`'s MRO whose `_forward_mask` the mixin
    overrides, if that is not StandardROIHeads' (None for StandardROIHeads, CascadeROIHeads)."""
    mro = cls.__mro__
    for klass in mro[mro.index(MaskScoringMixin) + 1 :]:
        if "_forward_mask" in vars(klass):
            return None if klass is StandardROIHeads else klass
    return None
