"""Test-time augmentation: the MaskIoU fields, OVERWRITE_SCORES, and Soft-NMS refused."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model

from ms_rcnn.modeling.tta import MaskScoringRCNNWithTTA


def tta_cfg(**overrides):
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.AUG.MIN_SIZES = (48, 64)
    cfg.TEST.AUG.MAX_SIZE = 100
    cfg.TEST.AUG.FLIP = True
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def run_tta(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    # Spread the predicted IoUs over [0, 1] so that scores and mask scores clearly differ.
    torch.nn.init.normal_(model.roi_heads.maskiou_head.predictor.weight, std=0.5)
    torch.nn.init.constant_(model.roi_heads.maskiou_head.predictor.bias, 0.5)
    tta = MaskScoringRCNNWithTTA(cfg, model, batch_size=2)
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch()]
    with torch.no_grad():
        return [out["instances"] for out in tta(inputs)]


def test_test_time_augmentation_keeps_mask_scores():
    outputs = run_tta(tta_cfg())
    assert sum(len(o) for o in outputs) > 0
    for inst in outputs:
        assert inst.has("pred_maskiou") and inst.has("pred_masks")
        torch.testing.assert_close(inst.mask_scores, inst.scores * inst.pred_maskiou)
        assert (inst.pred_maskiou >= 0).all() and (inst.pred_maskiou <= 1).all()


def test_overwrite_scores_under_tta():
    # Same weights with and without OVERWRITE_SCORES: the detections, masks and IoUs are the
    # same; with it, `scores` is the mask score of the run without it (class score x IoU,
    # the IoU applied once).
    plain = run_tta(tta_cfg())
    overwritten = run_tta(tta_cfg(**{"MODEL.ROI_MASKIOU_HEAD.OVERWRITE_SCORES": True}))
    assert sum(len(o) for o in plain) > 0
    differ = False
    for a, b in zip(plain, overwritten):
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor)
        torch.testing.assert_close(b.pred_maskiou, a.pred_maskiou)
        torch.testing.assert_close(b.mask_scores, a.mask_scores)
        torch.testing.assert_close(b.scores, a.scores * a.pred_maskiou)
        torch.testing.assert_close(b.scores, b.mask_scores)
        differ |= bool((a.scores - a.mask_scores).abs().max() > 0.05)
    assert differ, "the test needs predicted IoUs away from 1 to tell the two scores apart"


def test_soft_nms_with_tta_is_refused_at_build():
    cfg = tta_cfg(**{"TEST.SOFT_NMS.ENABLED": True})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match=r"TEST\.SOFT_NMS\.ENABLED.*TEST\.AUG\.ENABLED"):
        MaskScoringRCNNWithTTA(cfg, model)


@pytest.mark.parametrize("soft_nms", [False, True])
def test_trainer_refuses_soft_nms_with_tta_before_training(soft_nms):
    # train_net builds the TTA wrapper only after training: the trainer's model build is where
    # the combination must already fail. Soft-NMS alone, or TTA alone, is fine.
    from ms_rcnn.engine import Trainer

    cfg = tta_cfg(**{"TEST.SOFT_NMS.ENABLED": soft_nms, "TEST.AUG.ENABLED": True})
    if soft_nms:
        with pytest.raises(ValueError, match=r"TEST\.SOFT_NMS\.ENABLED.*TEST\.AUG\.ENABLED"):
            Trainer.build_model(cfg)
    else:
        Trainer.build_model(cfg)
    cfg.TEST.AUG.ENABLED = False
    Trainer.build_model(cfg)
