"""MaskScoringROIHeads inside a tiny Mask R-CNN: losses, gradients, inference fields, edge cases."""

import logging

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from ms_rcnn import mask_iou_targets

MS_LOSSES = {
    "loss_cls", "loss_box_reg", "loss_mask", "loss_maskiou", "loss_rpn_cls", "loss_rpn_loc"
}  # fmt: skip


def ms_model(device="cpu", **overrides):
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format=overrides.pop("mask_format", "polygon"),
                   device=device)  # fmt: skip
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    torch.manual_seed(0)
    return build_model(cfg)


def without_instances(batch, index):
    inst = batch[index]["instances"]
    batch[index]["instances"] = inst[torch.zeros(len(inst), dtype=torch.bool)]
    return batch


def train_losses(model, batch):
    model.train()
    with EventStorage() as storage:
        losses = model(batch)
    return losses, storage


@pytest.mark.device
@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_loss_keys_values_and_metrics(mask_format, device):
    model = ms_model(device, mask_format=mask_format)
    captured = {}
    model.roi_heads.maskiou_head.register_forward_hook(
        lambda mod, inp, out: captured.update(pred=out, mask=inp[1])
    )
    model.roi_heads.mask_head.register_forward_hook(lambda mod, inp, out: None)
    losses, storage = train_losses(model, make_batch(mask_format))
    assert set(losses) == MS_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    assert "maskiou/num_pos" in storage.histories()
    # The MaskIoU loss is 0.5 * MSE of the GT-class column over RoIs with a positive target.
    pred = captured["pred"]
    assert captured["mask"].shape[1:] == (1, 28, 28)
    assert captured["mask"].min() >= 0 and captured["mask"].max() <= 1  # probabilities
    assert losses["loss_maskiou"] >= 0
    assert pred.shape[1] == 3


@pytest.mark.device
def test_zero_positive_batch_keeps_keys_and_graph(device):
    model = ms_model(device)
    batch = without_instances(without_instances(make_batch(), 0), 1)
    losses, _ = train_losses(model, batch)
    assert set(losses) == MS_LOSSES
    assert losses["loss_maskiou"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
    for p in model.roi_heads.maskiou_head.parameters():
        assert p.grad is not None  # connected: DDP sees every parameter used


def test_half_empty_batch():
    model = ms_model()
    losses, storage = train_losses(model, without_instances(make_batch(), 1))
    assert set(losses) == MS_LOSSES and torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()


def _grad_of(module):
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return sum(float(g.abs().sum()) for g in grads)


@pytest.mark.parametrize(
    "detach_mask,detach_features,to_mask_head,to_backbone",
    # With the mask not detached, the gradient reaches the backbone through the mask head too.
    [(True, False, False, True), (False, True, True, True), (True, True, False, False)],
)
def test_gradient_stops(detach_mask, detach_features, to_mask_head, to_backbone):
    model = ms_model(**{"MODEL.ROI_MASKIOU_HEAD.DETACH_MASK": detach_mask,
                        "MODEL.ROI_MASKIOU_HEAD.DETACH_FEATURES": detach_features})  # fmt: skip
    model.roi_heads.maskiou_head.predictor.weight.data.normal_(std=1.0)  # make gradients visible
    losses, _ = train_losses(model, make_batch())
    assert losses["loss_maskiou"] > 0
    losses["loss_maskiou"].backward()  # only the MaskIoU loss
    assert _grad_of(model.roi_heads.maskiou_head) > 0
    assert (_grad_of(model.roi_heads.mask_head) > 0) == to_mask_head
    assert (_grad_of(model.backbone) > 0) == to_backbone
    assert _grad_of(model.roi_heads.box_predictor) == 0


def infer(model, batch, **kwargs):
    model.eval()
    with torch.no_grad():
        return [o["instances"] for o in model(batch, **kwargs)]


@pytest.mark.device
def test_inference_fields_and_per_image_split(device):
    model = ms_model(device, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})
    batch = make_batch(num_instances=(2, 1, 3))
    outputs = infer(model, batch)
    counts = [len(x) for x in outputs]
    assert sum(counts) > 0
    for out, single in zip(outputs, batch):
        for field in ["pred_maskiou", "mask_scores", "scores", "pred_masks"]:
            assert out.has(field)
        torch.testing.assert_close(out.mask_scores, out.scores * out.pred_maskiou)
        assert (out.pred_maskiou >= 0).all() and (out.pred_maskiou <= 1).all()
        # Each image's result does not depend on the other images of the batch.
        alone = infer(model, [single])[0]
        torch.testing.assert_close(alone.pred_maskiou, out.pred_maskiou, atol=1e-5, rtol=1e-4)


