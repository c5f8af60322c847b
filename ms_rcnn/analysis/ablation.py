"""Same-weights ablation: segm (and Boundary) AP of saved predictions re-ranked by a score field.

One MS R-CNN checkpoint, evaluated once by `MaskScoringCOCOEvaluator`, leaves every score of
every detection in its output files. Re-ranking the masks by `scores` (plain Mask R-CNN's
ranking), `mask_scores` or `pred_maskiou` then needs only COCOeval, not the model: this
isolates what the MaskIoU head's rescoring adds from what training with it changed.
"""

import contextlib
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..evaluation.boundary import BOUNDARY_TASK, evaluate_boundary
from ..evaluation.calibration import JSON_SCORE_KEYS, SCORE_FIELDS

__all__ = [
    "SEGM_METRICS",
    "ABLATION_TASKS",
    "load_coco_gt",
    "load_predictions",
    "available_score_fields",
    "evaluate_with_score_field",
    "score_field_ablation",
    "ablation_table",
]

SEGM_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

#: Tasks whose masks the score field ranks: mask AP and Boundary AP.
ABLATION_TASKS = ("segm", BOUNDARY_TASK)

PREDICTION_FILES = ("coco_instances_results.json", "instances_predictions.pth")


def load_coco_gt(json_file: str) -> COCO:
    """A pycocotools COCO for the ground-truth file, without its progress prints, and without
    the annotations no mask can be made of (as the evaluator and training drop them)."""
    from ..data.coco_checks import drop_unusable_polygons_from_coco

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
    drop_unusable_polygons_from_coco(coco, json_file)
    return coco


def load_predictions(
    path: str, coco_gt: Optional[COCO] = None, dataset_id_map: Optional[Dict[int, int]] = None
) -> List[dict]:
    """Read an evaluator's saved predictions as a flat list of COCO-format detections.

    Args:
        path: `coco_instances_results.json` (dataset category ids), `instances_predictions.pth`
            (per-image lists with Detectron2's contiguous category ids), or a folder holding
            either (the JSON is preferred).
        coco_gt: ground truth; for the .pth, its sorted category ids give the contiguous-id
            mapping that Detectron2's `load_coco_json` uses, when `dataset_id_map` is not given.
        dataset_id_map: dataset category id -> contiguous id (the dataset's
            `thing_dataset_id_to_contiguous_id`), for the .pth.

    Returns:
        list[dict] with dataset category ids, new dicts the caller may modify.
    """
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in PREDICTION_FILES]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise FileNotFoundError(f"None of {PREDICTION_FILES} in {path}")
        path = found[0]
    if path.endswith(".json"):
        with open(path) as f:
            return [dict(d) for d in json.load(f)]

    import torch

    # weights_only: the evaluator saves plain lists and dicts; refuse arbitrary pickles.
    per_image = torch.load(path, map_location="cpu", weights_only=True)
    if dataset_id_map is None:
        if coco_gt is None:
            raise ValueError("A .pth needs coco_gt or dataset_id_map to map category ids")
        dataset_id_map = {cid: i for i, cid in enumerate(sorted(coco_gt.getCatIds()))}
    reverse = {v: k for k, v in dataset_id_map.items()}
    return [
        {**d, "category_id": reverse[d["category_id"]]}
        for p in per_image
        for d in p.get("instances", [])
    ]


def _json_key(field: str) -> str:
    """Accept an `Instances` field name ("mask_scores") or its detection key ("mask_score")."""
    if field in JSON_SCORE_KEYS:
        return JSON_SCORE_KEYS[field]
    if field in JSON_SCORE_KEYS.values():
        return field
    raise ValueError(f"Unknown score field {field!r}; use one of {list(JSON_SCORE_KEYS)}")


def available_score_fields(predictions: Sequence[dict]) -> List[str]:
    """The fields of SCORE_FIELDS that every detection carries, in that order."""
    return [f for f in SCORE_FIELDS if all(JSON_SCORE_KEYS[f] in d for d in predictions)]


def evaluate_with_score_field(
    predictions: Sequence[dict],
    coco_gt: COCO,
    field: str = "mask_scores",
    *,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: int = 100,
    task: str = "segm",
) -> Dict[str, float]:
    """Segm (or Boundary) AP with masks ranked by `field`, computed like the evaluator does.

    As Detectron2 does, "bbox" is dropped so that the small/medium/large split uses mask
    areas, and a maxDets other than 100 uses Detectron2's `COCOevalMaxDets`.

    Args:
        predictions: COCO-format detections with dataset category ids (`load_predictions`).
            They are not modified.
        coco_gt: the ground truth.
        field: "scores", "mask_scores" or "pred_maskiou" (or the detection key).
        img_ids: evaluate on these images only.
        max_dets_per_image: COCOeval's largest maxDets.
        task: "segm", or "boundary" for Boundary AP (needs faster-coco-eval; see
            `ms_rcnn.evaluation.boundary`).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl"} in percent; NaN where COCOeval cannot
        compute a value (no detections, or no ground truth of that size).
    """
    if task not in ABLATION_TASKS:
        raise ValueError(f"task must be one of {ABLATION_TASKS}, got {task!r}")
    key = _json_key(field)
    missing = sum(key not in d for d in predictions)
    if missing:
        raise KeyError(f"{missing} of {len(predictions)} detections have no '{key}'")
    if not predictions:
        return {m: float("nan") for m in SEGM_METRICS}
    dets = []
    for d in predictions:
        det = {k: v for k, v in d.items() if k != "bbox"}
        det["score"] = float(d[key])
        dets.append(det)
    if task == BOUNDARY_TASK:
        res = evaluate_boundary(
            coco_gt.dataset, dets, img_ids=img_ids, max_dets_per_image=[1, 10, max_dets_per_image]
        )
        return {m: res[m] for m in SEGM_METRICS}

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        if max_dets_per_image == 100:
            coco_eval = COCOeval(coco_gt, coco_dt, "segm")
        else:
            # COCOeval.summarize hard-codes maxDets=100; Detectron2's subclass does not.
            from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

            coco_eval = COCOevalMaxDets(coco_gt, coco_dt, "segm")
        coco_eval.params.maxDets = [1, 10, max_dets_per_image]
        if img_ids is not None:
            coco_eval.params.imgIds = list(img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {
        m: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else float("nan")
        for i, m in enumerate(SEGM_METRICS)
    }


def score_field_ablation(
    predictions: Sequence[dict],
    coco_gt: COCO,
    fields: Optional[Sequence[str]] = None,
    **kwargs,
) -> Dict[str, Dict[str, float]]:
    """`evaluate_with_score_field` for several fields (default: every field available).

    Returns:
        field -> metrics of the task (`task=`, segm by default), in the order of `fields`.
    """
    fields = list(fields) if fields else available_score_fields(predictions)
    return {f: evaluate_with_score_field(predictions, coco_gt, f, **kwargs) for f in fields}


def _cell(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def ablation_table(
    results: Dict[str, Dict[str, float]], reference: str = "scores", task: str = "segm"
) -> str:
    """Markdown table of `score_field_ablation` results, with the AP change vs `reference`."""
    header = [f"{task} ranked by", *SEGM_METRICS]
    has_ref = reference in results
    if has_ref:
        header.append(f"ΔAP vs {reference}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for field, metrics in results.items():
        row = [field, *(_cell(metrics[m]) for m in SEGM_METRICS)]
        if has_ref:
            delta = metrics["AP"] - results[reference]["AP"]
            row.append("n/a" if math.isnan(delta) else f"{delta:+.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
