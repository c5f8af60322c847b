"""Boundary AP: COCO AP whose match criterion is Boundary IoU, computed with faster-coco-eval.

Boundary IoU (Cheng et al., CVPR 2021) compares only the pixels near each contour, so a mask
that gets the outline of a large object wrong loses more than under mask IoU, where the
interior's pixels dominate. faster-coco-eval implements the paper's evaluation as
`iouType="boundary"`: the boundary of a binary mask is the mask minus its erosion by a
(2d+1) x (2d+1) square, with the image outside counted as background (so a mask cut by the
image border has a boundary there), d = max(1, round(dilation_ratio * image diagonal)); a
detection's IoU with a non-crowd ground truth is min(mask IoU, boundary IoU), with a crowd
region it stays the crowd mask IoU. Matching, area ranges and maxDets are COCO's, as for segm.

pycocotools and Detectron2's compiled COCOeval have no boundary mode, so this task needs
faster-coco-eval whatever backend evaluates bbox and segm. Without it, `MaskScoringCOCOEvaluator`
logs a warning and reports no boundary task.
"""

import importlib.util
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "BOUNDARY_TASK",
    "BOUNDARY_METRICS",
    "boundary_eval_available",
    "evaluate_boundary",
    "ranked_detections",
]

logger = logging.getLogger(__name__)

BOUNDARY_TASK = "boundary"
BOUNDARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def boundary_eval_available() -> bool:
    """Whether faster-coco-eval (which has `iouType="boundary"`) is installed."""
    return importlib.util.find_spec("faster_coco_eval") is not None


def _per_category_ap(precision: np.ndarray, cat_ids: Sequence[int], names: Dict[int, str]):
    """AP per category from COCOeval's precision array [iou, recall, category, area, maxDets],
    over all areas and the largest maxDets; NaN where a category has no ground truth."""
    out = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[f"AP-{names[cat_id]}"] = float(p.mean() * 100) if p.size else float("nan")
    return out


def evaluate_boundary(
    gt_dataset: dict,
    detections: Sequence[dict],
    *,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Sequence[int] = (1, 10, 100),
    dilation_ratio: float = 0.02,
) -> Dict[str, float]:
    """Boundary AP of COCO-format detections, ranked by their "score".

    Args:
        gt_dataset: the ground truth as a COCO-format dict (a pycocotools `COCO`'s `.dataset`);
            it is copied, not modified.
        detections: dicts with "image_id", "category_id" (dataset ids), "segmentation" (RLE)
            and "score", the value that ranks them (the caller puts the mask score there to
            rank like segm). Their "bbox" is ignored, so that area ranges use mask areas, as
            Detectron2 does for segm.
        img_ids: evaluate on these images only.
        max_dets_per_image: COCOeval's maxDets; AP uses the last one.
        dilation_ratio: boundary width as a fraction of the image diagonal (0.02 in the paper).

    Returns:
        "AP", "AP50", "AP75", "APs", "APm", "APl" and "AP-<category name>", in percent; NaN
        where COCOeval cannot compute a value (no detections, or no ground truth of that size).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    categories = sorted(gt_dataset.get("categories", []), key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in categories}
    if not detections:
        nan = float("nan")
        return {**dict.fromkeys(BOUNDARY_METRICS, nan), **{f"AP-{n}": nan for n in names.values()}}
    dets = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]

    quiet = logger.debug
    # deepcopy: faster-coco-eval stores each annotation's RLE and boundary in the dicts it gets.
    coco_gt = COCO(gt_dataset, use_deepcopy=True, print_function=quiet)
    coco_dt = coco_gt.loadRes(dets)
    coco_eval = COCOeval_faster(
        coco_gt,
        coco_dt,
        "boundary",
        print_function=quiet,
        boundary_dilation_ratio=dilation_ratio,
    )
    coco_eval.params.maxDets = list(max_dets_per_image)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

    stats = coco_eval.stats
    results = {
        m: float(stats[i] * 100) if stats[i] >= 0 else float("nan")
        for i, m in enumerate(BOUNDARY_METRICS)
    }
    results.update(_per_category_ap(coco_eval.eval["precision"], coco_eval.params.catIds, names))
    return results


def ranked_detections(detections: Sequence[dict], score_key: str) -> List[dict]:
    """Copies of `detections` whose "score" is `score_key`'s value (or "score" without it)."""
    return [{**d, "score": d.get(score_key, d["score"])} for d in detections]
