"""Mask scoring on PointRend: PointRendMaskScoringROIHeads in a tiny PointRend model (losses,
gradients, inference fields, parity with PointRend's own ROI heads), the configs that select
it, the PointRend import and the export refusal."""

import importlib

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ms_rcnn.config import import_point_rend

point_rend = import_point_rend()

MS_LOSSES = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} | {
    "loss_mask", "loss_mask_point", "loss_maskiou"
}  # fmt: skip


def pointrend_cfg(roi_heads="PointRendMaskScoringROIHeads", mask="refined"):
    cfg = tiny_cfg(roi_heads, mask_format="bitmask")
    point_rend.add_pointrend_config(cfg)
    cfg.MODEL.ROI_MASK_HEAD.NAME = "PointRendMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
    cfg.MODEL.ROI_MASK_HEAD.IN_FEATURES = ("p2",)
    cfg.MODEL.ROI_MASK_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = True
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = 3
    cfg.MODEL.POINT_HEAD.FC_DIM = 8
    cfg.MODEL.POINT_HEAD.TRAIN_NUM_POINTS = 49
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK = mask
    return cfg


def build(roi_heads="PointRendMaskScoringROIHeads", mask="refined", seed=0, **overrides):
    cfg = pointrend_cfg(roi_heads, mask)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    torch.manual_seed(seed)
    return build_model(cfg)


def train_losses(model, batch, seed=7):
    model.train()
    torch.manual_seed(seed)
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


@pytest.mark.parametrize("mask", ["refined", "coarse"])
def test_training_step_has_pointrend_losses_and_trains_the_maskiou_head(mask):
    model = build(mask=mask)
    model.roi_heads.maskiou_head.predictor.weight.data.normal_(std=1.0)  # visible gradients
    losses, storage = train_losses(model, make_batch("bitmask", num_instances=(3, 2)))
    assert set(losses) == MS_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_maskiou"] > 0 and storage.histories()["maskiou/num_pos"].latest() > 0
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.roi_heads.maskiou_head.parameters()]
    assert all(g is not None for g in head_grads)
    assert sum(float(g.abs().sum()) for g in head_grads) > 0
    point_head = model.roi_heads.mask_head.point_head
    assert float(point_head.predictor.weight.grad.abs().sum()) > 0  # PointRend still trains


def test_maskiou_target_is_the_scored_masks_iou_at_the_head_resolution():
    """The logged mean target equals mask_iou_targets of the refined grid mask computed here
    from PointRend's own point head, i.e. the IoU of the mask being scored."""
    from ms_rcnn import mask_iou_targets

    model = build()
    heads = model.roi_heads
    seen = {}
    original = heads.mask_scoring_inputs

    def recording(features, instances):
        out = original(features, instances)
        seen.update(features=features, instances=instances, logits=out.mask_logits)
        return out

    heads.mask_scoring_inputs = recording
    _, storage = train_losses(model, make_batch("bitmask", num_instances=(3, 2)))
    instances, features = seen["instances"], seen["features"]
    assert seen["logits"].shape[-1] == 2 * heads.maskiou_head.input_resolution == 28
    # PointRend's subdivision inference with its first grid at 28 x 28 and no further step
    # computes the point head on exactly that grid: use it as the independent mask.
    head = heads.mask_head
    boxes = [x.proposal_boxes for x in instances]
    coarse = head.coarse_head(head._roi_pooler(features, boxes))
    with torch.no_grad():
        views = []
        for inst in instances:
            view = Instances(inst.image_size, pred_boxes=inst.proposal_boxes)
            view.pred_classes = inst.gt_classes
            views.append(view)
        head.training, head.mask_point_subdivision_steps = False, 0
        head.mask_point_subdivision_init_resolution = 28
        head._subdivision_inference(features, coarse, views)
    probs = torch.cat([v.pred_masks for v in views])[:, 0]
    logits = torch.logit(probs.double().clamp(1e-12, 1 - 1e-12)).float()
    classes = torch.cat([x.gt_classes for x in instances])
    full = torch.zeros(len(classes), 3, 28, 28)
    full[torch.arange(len(classes)), classes] = logits
    expected = mask_iou_targets(full, instances)
    positive = expected > 0
    assert positive.any()
    latest = storage.histories()["maskiou/mean_target"].latest()
    assert latest == pytest.approx(float(expected[positive].mean()), abs=1e-4)


