"""Mask-quality calibration: how well do the scores predict the true mask IoU?

For every detection, the "true IoU" is the mask IoU with its best ground-truth instance of the
same category in the same image (crowd regions excluded), or 0 when there is none. A detection
with true IoU > 0 is "matched". Over the matched detections the report gives the Pearson and
Spearman correlation of `scores`, `mask_scores` and `pred_maskiou` with the true IoU, and the
mean absolute error of `pred_maskiou` (the MaskIoU head's own output, which estimates exactly
this quantity).

Matching is many-to-one on purpose (several detections may share a best ground truth): the
question is how good each mask is, not whether it would count as a true positive for AP.

Everything here works on COCO-format detections (dicts with "image_id", "category_id" in the
dataset's ids, "segmentation" as RLE, "score" and optionally "mask_score"/"pred_maskiou"), so
it runs on the evaluator's gathered predictions or on a saved `coco_instances_results.json`.
"""

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "SCORE_FIELDS",
    "JSON_SCORE_KEYS",
    "CalibrationData",
    "average_ranks",
    "pearson",
    "spearman",
    "true_mask_ious",
    "collect_calibration_data",
    "summarize_calibration",
    "calibration_for_results",
    "save_calibration",
    "plot_calibration",
]

logger = logging.getLogger(__name__)

#: `Instances` fields whose agreement with the true mask IoU is reported.
SCORE_FIELDS = ("scores", "mask_scores", "pred_maskiou")

#: Key under which each `Instances` field is stored in a COCO-format detection dict.
#: "score" is Detectron2's own key; the other two are added by MaskScoringCOCOEvaluator.
JSON_SCORE_KEYS = {"scores": "score", "mask_scores": "mask_score", "pred_maskiou": "pred_maskiou"}

CALIBRATION_JSON = "calibration.json"
CALIBRATION_PNG = "maskiou_calibration.png"


