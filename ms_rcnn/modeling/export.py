"""Export by tracing: a TorchScript MS R-CNN whose outputs keep `pred_maskiou` and `mask_scores`.

`trace_ms_rcnn` traces `model.inference(..., do_postprocess=False)` on one image with Detectron2's
`TracingAdapter` (the route of Detectron2's own `tools/deploy/export_model.py`): the adapter
flattens the output `Instances` into a tuple of tensors, every field included, so the MaskIoU
outputs survive without a hand-written `fields` list.
"""

from typing import Callable, Tuple

import torch
from detectron2.export import TracingAdapter  # v0.6 needs `make setup`'s optional-caffe2 fix
from torch import nn

__all__ = ["OUTPUT_FIELDS", "trace_ms_rcnn"]

# The traced module's outputs, in order (TracingAdapter sorts the Instances fields by name),
# followed by the image size (h, w) as a tensor.
OUTPUT_FIELDS = (
    "mask_scores",
    "pred_boxes",
    "pred_classes",
    "pred_maskiou",
    "pred_masks",
    "scores",
)


def _inference(model, inputs):
    # No postprocessing: boxes stay in the input image's coordinates and masks are the
    # (N, 1, M, M) RoI probabilities; `detector_postprocess` pastes them, outside the trace.
    return [{"instances": x} for x in model.inference(inputs, do_postprocess=False)]


def trace_ms_rcnn(model: nn.Module, image: torch.Tensor) -> Tuple[torch.jit.ScriptModule, Callable]:
    """Trace a GeneralizedRCNN with mask scoring heads on one image.

    Args:
        model: e.g. `build_model(cfg)` with MaskScoringROIHeads or CascadeMaskScoringROIHeads,
            weights loaded. It is traced in eval mode and left in the mode it was in.
        image: (3, H, W) tensor in the model's input format, as `inputs[i]["image"]`.

    Returns:
        traced: a module mapping a (3, H, W) image to a tuple of tensors: `OUTPUT_FIELDS` of
            the detections, then the image size. Save it with `traced.save(path)`.
        outputs_schema: turns `traced(image)` back into `[{"instances": Instances}]`.

    The trace keeps detection counts and image sizes dynamic: other images give the eager
    model's outputs (tests compare them). Soft-NMS (a Python loop over detections) would be
    frozen into the trace, so a model with it enabled is refused.
    """
    roi_heads = getattr(model, "roi_heads", None)
    own_branch = getattr(roi_heads, "_has_own_mask_branch", None)
    if own_branch is not None and own_branch():
        # Verified only for Mask R-CNN's branch; PointRend's subdivision, for one, branches in
        # Python on the detection count, which a trace would freeze.
        raise ValueError(
            f"trace_ms_rcnn: {type(roi_heads).__name__} has a mask branch of its own "
            "(mask_scoring_inputs), whose tracing is not supported; export supports Mask "
            "R-CNN's mask branch (MaskScoringROIHeads, CascadeMaskScoringROIHeads)"
        )
    predictor = getattr(roi_heads, "box_predictor", None)
    if getattr(predictor, "soft_nms_enabled", False):
        raise ValueError(
            "trace_ms_rcnn: TEST.SOFT_NMS.ENABLED=True cannot be traced (Soft-NMS loops over "
            "detections in Python, so a trace would freeze their number); build the model with "
            "TEST.SOFT_NMS.ENABLED False or set model.roi_heads.box_predictor.soft_nms_enabled "
            "= False before tracing"
        )
    if image.dim() != 3:
        raise ValueError(f"trace_ms_rcnn: image must be (3, H, W), got {tuple(image.shape)}")
    was_training = model.training
    model.eval()
    try:
        adapter = TracingAdapter(model, [{"image": image}], _inference)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    finally:
        model.train(was_training)
    return traced, adapter.outputs_schema
