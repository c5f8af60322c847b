"""The `mask_scoring_inputs` hook: a toy mask branch that is not a BaseMaskRCNNHead and has a
loss of its own plugs into MaskScoringMixin without any change to the mixin."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads, build_model
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn import functional as F

from ms_rcnn import MaskScoringInputs, MaskScoringMixin, mask_iou_targets


class ToyMaskHead(nn.Module):
    """Not a BaseMaskRCNNHead: one 1x1 conv, then 2x upsampling."""

    def __init__(self, channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")


def toy_mask_branch(cls, cfg, input_shape):
    """StandardROIHeads' mask pooler with a ToyMaskHead."""
    ret = StandardROIHeads._init_mask_head.__func__(cls, cfg, input_shape)
    channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
    ret["mask_head"] = ToyMaskHead(channels, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    return ret


@ROI_HEADS_REGISTRY.register()
class HookedMaskScoringROIHeads(MaskScoringMixin, StandardROIHeads):
    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return toy_mask_branch(cls, cfg, input_shape)

    def mask_scoring_inputs(self, features, instances):
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        roi_features = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        logits = self.mask_head(roi_features)
        self.last = (instances, logits)
        if not self.training:
            mask_rcnn_inference(logits, instances)
            return MaskScoringInputs(logits, roi_features)
        return MaskScoringInputs(logits, roi_features, {"loss_toy": logits.pow(2).mean()})


def build(seed=0, **maskiou):
    cfg = tiny_cfg("HookedMaskScoringROIHeads")
    for key, value in maskiou.items():
        cfg.MODEL.ROI_MASKIOU_HEAD[key] = value
    torch.manual_seed(seed)
    return build_model(cfg)


def test_training_uses_the_hooks_losses_and_its_masks_iou_targets():
    model = build()
    model.train()
    torch.manual_seed(1)
    with EventStorage() as storage:
        losses = model(make_batch(num_instances=(3, 2)))
    assert "loss_toy" in losses and "loss_mask" not in losses and "loss_maskiou" in losses
    assert all(torch.isfinite(v) for v in losses.values())
    instances, logits = model.roi_heads.last
    expected = mask_iou_targets(logits, instances)  # the IoU of the hook's own mask
    positive = expected > 0
    latest = storage.histories()["maskiou/mean_target"].latest()
    assert latest == pytest.approx(float(expected[positive].mean()), abs=1e-5)
    sum(losses.values()).backward()
    assert model.roi_heads.maskiou_head.predictor.bias.grad is not None
    assert float(model.roi_heads.mask_head.conv.weight.grad.abs().sum()) > 0


def test_inference_scores_the_hooks_mask_of_the_predicted_class():
    model = build().eval()
    batch = make_batch(num_instances=(1, 1))
    with torch.no_grad():
        features = model.backbone(model.preprocess_image(batch).tensor)
        dets = Instances(
            (64, 64), pred_boxes=Boxes(torch.tensor([[2.0, 2, 30, 30], [10, 8, 50, 60]]))
        )
        dets.pred_classes, dets.scores = torch.tensor([1, 2]), torch.tensor([0.8, 0.4])
        empty = Instances((64, 64), pred_boxes=Boxes(torch.zeros(0, 4)))
        empty.pred_classes, empty.scores = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        out = model.roi_heads.forward_with_given_boxes(features, [dets, empty])
        heads = model.roi_heads
        boxes = [dets.pred_boxes, empty.pred_boxes]
        roi = heads.mask_pooler([features[f] for f in heads.mask_in_features], boxes)
        logits = heads.mask_head(roi)
        probs = torch.stack([logits[0, 1], logits[1, 2]]).unsqueeze(1).sigmoid()
        expected = heads.maskiou_head(roi, probs)[torch.arange(2), dets.pred_classes]
    torch.testing.assert_close(out[0].pred_maskiou, expected.clamp(0, 1))
    torch.testing.assert_close(out[0].mask_scores, dets.scores * out[0].pred_maskiou)
    torch.testing.assert_close(out[0].pred_masks, probs)
    assert len(out[1]) == 0 and out[1].mask_scores.shape == (0,)


@ROI_HEADS_REGISTRY.register()
class UnhookedMaskScoringROIHeads(MaskScoringMixin, StandardROIHeads):
    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        return toy_mask_branch(cls, cfg, input_shape)


def test_without_the_hook_a_foreign_mask_head_is_refused_naming_it():
    with pytest.raises(TypeError, match="ToyMaskHead.*mask_scoring_inputs"):
        build_model(tiny_cfg("UnhookedMaskScoringROIHeads"))


@ROI_HEADS_REGISTRY.register()
class HookedDefaultLossROIHeads(HookedMaskScoringROIHeads):
    def mask_scoring_inputs(self, features, instances):
        logits, roi_features, _ = super().mask_scoring_inputs(features, instances)
        return MaskScoringInputs(logits, roi_features, None)  # no losses of its own


def test_a_hook_without_losses_gets_mask_rcnns_loss_mask_on_its_logits():
    from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss

    cfg = tiny_cfg("HookedDefaultLossROIHeads")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    torch.manual_seed(1)
    with EventStorage():
        losses = model(make_batch(num_instances=(3, 2)))
        instances, logits = model.roi_heads.last
        expected = mask_rcnn_loss(logits, instances)  # Detectron2's, from the GT polygons
    assert "loss_toy" not in losses and "loss_maskiou" in losses
    torch.testing.assert_close(losses["loss_mask"], expected)


def test_subclassing_a_registered_mask_scoring_class_is_allowed():
    """Before the fix the mixin's base-order check refused any subclass of MaskScoringROIHeads
    (it took MaskScoringROIHeads itself for a ROI heads class placed before the mixin)."""
    from ms_rcnn import MaskScoringROIHeads

    class ProjectROIHeads(MaskScoringROIHeads):
        pass

    assert ProjectROIHeads.__mro__.index(MaskScoringMixin) > 0