def test_same_weights_and_losses_as_pointrend_and_inference_scores_its_masks():
    baseline = build("PointRendROIHeads", seed=3)
    ms = build(seed=3)
    base_state, ms_state = baseline.state_dict(), ms.state_dict()
    assert {k for k in ms_state if k not in base_state} == {
        k for k in ms_state if k.startswith("roi_heads.maskiou_head.")
    }
    for name, value in base_state.items():
        torch.testing.assert_close(ms_state[name], value, msg=name)
    batch = make_batch("bitmask", num_instances=(3, 2))
    base_losses, _ = train_losses(baseline, batch)
    ms_losses, _ = train_losses(ms, batch)
    for key, value in base_losses.items():  # PointRend's own losses, bit for bit
        torch.testing.assert_close(ms_losses[key], value, rtol=0, atol=0, msg=key)

    baseline.eval()
    ms.eval()
    with torch.no_grad():
        base_out = [o["instances"] for o in baseline(batch)]
        ms_out = [o["instances"] for o in ms(batch)]
    assert len(ms_out) == 2 and sum(len(x) for x in ms_out) > 0
    for b, m in zip(base_out, ms_out):
        torch.testing.assert_close(m.pred_masks, b.pred_masks)
        torch.testing.assert_close(m.scores, b.scores)
        assert ((m.pred_maskiou >= 0) & (m.pred_maskiou <= 1)).all()
        torch.testing.assert_close(m.mask_scores, m.scores * m.pred_maskiou)


@pytest.mark.parametrize("mask", ["refined", "coarse"])
def test_inference_on_given_boxes_with_an_image_without_detections(mask):
    model = build(mask=mask).eval()
    batch = make_batch("bitmask", num_instances=(1, 1))
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        dets = Instances(
            (64, 64), pred_boxes=Boxes(torch.tensor([[4.0, 4, 40, 40], [8, 20, 60, 50]]))
        )
        dets.pred_classes, dets.scores = torch.tensor([0, 2]), torch.tensor([0.9, 0.5])
        empty = Instances((64, 64), pred_boxes=Boxes(torch.zeros(0, 4)))
        empty.pred_classes, empty.scores = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        out = model.roi_heads.forward_with_given_boxes(features, [dets, empty])
        # Independently: the MaskIoU head on PointRend's RoI features and the scored mask.
        head = model.roi_heads.mask_head
        roi = head._roi_pooler(features, [dets.pred_boxes])
        coarse = head.coarse_head(roi)
        if mask == "coarse":
            logits = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear")
        else:
            logits = model.roi_heads._refined_on_grid(features, [dets.pred_boxes], coarse, 28)
        probs = logits[torch.arange(2), dets.pred_classes].unsqueeze(1).sigmoid()
        expected = model.roi_heads.maskiou_head(roi, probs)[torch.arange(2), dets.pred_classes]
    torch.testing.assert_close(out[0].pred_maskiou, expected.clamp(0, 1))
    torch.testing.assert_close(out[0].mask_scores, dets.scores * out[0].pred_maskiou)
    assert out[0].pred_masks.shape[0] == 2
    assert len(out[1]) == 0 and out[1].mask_scores.shape == (0,)
    assert out[1].pred_maskiou.shape == (0,)


def test_bad_settings_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="POINTREND_MASK"):
        build(mask="fine")
    with pytest.raises(ValueError, match="POINT_HEAD_ON"):
        build(**{"MODEL.ROI_MASK_HEAD.POINT_HEAD_ON": False})
    with pytest.raises(ValueError, match="NEGATIVE_ROIS_PER_IMAGE"):
        build(**{"MODEL.ROI_MASKIOU_HEAD.NEGATIVE_ROIS_PER_IMAGE": 4})
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT"):
        build(**{"INPUT.MASK_FORMAT": "polygon"})
    assert build(mask="coarse", **{"MODEL.ROI_MASK_HEAD.POINT_HEAD_ON": False}) is not None


def test_export_is_refused_with_a_clear_message():
    from ms_rcnn.modeling.export import trace_ms_rcnn

    model = build()
    with pytest.raises(ValueError, match="PointRendMaskScoringROIHeads.*trac"):
        trace_ms_rcnn(model, make_batch("bitmask")[0]["image"])


def test_import_failure_says_what_to_do(monkeypatch):
    real = importlib.import_module

    def no_point_rend(name, *args):
        if name in ("detectron2.projects.point_rend", "point_rend"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_point_rend)
    with pytest.raises(ImportError) as info:
        import_point_rend()
    message = str(info.value)
    assert "pip install -e" in message and "projects/PointRend" in message
    assert "detectron2.projects.point_rend" in message


def test_test_time_augmentation_keeps_the_mask_scores():
    from ms_rcnn import MaskScoringRCNNWithTTA

    cfg = pointrend_cfg()
    cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE = True, (48, 64), 64
    tta = MaskScoringRCNNWithTTA(cfg, build().eval())
    image = make_batch("bitmask", num_instances=(1,))[0]["image"]
    with torch.no_grad():
        out = tta([{"image": image, "height": 64, "width": 64}])[0]["instances"]
    assert len(out) > 0 and out.pred_masks.shape[-2:] == (64, 64)
    torch.testing.assert_close(out.mask_scores, out.scores * out.pred_maskiou)