@pytest.mark.device
def test_zero_detections(device):
    model = ms_model(device, **{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})
    outputs = infer(model, make_batch())
    for out in outputs:
        assert len(out) == 0 and out.has("mask_scores") and out.has("pred_maskiou")


def test_given_boxes_path_runs_maskiou():
    # GeneralizedRCNN.inference(detected_instances=...) and TTA use forward_with_given_boxes.
    model = ms_model()
    batch = make_batch()
    given = []
    for item in batch:
        inst = Instances(item["instances"].image_size)
        inst.pred_boxes = item["instances"].gt_boxes
        inst.pred_classes = item["instances"].gt_classes
        inst.scores = torch.full((len(inst),), 0.5)
        given.append(inst)
    model.eval()
    with torch.no_grad():
        outputs = model.inference(batch, detected_instances=given)
    for out, inst in zip(outputs, given):
        out = out["instances"]
        assert len(out) == len(inst)
        torch.testing.assert_close(out.mask_scores, 0.5 * out.pred_maskiou)


def test_class_agnostic_masks():
    model = ms_model(**{"MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True,
                        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0})  # fmt: skip
    losses, _ = train_losses(model, make_batch())
    assert set(losses) == MS_LOSSES
    outputs = infer(model, make_batch())
    assert all(o.has("mask_scores") for o in outputs)


def test_training_uses_gt_class_channel_and_column(monkeypatch):
    # Capture what the heads saw, then recompute the loss by hand from it.
    import ms_rcnn.modeling.mask_scoring as roi_heads_module

    model = ms_model()
    model.roi_heads.maskiou_head.predictor.weight.data.normal_(std=1.0)
    seen = {}
    real_targets = roi_heads_module.mask_iou_targets

    def spy_targets(logits, instances, threshold, gt_crops):
        seen["logits"], seen["instances"] = logits, instances
        seen["targets"] = real_targets(logits, instances, threshold, gt_crops=gt_crops)
        # The crops shared with the mask loss give the targets computed from scratch.
        assert torch.equal(seen["targets"], real_targets(logits, instances, threshold))
        return seen["targets"]

    monkeypatch.setattr(roi_heads_module, "mask_iou_targets", spy_targets)
    model.roi_heads.maskiou_head.register_forward_hook(
        lambda m, i, o: seen.update(pred=o, probs=i[1])
    )
    losses, _ = train_losses(model, make_batch())
    gt = torch.cat([x.gt_classes for x in seen["instances"]])
    rows = torch.arange(len(gt))
    torch.testing.assert_close(seen["probs"][:, 0], seen["logits"][rows, gt].sigmoid())
    t = seen["targets"]
    keep = t > 0
    assert keep.any()
    expected = 0.5 * ((seen["pred"][rows, gt][keep] - t[keep]) ** 2).mean()
    torch.testing.assert_close(losses["loss_maskiou"], expected)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_shared_layers_train_exactly_like_the_baseline(mask_format):
    """Same weights, same RNG state, same batch: every loss but loss_maskiou is the baseline's
    bit for bit, as are the mask-loss metrics. The GT crop shared between the mask loss and the
    MaskIoU targets (one float conversion per GT, not per RoI) changes nothing Detectron2
    computes; and the caller's GT instances are left untouched."""
    ms = ms_model(mask_format=mask_format)
    baseline = build_model(tiny_cfg("StandardROIHeads", mask_format=mask_format))
    missing = baseline.load_state_dict(ms.state_dict(), strict=False)
    assert not missing.missing_keys
    batch = make_batch(mask_format, num_instances=(3, 2))
    fields = [set(b["instances"].get_fields()) for b in batch]
    results = []
    for model in (baseline, ms):
        torch.manual_seed(7)
        results.append(train_losses(model, batch))
    (base_losses, base_storage), (ms_losses, ms_storage) = results
    assert set(ms_losses) == set(base_losses) | {"loss_maskiou"}
    for key, value in base_losses.items():
        assert torch.equal(ms_losses[key], value), key
    for key in ("mask_rcnn/accuracy", "mask_rcnn/false_positive", "mask_rcnn/false_negative"):
        assert ms_storage.histories()[key].latest() == base_storage.histories()[key].latest()
    assert [set(b["instances"].get_fields()) for b in batch] == fields


