"""Every tensor the MaskIoU path creates is made on its input's device.

No GPU has run this code yet, so a tensor made on the default device (the CPU) beside CUDA
inputs would first show up there, as a device mismatch or a silent copy. Two checks that run
without a GPU:

- a recorder of tensor factories (torch.zeros, arange, tensor, ...) called from ms_rcnn's own
  code without a `device` argument, over a whole MS R-CNN training step and inference, with
  the options that add code paths (background RoIs, the boundary-aware target, Soft-NMS);
- the MaskIoU functions run with the default device switched to `meta` and CPU inputs: a
  tensor made on the default device would be a meta tensor and fail to mix with the inputs.
Detectron2's own tensors are not checked here.
"""

import inspect
import os

import numpy as np
import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from torch.overrides import TorchFunctionMode

import ms_rcnn
from ms_rcnn.modeling.maskiou_head import mask_iou_inference, mask_iou_loss
from ms_rcnn.modeling.maskiou_targets import mask_iou_targets
from ms_rcnn.modeling.quality_targets import boundary_iou_targets

PACKAGE = os.path.dirname(os.path.abspath(ms_rcnn.__file__))
FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor,
    torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace,
    torch.eye,
}  # fmt: skip


class DefaultDeviceFactories(TorchFunctionMode):
    """Records `file:line` of factory calls in ms_rcnn/ that leave the device to the default."""

    def __init__(self):
        super().__init__()
        self.found = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # A factory given a tensor (torch.as_tensor(t)) keeps that tensor's device. (Numpy data
        # becomes a CPU tensor through torch.from_numpy, which takes no device: move it.)
        keeps_device = any(isinstance(a, torch.Tensor) for a in args)
        if func in FACTORIES and kwargs.get("device") is None and not keeps_device:
            caller = inspect.currentframe().f_back
            while caller and os.sep + "torch" + os.sep in caller.f_code.co_filename:
                caller = caller.f_back
            if caller and caller.f_code.co_filename.startswith(PACKAGE + os.sep):
                where = os.path.relpath(caller.f_code.co_filename, os.path.dirname(PACKAGE))
                self.found.add(f"{where}:{caller.f_lineno}")
        return func(*args, **kwargs)


def ms_rcnn_model(mask_format, device, **maskiou):
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format=mask_format, device=device)
    for key, value in maskiou.items():
        cfg.MODEL.ROI_MASKIOU_HEAD[key] = value
    cfg.TEST.SOFT_NMS.ENABLED = True
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.device
@pytest.mark.parametrize(
    "mask_format, options",
    [
        ("polygon", {}),
        ("bitmask", {}),
        ("polygon", {"NEGATIVE_ROIS_PER_IMAGE": 8, "TARGET": "min"}),
        ("bitmask", {"NEGATIVE_ROIS_PER_IMAGE": 8, "TARGET": "boundary_iou"}),
    ],
)
def test_no_tensor_of_the_maskiou_path_is_made_on_the_default_device(mask_format, options, device):
    model = ms_rcnn_model(mask_format, device, **options)
    batch = make_batch(mask_format, num_instances=(3, 2))
    recorder = DefaultDeviceFactories()
    model.train()
    with EventStorage(), recorder:
        losses = model(batch)
    assert torch.isfinite(sum(losses.values()))
    model.eval()
    with torch.no_grad(), recorder:
        outputs = model(batch)
    assert all(o["instances"].has("mask_scores") for o in outputs)
    assert not recorder.found, (
        "tensors made on the default device instead of the input's (pass device=...): "
        + ", ".join(sorted(recorder.found))
    )


def instances(fmt):
    h = w = 32
    polys = [[[4, 4, 20, 4, 20, 20, 4, 20]], [[10, 10, 30, 12, 18, 28]]]
    inst = Instances((h, w))
    inst.proposal_boxes = Boxes(torch.tensor([[2.0, 2.0, 22.0, 22.0], [8.0, 8.0, 31.0, 30.0]]))
    inst.gt_classes = torch.tensor([0, 1])
    if fmt == "polygon":
        inst.gt_masks = PolygonMasks(polys)
    else:
        inst.gt_masks = BitMasks.from_polygon_masks(polys, h, w)
    inst.gt_index = torch.tensor([0, 1])
    return inst


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_maskiou_functions_run_with_a_meta_default_device(fmt):
    """CPU inputs, default device `meta`: any tensor these make without a device would be a
    meta tensor (no data), and mixing it with the inputs raises."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    pred = torch.rand(2, 2)
    classes = torch.tensor([0, 1])
    inst = instances(fmt)
    reference = mask_iou_targets(logits, [inst])
    with torch.device("meta"):
        targets = mask_iou_targets(logits, [inst])
        boundary = boundary_iou_targets(logits[torch.arange(2, device="cpu"), classes] > 0, [inst])
        loss = mask_iou_loss(pred, classes, targets)
        out = [Instances((32, 32), pred_classes=classes, scores=torch.ones(2, device="cpu"))]
        mask_iou_inference(pred, out)
    for t in (targets, boundary, loss, out[0].mask_scores):
        assert t.device.type == "cpu"
    assert torch.equal(targets, reference) and torch.isfinite(loss)
    assert np.all((boundary.numpy() >= 0) & (boundary.numpy() <= 1))