@dataclass
class CalibrationData:
    """Per-detection values behind the calibration report.

    Attributes:
        true_iou: (N,) mask IoU of each detection with its best same-class ground truth.
        values: `Instances` field name -> (N,) values; holds only the fields that every
            detection carries (a baseline Mask R-CNN has just "scores").
    """

    true_iou: np.ndarray
    values: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self):
        return len(self.true_iou)


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of `x`; tied values share the average of the ranks they span.

    Args:
        x: (n,) values.

    Returns:
        (n,) float array of ranks, e.g. [10, 20, 20, 30] -> [1, 2.5, 2.5, 4].
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Each run of equal sorted values [start, end) gets the mean of ranks start+1 .. end.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x) != 0) + 1]
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _finite_pairs(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Pearson correlation of the finite pairs, or None when undefined.

    It is undefined for fewer than two pairs or when either side is constant; None (rather than
    NaN) keeps the reports valid JSON and makes "no data" impossible to mistake for a number.
    """
    x, y = _finite_pairs(x, y)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    if denom == 0.0:
        return None
    # Clip the last-ulp overshoot so a perfect predictor reports exactly +-1.
    return float(np.clip(np.dot(dx, dy) / denom, -1.0, 1.0))


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman rank correlation (Pearson of average ranks) of the finite pairs, or None."""
    x, y = _finite_pairs(x, y)
    if len(x) < 2:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def true_mask_ious(detections: Sequence[dict], coco_gt) -> np.ndarray:
    """Mask IoU of each detection with its best non-crowd ground truth of the same category.

    Args:
        detections: COCO-format detections with "image_id", "category_id" (dataset ids) and
            "segmentation" (RLE of the full image).
        coco_gt: a `pycocotools.coco.COCO` holding the ground truth.

    Returns:
        (len(detections),) float array; 0 where the image has no such ground truth.
    """
    true_iou = np.zeros(len(detections), dtype=np.float64)
    by_image_and_class = defaultdict(list)
    for i, det in enumerate(detections):
        by_image_and_class[(det["image_id"], det["category_id"])].append(i)
    for (image_id, category_id), det_idx in by_image_and_class.items():
        # Filter crowd here: getAnnIds(iscrowd=...) raises on annotations without the key.
        ann_ids = coco_gt.getAnnIds(imgIds=[image_id], catIds=[category_id])
        anns = [a for a in coco_gt.loadAnns(ann_ids) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        gt_rles = [coco_gt.annToRLE(a) for a in anns]
        dt_rles = [detections[i]["segmentation"] for i in det_idx]
        # iscrowd=0 for every gt: plain intersection over union.
        ious = np.asarray(mask_util.iou(dt_rles, gt_rles, [0] * len(gt_rles)), dtype=np.float64)
        true_iou[det_idx] = ious.reshape(len(dt_rles), len(gt_rles)).max(axis=1)
    return true_iou


def collect_calibration_data(
    detections: Sequence[dict], coco_gt, img_ids: Optional[Iterable[int]] = None
) -> CalibrationData:
    """Match detections to ground truth and collect their score fields.

    Args:
        detections: COCO-format detections (see `true_mask_ious`); they are not modified.
        coco_gt: a `pycocotools.coco.COCO` holding the ground truth.
        img_ids: if given, only detections on these images count (like COCOeval's imgIds).
    """
    if img_ids is not None:
        keep = set(img_ids)
        detections = [d for d in detections if d["image_id"] in keep]
    values = {}
    for name in SCORE_FIELDS:
        key = JSON_SCORE_KEYS[name]
        if detections and all(key in d for d in detections):
            values[name] = np.asarray([float(d[key]) for d in detections], dtype=np.float64)
        elif any(key in d for d in detections):
            logger.warning(f"Only some detections carry '{key}'; leaving {name} out of the report.")
    return CalibrationData(true_iou=true_mask_ious(detections, coco_gt), values=values)


def summarize_calibration(data: CalibrationData) -> Dict[str, Optional[float]]:
    """The calibration figures; a figure that cannot be computed is None.

    Returns:
        dict with "num_detections", "num_matched" (int), "mean_true_iou" (over matched),
        "pearson_<field>" and "spearman_<field>" for each of SCORE_FIELDS (over matched),
        "mae_pred_maskiou" (over matched) and "mae_pred_maskiou_all" (over all detections,
        where unmatched ones have true IoU 0: it also charges confident false positives).
    """
    t = data.true_iou
    matched = t > 0
    num_matched = int(matched.sum())
    out: Dict[str, Optional[float]] = {
        "num_detections": int(len(t)),
        "num_matched": num_matched,
        "mean_true_iou": float(t[matched].mean()) if num_matched else None,
    }
    for name in SCORE_FIELDS:
        v = data.values.get(name)
        out[f"pearson_{name}"] = pearson(v[matched], t[matched]) if v is not None else None
        out[f"spearman_{name}"] = spearman(v[matched], t[matched]) if v is not None else None
    p = data.values.get("pred_maskiou")
    if p is not None and num_matched:
        out["mae_pred_maskiou"] = float(np.abs(p[matched] - t[matched]).mean())
    else:
        out["mae_pred_maskiou"] = None
    out["mae_pred_maskiou_all"] = float(np.abs(p - t).mean()) if p is not None and len(t) else None
    return out


def calibration_for_results(summary: Dict[str, Optional[float]]) -> Dict[str, float]:
    """The entry for Detectron2's results dict: only the figures that exist, all as floats.

    Detectron2's `print_csv_format` formats every value with "{:.4f}" and `EvalHook` calls
    `float()` on each, so None cannot go there; undefined figures are left out instead.
    """
    return {k: float(v) for k, v in summary.items() if v is not None}


def save_calibration(summary: Dict[str, Optional[float]], output_dir: str) -> str:
    """Write `summary` to `<output_dir>/calibration.json` (None as null); return the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CALIBRATION_JSON)
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    return path


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_calibration(
    data: CalibrationData, path: str, summary: Optional[Dict[str, Optional[float]]] = None
) -> str:
    """Scatter each score field against the true IoU and save a PNG.

    One panel per available field (pred_maskiou first, with the y = x line a calibrated
    predictor would sit on); unmatched detections (true IoU 0) are drawn in grey.

    Args:
        data: from `collect_calibration_data`.
        path: PNG file to write; its folder is created.
        summary: from `summarize_calibration`; computed if not given (for the panel titles).

    Returns:
        `path`.
    """
    # The Figure API renders with Agg without touching pyplot's global backend or state.
    from matplotlib.figure import Figure

    summary = summary if summary is not None else summarize_calibration(data)
    fields: List[str] = [f for f in ("pred_maskiou", "mask_scores", "scores") if f in data.values]
    fig = Figure(figsize=(4.2 * max(len(fields), 1), 4.2), layout="constrained")
    if len(data) == 0 or not fields:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        t = data.true_iou
        matched = t > 0
        axes = fig.subplots(1, len(fields), squeeze=False)[0]
        for ax, name in zip(axes, fields):
            v = data.values[name]
            ax.scatter(t[~matched], v[~matched], s=8, c="0.6", label="unmatched (IoU 0)")
            ax.scatter(t[matched], v[matched], s=8, c="tab:blue", alpha=0.6, label="matched")
            if name == "pred_maskiou":
                ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
            ax.set_xlim(-0.02, 1.02)
            finite = v[np.isfinite(v)]  # unclamped predictions may leave [0, 1]
            lo = min(0.0, float(finite.min())) if len(finite) else 0.0
            hi = max(1.0, float(finite.max())) if len(finite) else 1.0
            ax.set_ylim(lo - 0.02, hi + 0.02)
            ax.set_xlabel("true mask IoU")
            ax.set_ylabel(name)
            ax.set_title(
                f"{name}: Pearson {_fmt(summary.get(f'pearson_{name}'))}, "
                f"Spearman {_fmt(summary.get(f'spearman_{name}'))}",
                fontsize=9,
            )
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Mask quality: {summary['num_matched']} of {summary['num_detections']} detections matched",
        fontsize=10,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
