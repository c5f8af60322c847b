"""Mask scoring for a LazyConfig model: `add_mask_scoring(cfg.model)`.

Detectron2's LazyConfig recipes (the `common/models/` models, the LSJ "new baselines", ViTDet)
describe the model as a tree of `LazyCall`s. This swaps their ROI heads for the mask-scoring
ones and adds a MaskIoU head sized from the recipe's own mask head, in place:

    cfg = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
    add_mask_scoring(cfg.model)

Everything else of the recipe (backbone, RPN, box heads, mask head, data, schedule) stays as the
recipe has it, so the config follows upstream's file as that changes.
"""

import inspect
from typing import Any, Callable, Optional, Sequence, Union

from detectron2.config import LazyCall as L
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from detectron2.utils.registry import locate

from .cascade import CascadeMaskScoringROIHeads
from .mask_scoring import MaskScoringMixin
from .maskiou_head import MaskIoUHead
from .roi_heads import MaskScoringROIHeads, SoftNMSROIHeads

__all__ = ["add_mask_scoring", "MASK_SCORING_HEADS"]

# The ROI heads class each recipe class becomes: the same class with MaskScoringMixin first.
MASK_SCORING_HEADS = {
    StandardROIHeads: MaskScoringROIHeads,
    SoftNMSROIHeads: MaskScoringROIHeads,
    CascadeROIHeads: CascadeMaskScoringROIHeads,
}
# The MaskIoU head of the paper: 4 convs (the last with stride 2), then FC 1024, FC 1024.
NUM_CONV = 4
FC_DIMS = (1024, 1024)
# Arguments of MaskScoringMixin that add_mask_scoring passes through to the ROI heads.
_OPTIONS = [
    name
    for name, p in inspect.signature(MaskScoringMixin.__init__).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name != "maskiou_head"
]


def _target_class(node, what: str):
    target = node.get("_target_") if hasattr(node, "get") else None
    if target is None:
        raise TypeError(f"add_mask_scoring: {what} is not a LazyCall (it has no _target_)")
    return locate(target) if isinstance(target, str) else target


def add_mask_scoring(
    model,
    *,
    norm: Union[str, Callable, None] = "auto",
    conv_dims: Optional[Sequence[int]] = None,
    fc_dims: Sequence[int] = FC_DIMS,
    **options: Any,
):
    """Turn the LazyConfig of a Mask R-CNN (or Cascade Mask R-CNN) into MS R-CNN, in place.

    The ROI heads class becomes its mask-scoring twin (`StandardROIHeads` ->
    `MaskScoringROIHeads`, `CascadeROIHeads` -> `CascadeMaskScoringROIHeads`) with all its
    arguments kept, and `roi_heads.maskiou_head` is added, sized from the recipe's mask head:

    - `input_shape` is `"${..mask_head.input_shape}"` (the mask branch's pooled RoI features:
      channels x pooler resolution), and `num_classes` is `"${..num_classes}"`, so later
      overrides of the recipe reach the MaskIoU head too;
    - `conv_dims`: 4 convs as wide as the mask head's (`mask_head.conv_dims[0]`, else 256);
    - `fc_dims`: the paper's (1024, 1024);
    - `conv_norm`: with `norm="auto"`, `"${..mask_head.conv_norm}"`, whatever the recipe norms
      its mask head with: "LN" in ViTDet, `NaiveSyncBatchNorm(c, stats_mode="N")` in the LSJ
      baselines, none in the 1x/3x configs. Pass a `get_norm` name, a callable, or "" to
      choose. (Torch's "SyncBN" cannot take a batch without foreground RoIs in training:
      use "naiveSyncBN_N" as the LSJ recipe does.)

    Args:
        model: a LazyConfig model node with `roi_heads` (e.g. `cfg.model`).
        norm, conv_dims, fc_dims: the MaskIoU head's, as above.
        options: other `MaskScoringMixin` arguments for the ROI heads (e.g.
            `maskiou_loss_weight=1.0`, `negative_rois_per_image=0`).

    Returns:
        `model`, for chaining.
    """
    heads = model.get("roi_heads") if hasattr(model, "get") else None
    if heads is None:
        hint = " (pass cfg.model, not cfg)" if hasattr(model, "get") and "model" in model else ""
        raise TypeError(f"add_mask_scoring: the model has no roi_heads{hint}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"add_mask_scoring: unknown option(s) {', '.join(unknown)}; the MaskScoringMixin "
            f"arguments are {', '.join(_OPTIONS)}"
        )
    cls = _target_class(heads, "model.roi_heads")
    if isinstance(cls, type) and issubclass(cls, MaskScoringMixin):
        raise ValueError(f"add_mask_scoring: the ROI heads are already {cls.__name__}")
    if cls not in MASK_SCORING_HEADS:
        known = ", ".join(k.__name__ for k in MASK_SCORING_HEADS)
        raise TypeError(
            f"add_mask_scoring knows the ROI heads {known}, not {getattr(cls, '__name__', cls)}: "
            "for another class, define `class X(MaskScoringMixin, YourROIHeads)` and set "
            "roi_heads._target_ and roi_heads.maskiou_head yourself "
            "(docs/USING_IN_YOUR_PROJECT.md, section 3)"
        )
    mask_head = heads.get("mask_head")
    if mask_head is None or not heads.get("mask_in_features") or heads.get("mask_pooler") is None:
        raise ValueError(
            "add_mask_scoring: mask scoring needs the mask branch (roi_heads.mask_in_features, "
            "mask_pooler, mask_head); this model has none: start from a Mask R-CNN recipe"
        )
    if "input_shape" not in mask_head:
        raise ValueError(
            "add_mask_scoring: roi_heads.mask_head has no input_shape to size the MaskIoU head "
            "from; give the mask head an explicit input_shape=ShapeSpec(channels, S, S)"
        )
    if conv_dims is None:
        widths = mask_head.get("conv_dims")
        conv_dims = [widths[0] if widths else 256] * NUM_CONV
    if norm == "auto":
        norm = "${..mask_head.conv_norm}" if "conv_norm" in mask_head else ""
    heads._target_ = MASK_SCORING_HEADS[cls]
    heads.maskiou_head = L(MaskIoUHead)(
        input_shape="${..mask_head.input_shape}",
        num_classes="${..num_classes}",
        conv_dims=list(conv_dims),
        fc_dims=list(fc_dims),
        conv_norm="" if norm is None else norm,
    )
    for name, value in options.items():
        heads[name] = value
    return model
