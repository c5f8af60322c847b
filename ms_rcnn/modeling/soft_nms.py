"""Soft-NMS (Bodla et al., "Improving Object Detection With One Line of Code", ICCV 2017).

The textbook algorithm, per category: repeatedly select the box with the highest current score,
multiply the score of every remaining box by a decay of its IoU with the selected box, and drop
boxes whose score falls to or below `score_threshold`. The selection is inherently sequential,
so this module keeps the number of Python iterations small instead:

* Categories run in parallel. Candidates are laid out as a padded (C, M) matrix, one row per
  category present (M = the largest category). Each iteration selects one box in *every*
  unfinished row with a single row-wise max, so the iteration count is the largest number of
  boxes selected in one category, not the total, and there is no loop over categories.
* Each iteration is ~15 vectorized ops over the remaining (C, M) block: the IoU of each row's
  selected box with its row (computed on the fly; a precomputed (C, M, M) IoU matrix was slower
  on CPU, its size dominates), then one in-place multiply by the decay.
* Finished rows are dropped (once that halves the rows) and mostly-dead columns are compacted
  now and then, so the work tracks the boxes still alive rather than the padded size. Memory is
  O(C * M): fine for Detectron2 (M <= proposals per image), wasteful if one category holds
  almost all of a huge input while many others hold a few boxes.
* With `topk`, the loop stops as soon as the best `topk` results can no longer change (scores
  only ever decrease), which bounds the iterations by `topk`. Detectron2 keeps only
  `TEST.DETECTIONS_PER_IMAGE` (100) detections, so this is what keeps inference fast.

Ties: within a category, equal current scores are broken by the lower input index, like a
first-wins argmax over the input order; in the output, equal scores go by increasing category,
then selection order. Works on any device, but the loop reads one number per
iteration back to Python (a sync on GPU).
"""

import math
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["METHODS", "batched_soft_nms", "check_soft_nms_args", "soft_nms"]

METHODS = ("gaussian", "linear", "hard")

# Check for mostly-dead columns every this many iterations: the check costs three ops, the
# compaction about as much as one iteration, so checking every iteration would not pay off.
_COMPACT_EVERY = 8
# Check for finished rows (and whether the top-k are final) every this many iterations.
_CHECK_EVERY = 4


