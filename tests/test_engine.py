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


def test_cuda_device_without_gpu_is_named(tmp_path):
    from types import SimpleNamespace

    from ms_rcnn.engine import setup

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    config = tmp_path / "c.yaml"
    config.write_text('MODEL:\n  DEVICE: "cuda"\n')
    args = SimpleNamespace(config_file=str(config), opts=[], eval_only=False)
    with pytest.raises(ValueError, match="MODEL.DEVICE cpu"):
        setup(args)
