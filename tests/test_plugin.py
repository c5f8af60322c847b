"""A third-party ROI heads class gets mask scoring from MaskScoringMixin alone, without
subclassing MaskScoringROIHeads; classes the mixin cannot serve are refused, naming why."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, ROI_MASK_HEAD_REGISTRY, build_model
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, StandardROIHeads
from detectron2.utils.events import EventStorage
from torch import nn

from ms_rcnn import MaskIoUHead, MaskScoringMixin, MaskScoringROIHeads


class ToyROIHeads(StandardROIHeads):
    """A project's own ROI heads: its box head has a conv (from its own from_config hook), its
    forward adds a loss of its own and tags every detection."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        height, width = ret["box_pooler"].output_size
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        pooled = ShapeSpec(channels=channels, height=height, width=width)
        ret["box_head"] = FastRCNNConvFCHead(pooled, conv_dims=[4], fc_dims=[16])
        return ret

    def forward(self, images, features, proposals, targets=None):
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals)
            losses.update(self._forward_mask(features, proposals))
            losses["loss_toy"] = 0.0 * sum(p.sum() for p in self.box_head.parameters())
            return proposals, losses
        instances = self.forward_with_given_boxes(features, self._forward_box(features, proposals))
        for x in instances:
            x.toy_tag = torch.ones_like(x.scores)
        return instances, {}


@ROI_HEADS_REGISTRY.register()
class ToyMaskScoringROIHeads(MaskScoringMixin, ToyROIHeads):
    """All it takes: the mixin first, the project's class second."""


def toy_model(name="ToyMaskScoringROIHeads"):
    cfg = tiny_cfg(name)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    return build_model(cfg)


def test_mixin_adds_mask_scoring_to_a_third_party_class():
    model = toy_model()
    heads = model.roi_heads
    assert not isinstance(heads, MaskScoringROIHeads)
    assert heads.box_head.conv_norm_relus  # the project's own box head is kept
    heads.maskiou_head.predictor.weight.data.normal_(std=1.0)
    model.train()
    with EventStorage():
        losses = model(make_batch(num_instances=(2, 3)))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_maskiou",
                           "loss_rpn_cls", "loss_rpn_loc", "loss_toy"}  # fmt: skip
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_maskiou"] > 0
    losses["loss_maskiou"].backward()
    assert sum(float(p.grad.abs().sum()) for p in heads.maskiou_head.parameters()) > 0

    model.eval()
    with torch.no_grad():
        outputs = [o["instances"] for o in model(make_batch(num_instances=(1, 1)))]
    assert sum(len(x) for x in outputs) > 0
    for x in outputs:
        assert x.has("toy_tag")  # the project's forward still runs
        assert (x.pred_maskiou >= 0).all() and (x.pred_maskiou <= 1).all()
        torch.testing.assert_close(x.mask_scores, x.scores * x.pred_maskiou)


def test_mixin_class_builds_from_plain_keyword_arguments():
    # LazyConfig (and any caller without a yacs config) passes every argument by keyword.
    cfg = tiny_cfg("StandardROIHeads")
    backbone_shape = build_model(cfg).backbone.output_shape()
    kwargs = ToyROIHeads.from_config(cfg, backbone_shape)
    features = ShapeSpec(channels=8, height=14, width=14)  # FPN channels, mask pooler size
    head = MaskIoUHead(features, num_classes=3, conv_dims=[8, 8], fc_dims=[16])
    heads = ToyMaskScoringROIHeads(maskiou_head=head, maskiou_loss_weight=2.0, **kwargs)
    assert heads.maskiou_head is head and heads.maskiou_loss_weight == 2.0
    assert heads.box_head.conv_norm_relus


class OwnMaskBranchROIHeads(StandardROIHeads):
    def _forward_mask(self, features, instances):
        return super()._forward_mask(features, instances)


@ROI_HEADS_REGISTRY.register()
class OwnMaskBranchMaskScoringROIHeads(MaskScoringMixin, OwnMaskBranchROIHeads):
    pass


def test_class_with_its_own_mask_branch_is_refused():
    with pytest.raises(TypeError, match="OwnMaskBranchROIHeads, which overrides _forward_mask"):
        toy_model("OwnMaskBranchMaskScoringROIHeads")


@ROI_MASK_HEAD_REGISTRY.register()
class PlainMaskHead(nn.Module):
    """A mask head that is not a BaseMaskRCNNHead: no layers() to get its logits from."""

    def __init__(self, cfg, input_shape):
        super().__init__()


def test_mask_head_without_layers_is_refused():
    cfg = tiny_cfg("ToyMaskScoringROIHeads")
    cfg.MODEL.ROI_MASK_HEAD.NAME = "PlainMaskHead"
    with pytest.raises(TypeError, match="BaseMaskRCNNHead"):
        build_model(cfg)


def test_mixin_needs_the_mask_branch():
    cfg = tiny_cfg("ToyMaskScoringROIHeads")
    cfg.MODEL.MASK_ON = False
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        build_model(cfg)


def test_mixin_after_the_roi_heads_class_is_refused():
    """With the ROI heads class first, its own methods would win and the mixin would silently
    do nothing: refused when the class is defined."""
    with pytest.raises(TypeError, match="put MaskScoringMixin before ToyROIHeads"):

        class WrongOrder(ToyROIHeads, MaskScoringMixin):
            pass


def test_targets_with_a_gt_index_field_of_their_own_are_refused():
    model = toy_model("ToyMaskScoringROIHeads")
    batch = make_batch()
    batch[0]["instances"].gt_index = torch.zeros(len(batch[0]["instances"]), dtype=torch.int64)
    model.train()
    with EventStorage(), pytest.raises(ValueError, match="'gt_index'"):
        model(batch)