def test_requires_mask_on():
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        ms_model(**{"MODEL.MASK_ON": False})


def test_baseline_checkpoint_loads_with_new_maskiou_head(tmp_path, caplog):
    torch.manual_seed(1)
    baseline = build_model(tiny_cfg("StandardROIHeads"))
    DetectionCheckpointer(baseline, save_dir=str(tmp_path)).save("baseline")
    model = ms_model()
    fresh_predictor = model.roi_heads.maskiou_head.predictor.weight.clone()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(str(tmp_path / "baseline.pth"))
    for name, value in baseline.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    torch.testing.assert_close(model.roi_heads.maskiou_head.predictor.weight, fresh_predictor)
    assert "roi_heads.maskiou_head" in caplog.text  # the log names what was not in the file


def test_mask_iou_targets_exported():
    assert callable(mask_iou_targets)


def test_soft_nms_roi_heads_equal_standard_when_disabled():
    torch.manual_seed(3)
    standard = build_model(tiny_cfg("StandardROIHeads"))
    torch.manual_seed(3)
    soft = build_model(tiny_cfg("SoftNMSROIHeads"))
    for (name, a), (_, b) in zip(standard.state_dict().items(), soft.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    batch = make_batch()
    for a, b in zip(infer(standard, batch), infer(soft, batch)):
        torch.testing.assert_close(a.scores, b.scores)
        torch.testing.assert_close(a.pred_masks, b.pred_masks)


def test_ms_rcnn_shares_initial_weights_with_baseline():
    # Same seed: every layer the two models share starts from the same weights.
    torch.manual_seed(5)
    baseline = build_model(tiny_cfg("StandardROIHeads")).state_dict()
    torch.manual_seed(5)
    ms = build_model(tiny_cfg("MaskScoringROIHeads")).state_dict()
    for name, value in baseline.items():
        torch.testing.assert_close(ms[name], value, msg=name)


def test_soft_nms_on_standard_roi_heads_is_refused():
    from ms_rcnn.engine import check_soft_nms_supported

    cfg = tiny_cfg("StandardROIHeads")
    cfg.TEST.SOFT_NMS.ENABLED = True
    with pytest.raises(ValueError, match="SoftNMSROIHeads"):
        check_soft_nms_supported(cfg, build_model(cfg))
    cfg.MODEL.ROI_HEADS.NAME = "MaskScoringROIHeads"
    check_soft_nms_supported(cfg, build_model(cfg))


@pytest.mark.parametrize("roi_heads", ["SoftNMSROIHeads", "MaskScoringROIHeads"])
def test_soft_nms_switch_is_test_only(roi_heads):
    models = {}
    for enabled in (False, True):
        cfg = tiny_cfg(roi_heads)
        cfg.TEST.SOFT_NMS.ENABLED = enabled
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        cfg.TEST.DETECTIONS_PER_IMAGE = 7
        torch.manual_seed(0)
        models[enabled] = build_model(cfg)
    batch = make_batch()
    torch.manual_seed(1)
    off, _ = train_losses(models[False], batch)
    torch.manual_seed(1)
    on, _ = train_losses(models[True], batch)
    assert off.keys() == on.keys()
    for key in off:  # training (RPN included) does not change
        torch.testing.assert_close(off[key], on[key])
    for out in infer(models[True], batch):
        assert 0 < len(out) <= 7
        assert (out.scores[:-1] >= out.scores[1:]).all()  # decayed scores, sorted
        if roi_heads == "MaskScoringROIHeads":
            torch.testing.assert_close(out.mask_scores, out.scores * out.pred_maskiou)
