"""Mask-quality targets beyond mask IoU: boundary IoU at RoI resolution, and their combinations.

`MODEL.ROI_MASKIOU_HEAD.TARGET` picks what the MaskIoU head learns to predict for each RoI:

- "mask_iou" (default, the paper): mask IoU with the whole GT instance (`mask_iou_targets`);
- "boundary_iou": boundary IoU with the whole GT instance (below);
- "min": min(mask IoU, boundary IoU), the criterion Boundary AP matches detections by;
- "mean", "product": (mask IoU + boundary IoU) / 2 and mask IoU * boundary IoU (B2Inst-style
  combinations).

Boundary IoU at RoI resolution, by the area-ratio idea of the mask IoU target. On the M x M
grid, with a boundary band of `width` cells:

- B_P = prediction minus its erosion, the grid's outside counting as background (the predicted
  mask is empty outside the box);
- B_G,in = the GT's band inside the box: the GT cropped on the box grown by `width` cells on
  each side (the same cells, plus a margin, so a contour just outside the box still marks the
  cells near it), minus its erosion with the margin's outside ignored (the GT may go on beyond,
  and a cut is no contour), then the inner M x M cells;
- r_b = fraction of the whole GT's contour that lies inside the box, measured at input-image
  resolution on the 1-pixel contour (GT minus its 3 x 3 erosion, the image's outside counting
  as background), with the exact fractional-box overlap of `mask_iou_targets`' area ratio;
- B_G,full = B_G,in / r_b: the whole GT boundary in this RoI's cells;
- t_b = |B_P ∩ B_G,in| / max(|B_P| + B_G,full - |B_P ∩ B_G,in|, 1), and 0 when r_b = 0 (no
  GT contour in the box: the predicted boundary, inside the box, cannot meet it).

Approximations, against a brute-force computation at image resolution with a band of
`width * box side / M` pixels (tests/test_quality_targets.py states the tolerance): the GT is
seen at M x M (the mask loss's crop), and r_b treats the contour's share of the band as its
share of the 1-pixel contour.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks, polygons_to_bitmask

from .maskiou_targets import _bitmask_area_ratio, _distinct_bitmasks, gt_mask_crops

__all__ = ["QUALITY_TARGETS", "boundary_iou_targets", "combine_quality", "mask_band"]

QUALITY_TARGETS = ("mask_iou", "boundary_iou", "min", "mean", "product")

_MIN_UNION = 1.0


def mask_band(masks: torch.Tensor, width: int, outside_is_background: bool) -> torch.Tensor:
    """(N, H, W) bool -> the pixels of each mask within `width` (Chebyshev) of a non-mask pixel:
    the mask minus its erosion by a (2 * width + 1) square. Outside the grid counts as
    background (a mask touching the edge has a band there) or is ignored."""
    if width < 1:
        raise ValueError(f"boundary width must be >= 1 cell, got {width}")
    outside = (~masks).float()[:, None]
    k = 2 * width + 1
    if outside_is_background:
        near = F.max_pool2d(F.pad(outside, (width,) * 4, value=1.0), k, stride=1)
    else:  # max_pool2d's padding never wins the max: the outside erodes nothing
        near = F.max_pool2d(outside, k, stride=1, padding=width)
    return masks & (near[:, 0] > 0)


def _gt_contour_ratio(inst: Instances) -> torch.Tensor:
    """Per proposal, the fraction of its GT's 1-pixel contour (image resolution) in its box."""
    boxes = inst.proposal_boxes.tensor
    gt_masks = inst.gt_masks
    if isinstance(gt_masks, BitMasks):
        masks, index = _distinct_bitmasks(inst)
    elif isinstance(gt_masks, PolygonMasks):
        height, width = inst.image_size
        if inst.has("gt_index"):
            _, first = np.unique(inst.gt_index.cpu().numpy(), return_index=True)
        else:
            first = np.arange(len(gt_masks))
        rendered = {int(i): polygons_to_bitmask(gt_masks.polygons[i], height, width) for i in first}
        keys = sorted(rendered)
        # Rasterized on the CPU (numpy), then on the boxes' device like the bitmask branch.
        masks = torch.from_numpy(np.stack([rendered[k] for k in keys])).to(boxes.device)
        position = {k: j for j, k in enumerate(keys)}
        if inst.has("gt_index"):
            by_gt = {int(inst.gt_index[k]): position[k] for k in keys}
            by_roi = [by_gt[int(g)] for g in inst.gt_index.tolist()]
            index = torch.tensor(by_roi, device=boxes.device)
        else:
            index = torch.arange(len(gt_masks), device=boxes.device)
    else:
        raise TypeError(f"gt_masks is {type(gt_masks).__name__}; expected BitMasks or PolygonMasks")
    used, which = torch.unique(index, return_inverse=True)
    contours = mask_band(masks[used].to(torch.bool), 1, outside_is_background=True)
    return _bitmask_area_ratio(contours, which.to(contours.device), boxes)


