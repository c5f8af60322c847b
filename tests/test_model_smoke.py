"""A plain Mask R-CNN builds from the project's base config, trains a step and infers (on
$MS_RCNN_TEST_DEVICE, the CPU by default)."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

MASK_RCNN_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


@pytest.mark.device
@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_train_step_and_inference(mask_format, seeded, device):
    model = build_model(tiny_cfg(mask_format=mask_format, device=device))
    batch = make_batch(mask_format)
    model.train()
    with EventStorage():
        losses = model(batch)
        assert set(losses) == MASK_RCNN_LOSSES
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
    grads = [p.grad for p in model.roi_heads.mask_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == len(batch)
    for out in outputs:
        fields = out["instances"].get_fields()
        assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(fields)
        assert out["instances"].pred_masks.shape[1:] == (64, 64)
        assert out["instances"].pred_masks.device.type == device.type
