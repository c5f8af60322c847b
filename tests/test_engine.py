"""Trainer helpers: training only the MaskIoU head, and config errors named before training."""

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from ms_rcnn.engine import Trainer, freeze_all_but_maskiou


def test_train_only_maskiou_freezes_everything_else():
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL.ROI_MASKIOU_HEAD.TRAIN_ONLY_MASKIOU = True
    model = Trainer.build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("roi_heads.maskiou_head.") for n in trainable)
    head = {n for n, _ in model.named_parameters() if n.startswith("roi_heads.maskiou_head.")}
    assert trainable == head
    optimizer = Trainer.build_optimizer(cfg, model)
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.roi_heads.maskiou_head.parameters()}


def test_train_only_maskiou_needs_the_head():
    with pytest.raises(ValueError, match="MaskScoringROIHeads"):
        freeze_all_but_maskiou(build_model(tiny_cfg("StandardROIHeads")))


def test_cuda_device_without_gpu_is_named(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ms_rcnn.engine import setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    config = tmp_path / "c.yaml"
    config.write_text('MODEL:\n  DEVICE: "cuda"\n')
    args = SimpleNamespace(config_file=str(config), opts=[], eval_only=False)
    with pytest.raises(ValueError, match="MODEL.DEVICE cpu"):
        setup(args)


def test_setup_logs_which_detectron2_this_is(tmp_path, caplog):
    """The training log's first lines say which Detectron2 build runs (ms_rcnn.env)."""
    from types import SimpleNamespace

    from ms_rcnn.engine import setup
    from ms_rcnn.env import detectron2_line

    config = tmp_path / "c.yaml"
    config.write_text("MODEL:\n  DEVICE: cpu\n")
    args = SimpleNamespace(config_file=str(config), opts=["OUTPUT_DIR", str(tmp_path / "out")],
                           eval_only=False)  # fmt: skip
    with caplog.at_level("INFO", logger="ms_rcnn.engine"):
        setup(args)
    assert f"Running on {detectron2_line()}" in caplog.text
    assert detectron2_line() in (tmp_path / "out" / "log.txt").read_text()


def baseline_then_head_only(tmp_path, norm="FrozenBN"):
    """A baseline Mask R-CNN, saved; MS R-CNN built from it with TRAIN_ONLY_MASKIOU."""
    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    torch.manual_seed(0)
    cfg = tiny_cfg("StandardROIHeads")
    cfg.MODEL.RESNETS.NORM = norm
    baseline = build_model(cfg)
    MSRCNNCheckpointer(baseline, str(tmp_path)).save("baseline")
    torch.manual_seed(1)  # other initial weights: everything shared must come from the file
    cfg.MODEL.ROI_HEADS.NAME = "MaskScoringROIHeads"
    cfg.MODEL.ROI_MASKIOU_HEAD.TRAIN_ONLY_MASKIOU = True
    cfg.SOLVER.BASE_LR = 0.05
    model = Trainer.build_model(cfg)
    MSRCNNCheckpointer(model).resume_or_load(str(tmp_path / "baseline.pth"), resume=False)
    return cfg, baseline, model


def test_baseline_checkpoint_loads_every_shared_layer(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        _, baseline, model = baseline_then_head_only(tmp_path)
    shared = baseline.state_dict()
    state = model.state_dict()
    assert set(state) - set(shared) == {k for k in state if ".maskiou_head." in k}
    assert all(torch.equal(state[k], v) for k, v in shared.items())
    messages = [r.getMessage() for r in caplog.records]
    assert any("except the MaskIoU head, which is new" in m for m in messages), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_head_only_training_keeps_the_baseline_exactly(tmp_path, norm):
    """Frozen steps compute no gradient outside the head, leave every other parameter and
    buffer (BN statistics too) bit-identical, so boxes and masks are the baseline's."""
    from conftest import make_batch
    from detectron2.utils.events import EventStorage

    cfg, baseline, model = baseline_then_head_only(tmp_path, norm)
    probe = make_batch("polygon", seed=7)

    def predict(m):
        m.eval()
        with torch.no_grad():
            return [x["instances"] for x in m(probe)]

    start = predict(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = Trainer.build_optimizer(cfg, model)
    model.train()
    with EventStorage(0):
        for step in range(3):
            losses = model(make_batch("polygon", seed=step))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    for name, p in model.named_parameters():
        if ".maskiou_head." not in name:
            assert p.grad is None, name
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".maskiou_head." in k for k in changed), changed

    # The same detections and masks as before training; with FrozenBN (no conversion) also
    # bit-identical to the baseline model itself. Only the mask scores changed.
    references = [start] + ([predict(baseline)] if norm == "FrozenBN" else [])
    got = predict(model)
    for reference in references:
        for w, g in zip(reference, got):
            assert len(w) > 0
            assert torch.equal(w.pred_boxes.tensor, g.pred_boxes.tensor)
            assert torch.equal(w.scores, g.scores) and torch.equal(w.pred_classes, g.pred_classes)
            assert torch.equal(w.pred_masks, g.pred_masks)
    assert not all(torch.equal(a.mask_scores, b.mask_scores) for a, b in zip(start, got))
