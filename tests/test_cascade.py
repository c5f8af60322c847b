"""CascadeMaskScoringROIHeads in a tiny Cascade Mask R-CNN: losses, gradients, inference fields,
weights shared with Detectron2's CascadeROIHeads, and the Soft-NMS refusal."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.utils.events import EventStorage

from ms_rcnn import CascadeMaskScoringROIHeads, MaskScoringMixin

STAGE_LOSSES = {f"{k}_stage{s}" for k in ("loss_cls", "loss_box_reg") for s in range(3)}
CASCADE_MS_LOSSES = STAGE_LOSSES | {"loss_mask", "loss_maskiou", "loss_rpn_cls", "loss_rpn_loc"}


def cascade_cfg(roi_heads="CascadeMaskScoringROIHeads"):
    cfg = tiny_cfg(roi_heads)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # required by Detectron2's Cascade
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def build(roi_heads="CascadeMaskScoringROIHeads", seed=0):
    torch.manual_seed(seed)
    return build_model(cascade_cfg(roi_heads))


def train_losses(model, batch, seed=7):
    model.train()
    torch.manual_seed(seed)
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


def infer(model, batch):
    model.eval()
    with torch.no_grad():
        return [o["instances"] for o in model(batch)]


def test_registered_class_is_the_mixin_on_detectron2_cascade():
    model = build()
    assert type(model.roi_heads) is CascadeMaskScoringROIHeads
    assert isinstance(model.roi_heads, MaskScoringMixin)
    assert isinstance(model.roi_heads, CascadeROIHeads)
    assert model.roi_heads.num_cascade_stages == 3


def test_training_losses_and_gradients_reach_the_maskiou_head():
    model = build()
    model.roi_heads.maskiou_head.predictor.weight.data.normal_(std=1.0)  # visible gradients
    losses, storage = train_losses(model, make_batch(num_instances=(3, 2)))
    assert set(losses) == CASCADE_MS_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_maskiou"] > 0
    assert "maskiou/num_pos" in storage.histories()
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.roi_heads.maskiou_head.parameters()]
    assert all(g is not None for g in head_grads)
    assert sum(float(g.abs().sum()) for g in head_grads) > 0
    for stage in model.roi_heads.box_predictor:  # every cascade stage is trained too
        assert float(stage.cls_score.weight.grad.abs().sum()) > 0


def test_same_seed_gives_the_cascade_baseline_initial_weights():
    baseline = build("CascadeROIHeads", seed=5).state_dict()
    ms = build(seed=5).state_dict()
    assert {k for k in ms if k not in baseline} == {
        k for k in ms if k.startswith("roi_heads.maskiou_head.")
    }
    for name, value in baseline.items():
        torch.testing.assert_close(ms[name], value, msg=name)


def test_shared_layers_train_and_infer_exactly_like_the_baseline():
    """Same weights and RNG state: every loss but loss_maskiou is Detectron2's Cascade's, bit
    for bit; at inference the boxes, scores and masks are too, and mask_scores rescale them."""
    ms = build()
    baseline = build("CascadeROIHeads", seed=1)
    incompatible = baseline.load_state_dict(ms.state_dict(), strict=False)
    assert not incompatible.missing_keys
    batch = make_batch(num_instances=(3, 2))
    base_losses, _ = train_losses(baseline, batch)
    ms_losses, _ = train_losses(ms, batch)
    assert set(ms_losses) == set(base_losses) | {"loss_maskiou"}
    for key, value in base_losses.items():
        assert torch.equal(ms_losses[key], value), key

    outputs, expected = infer(ms, batch), infer(baseline, batch)
    assert sum(len(o) for o in outputs) > 0
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out.pred_boxes.tensor, ref.pred_boxes.tensor)
        torch.testing.assert_close(out.scores, ref.scores)
        torch.testing.assert_close(out.pred_masks, ref.pred_masks)
        assert (out.pred_maskiou >= 0).all() and (out.pred_maskiou <= 1).all()
        torch.testing.assert_close(out.mask_scores, out.scores * out.pred_maskiou)


def test_cascade_checkpoint_loads_with_only_the_maskiou_head_new(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    baseline = build("CascadeROIHeads", seed=2)
    DetectionCheckpointer(baseline, save_dir=str(tmp_path)).save("cascade")
    model = build(seed=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items() if "maskiou_head" in k}
    incompatible = model.load_state_dict(baseline.state_dict(), strict=False)
    assert not incompatible.unexpected_keys
    assert {k.split(".")[1] for k in incompatible.missing_keys} == {"maskiou_head"}
    model = build(seed=3)
    DetectionCheckpointer(model).load(str(tmp_path / "cascade.pth"))
    state = model.state_dict()
    for name, value in baseline.state_dict().items():
        torch.testing.assert_close(state[name], value, msg=name)
    for name, value in fresh.items():  # the new head keeps its own initialization
        torch.testing.assert_close(state[name], value, msg=name)


def test_soft_nms_is_refused_with_a_clear_message():
    from ms_rcnn.engine import check_soft_nms_supported

    cfg = cascade_cfg()
    cfg.TEST.SOFT_NMS.ENABLED = True
    with pytest.raises(ValueError, match=r"TEST\.SOFT_NMS\.ENABLED.*CascadeMaskScoringROIHeads"):
        build_model(cfg)
    # The plain Cascade baseline is refused by the trainer's check (it would ignore the key).
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    with pytest.raises(ValueError, match="TEST.SOFT_NMS.ENABLED=True"):
        check_soft_nms_supported(cfg, build_model(cfg))


def test_requires_class_agnostic_box_regression_like_detectron2():
    cfg = cascade_cfg()
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    with pytest.raises(AssertionError, match="class-agnostic"):
        build_model(cfg)