def check_soft_nms_args(
    method: str,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    names: Sequence[str] = ("method", "sigma", "iou_threshold", "score_threshold"),
) -> None:
    """Raise ValueError unless the Soft-NMS parameters are valid.

    Args:
        method, sigma, iou_threshold, score_threshold: as in `batched_soft_nms`.
        names: how to call the four parameters in error messages (e.g. config keys).

    Raises:
        ValueError: naming the offending parameter and its value.
    """
    method_name, sigma_name, iou_name, score_name = names
    if method not in METHODS:
        raise ValueError(f"{method_name} must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"{sigma_name} must be a number > 0, got {sigma!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"{sigma_name} must be > 0 and finite, got {sigma}")
    for name, value in ((iou_name, iou_threshold), (score_name, score_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    *,
    topk: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS over boxes of a single category.

    Args:
        boxes: (N, 4) boxes in XYXY format (x1 >= x0, y1 >= y0), floating point.
        scores: (N,) scores, floating point.
        method: "gaussian" (score *= exp(-iou^2 / sigma)), "linear" (score *= 1 - iou when
            iou > iou_threshold) or "hard" (plain NMS: drop a box when iou > iou_threshold).
        sigma: width of the gaussian decay, > 0. Only used by "gaussian". The default 0.5 is
            Bodla et al.'s; the model's TEST.SOFT_NMS.SIGMA defaults to the MS R-CNN paper's 0.6.
        iou_threshold: in [0, 1]; overlap above which "linear" decays and "hard" suppresses.
        score_threshold: in [0, 1]; boxes whose (decayed) score is <= this are dropped.
        topk: if given (>= 0), return only the first `topk` results and stop computing as soon
            as they are final. The result equals the full result truncated to `topk`.

    Returns:
        keep: (K,) int64 indices into `boxes`, in selection order.
        new_scores: (K,) the decayed scores of `keep`, non-increasing, all > score_threshold,
            in the dtype of `scores`.

    Raises:
        ValueError: on invalid arguments, shapes, or non-finite boxes or scores.
    """
    idxs = torch.zeros(scores.shape[:1], dtype=torch.int64, device=scores.device)
    return batched_soft_nms(
        boxes, scores, idxs, method, sigma, iou_threshold, score_threshold, topk=topk
    )


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
    *,
    topk: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS independently per category: boxes of different categories never interact.

    Args:
        boxes: (N, 4) boxes in XYXY format (x1 >= x0, y1 >= y0), floating point.
        scores: (N,) scores, floating point.
        idxs: (N,) integer category of each box (any integer values).
        method, sigma, iou_threshold, score_threshold: as in `soft_nms`.
        topk: if given (>= 0), return only the first `topk` results and stop computing as soon
            as they are final. The result equals the full result truncated to `topk`.

    Returns:
        keep: (K,) int64 indices into `boxes`, sorted by decreasing decayed score over all
            categories; equal scores go by increasing category, then selection order.
        new_scores: (K,) the decayed scores of `keep` (non-increasing), all > score_threshold,
            in the dtype of `scores`. Within a category, `keep` is the textbook selection order.

    Raises:
        ValueError: on invalid arguments, shapes, or non-finite boxes or scores.
    """
    check_soft_nms_args(method, sigma, iou_threshold, score_threshold)
    _check_tensors(boxes, scores, idxs)
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 0):
        raise ValueError(f"topk must be None or an int >= 0, got {topk!r}")

    device = scores.device
    # float32 at least (half has too little range for areas); float64 stays float64.
    dtype = torch.promote_types(torch.promote_types(boxes.dtype, scores.dtype), torch.float32)
    alive = (scores > score_threshold).nonzero().squeeze(1)
    if len(alive) == 0 or topk == 0:
        return torch.empty(0, dtype=torch.int64, device=device), scores.new_empty(0)
    keep, new_scores = _soft_nms_padded(
        boxes[alive].to(dtype),
        scores[alive].to(dtype),
        idxs[alive],
        alive,
        method,
        sigma,
        iou_threshold,
        score_threshold,
        topk,
    )
    # Picks come iteration by iteration, so each category's are in selection order; two stable
    # sorts make ties go by category, then selection order (a total order that does not depend
    # on when the loop stopped, so `topk` equals truncating the full result even with ties).
    order = torch.argsort(idxs[keep], stable=True)
    keep, new_scores = keep[order], new_scores[order]
    order = torch.argsort(new_scores, descending=True, stable=True)[:topk]
    return keep[order], new_scores[order].to(scores.dtype)


def _check_tensors(boxes, scores, idxs):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be an (N, 4) tensor, got shape {_shape(boxes)}")
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        raise ValueError(f"scores must be an (N,) tensor, got shape {_shape(scores)}")
    if not isinstance(idxs, torch.Tensor) or idxs.dim() != 1:
        raise ValueError(f"idxs must be an (N,) tensor, got shape {_shape(idxs)}")
    if not (len(boxes) == len(scores) == len(idxs)):
        raise ValueError(
            f"boxes, scores and idxs must have the same length N, got {len(boxes)}, "
            f"{len(scores)} and {len(idxs)}"
        )
    if not (boxes.is_floating_point() and scores.is_floating_point()):
        raise ValueError(
            f"boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}"
        )
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must be an integer tensor, got {idxs.dtype}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes contain NaN or infinite values")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values")


def _shape(x):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _pad_by_category(boxes, scores, idxs, index):
    """Lay the candidates out as one row per category present, in input order within a row.

    Args:
        boxes: (N, 4); scores: (N,) all > the score threshold; idxs: (N,) categories;
        index: (N,) int64 input index of each candidate.

    Returns:
        planes: (5, C, M) x0, y0, x1, y1, area; padding is zero.
        scores: (C, M), padding 0 (never selected: 0 <= any score threshold).
        index: (C, M) input indices, padding -1.
    """
    # Stable, so a row keeps input order and a first-wins argmax breaks ties by input index.
    order = torch.argsort(idxs, stable=True)
    _, counts = torch.unique_consecutive(idxs[order], return_counts=True)
    rows = torch.repeat_interleave(torch.arange(len(counts), device=idxs.device), counts)
    cols = torch.arange(len(order), device=idxs.device) - (counts.cumsum(0) - counts)[rows]
    shape = (len(counts), int(counts.max()))

    x0, y0, x1, y1 = boxes[order].unbind(1)
    planes = boxes.new_zeros((5,) + shape)
    planes[:, rows, cols] = torch.stack([x0, y0, x1, y1, (x1 - x0) * (y1 - y0)])
    padded_scores = scores.new_zeros(shape)
    padded_scores[rows, cols] = scores[order]
    padded_index = index.new_full(shape, -1)
    padded_index[rows, cols] = index[order]
    return planes, padded_scores, padded_index


def _soft_nms_padded(boxes, scores, idxs, index, method, sigma, iou_threshold, thresh, topk):
    """The selection loop over the padded layout. Inputs as `_pad_by_category`.

    Returns (keep, new_scores) of all picks, iteration by iteration (unsorted).
    """
    planes, cur, index = _pad_by_category(boxes, scores, idxs, index)
    tiny = torch.finfo(cur.dtype).tiny
    sel_index, sel_scores = [], []
    iteration = 0
    while True:
        iteration += 1
        if iteration % _COMPACT_EVERY == 0:
            planes, cur, index = _compact_columns(planes, cur, index, thresh)
        best, col = cur.max(dim=1)  # each row's next selection (first index on ties)
        # Checking for finished rows costs a sync and a few ops, so it is done only every few
        # iterations. Meanwhile finished rows ride along: their picks are <= thresh and are
        # filtered out at the end, and extra picks past a row's topk-th never reach the top-k.
        if (iteration - 1) % _CHECK_EVERY == 0:
            ok = best > thresh
            num_ok = int(ok.sum())
            if num_ok == 0:
                break
            if num_ok <= len(best) // 2:  # drop finished rows once that halves the work
                rows = ok.nonzero().squeeze(1)
                planes, cur, index = planes.index_select(1, rows), cur[rows], index[rows]
                best, col = best[rows], col[rows]
            if topk is not None and _topk_final(sel_scores, best, iteration, topk):
                break
        col = col.view(-1, 1)
        sel_index.append(index.gather(1, col))
        sel_scores.append(best)

        sel = planes.gather(2, col.expand(5, -1, 1))  # (5, C, 1) the selected boxes
        lo = torch.maximum(planes[:2], sel[:2])
        inter = torch.minimum(planes[2:4], sel[2:4]).sub_(lo).clamp_(min=0).prod(dim=0)
        # Two zero-area boxes have union 0 and no overlap: clamping makes that IoU 0/tiny = 0
        # (torchvision's nms sees NaN there, which never suppresses: the same outcome).
        iou = inter.div_((planes[4] + sel[4]).sub_(inter).clamp_(min=tiny))
        if method == "gaussian":
            cur.mul_(iou.square_().div_(-sigma).exp_())
        elif method == "linear":
            cur.mul_(torch.where(iou > iou_threshold, 1.0 - iou, 1.0))
        else:
            cur.masked_fill_(iou > iou_threshold, 0.0)
        # Remove the selected boxes (IoU with themselves is 1, but 0 if degenerate).
        cur.scatter_(1, col, 0.0)

    keep = torch.cat(sel_index).view(-1)
    new_scores = torch.cat(sel_scores)
    selected = new_scores > thresh  # not the picks of finished rows
    return keep[selected], new_scores[selected]


def _topk_final(sel_scores, best, iteration, topk):
    """Whether the top `topk` results are already among `sel_scores` (list of (C,) tensors).

    A row never contributes more than `topk` results. And scores only decrease, so no later
    selection can beat the current best `best.max()`: once `topk` selected scores are above
    it, the top-k can no longer change.
    """
    if iteration > topk:
        return True
    if len(sel_scores) * len(best) < topk:  # cheap gate: too few selections so far
        return False
    return int((torch.cat(sel_scores) > best.max()).sum()) >= topk


def _compact_columns(planes, cur, index, thresh):
    """Drop dead columns when at most half of the widest row is still alive.

    Keeps the order of the alive boxes in each row, so tie-breaking is unchanged.
    """
    alive = cur > thresh
    width = int(alive.sum(dim=1).max())
    if width == 0 or width > cur.shape[1] // 2:  # width 0: the loop is about to end anyway
        return planes, cur, index
    # Stable sort puts each row's alive columns first, in their current order.
    perm = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, :width]
    return planes.gather(2, perm.expand(5, -1, -1)), cur.gather(1, perm), index.gather(1, perm)