def _gt_band_in_box(instances: List[Instances], mask_size: int, width: int) -> torch.Tensor:
    """(R, M, M) bool: each proposal's GT band (outside ignored) on its box's M x M cells, from
    a crop of the box grown by `width` cells so that contours just outside count."""
    grown = []
    for inst in instances:
        if len(inst) == 0:
            continue
        b = inst.proposal_boxes.tensor
        margin = (b[:, 2:] - b[:, :2]) * (width / mask_size)
        view = Instances(inst.image_size, gt_masks=inst.gt_masks)
        view.proposal_boxes = Boxes(torch.cat([b[:, :2] - margin, b[:, 2:] + margin], dim=1))
        if inst.has("gt_index"):
            view.gt_index = inst.gt_index
        grown.append(view)
    crops = torch.cat(gt_mask_crops(grown, mask_size + 2 * width))
    band = mask_band(crops, width, outside_is_background=False)
    return band[:, width:-width, width:-width]


def boundary_iou_targets(
    pred: torch.Tensor,
    instances: List[Instances],
    width: int = 1,
) -> torch.Tensor:
    """Boundary IoU of each RoI's binarized predicted mask with its whole GT instance.

    Args:
        pred: (R, M, M) bool binarized predicted masks (the channel the mask IoU target uses).
        instances: as for `mask_iou_targets` (`proposal_boxes`, `gt_masks`, optional
            `gt_index`), R proposals in total.
        width: boundary band in cells of the M x M grid.

    Returns:
        (R,) float32 targets in [0, 1] on `pred.device`.
    """
    if pred.dim() != 3 or pred.dtype != torch.bool:
        raise ValueError(f"pred must be an (R, M, M) bool tensor, got {pred.dtype} {pred.shape}")
    if len(pred) == 0:
        return torch.zeros(0, dtype=torch.float32, device=pred.device)
    with torch.no_grad():
        band_g = _gt_band_in_box(instances, pred.shape[-1], width).to(pred.device)
        ratio = torch.cat([_gt_contour_ratio(x) for x in instances if len(x)]).to(pred.device)
        band_p = mask_band(pred, width, outside_is_background=True)
        p = band_p.flatten(1).sum(1).float()
        g_in = band_g.flatten(1).sum(1).float()
        inter = (band_p & band_g).flatten(1).sum(1).float()
        g_full = g_in / ratio.float().clamp_min(1e-10)
        target = (inter / (p + g_full - inter).clamp_min(_MIN_UNION)).clamp(0.0, 1.0)
        return torch.where(ratio > 0, target, torch.zeros_like(target))


def combine_quality(mask_iou: torch.Tensor, boundary_iou: Optional[torch.Tensor], mode: str):
    """The MaskIoU head's target from the mask IoU and (unless mode is "mask_iou") boundary IoU."""
    if mode == "mask_iou":
        return mask_iou
    if mode not in QUALITY_TARGETS:
        raise ValueError(
            f"MODEL.ROI_MASKIOU_HEAD.TARGET must be one of {QUALITY_TARGETS}, got {mode!r}"
        )
    if boundary_iou is None:
        raise ValueError(f"target {mode!r} needs the boundary IoU")
    if mode == "boundary_iou":
        return boundary_iou
    if mode == "min":
        return torch.minimum(mask_iou, boundary_iou)
    if mode == "mean":
        return 0.5 * (mask_iou + boundary_iou)
    return mask_iou * boundary_iou
