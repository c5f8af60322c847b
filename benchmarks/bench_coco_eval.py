"""Benchmark: COCO evaluation time on the demo's validation set, pycocotools vs faster-coco-eval.

Detectron2 built without compiled ops (as `make setup` builds it) cannot run its own
`COCOeval_opt`, so its evaluator falls back to pycocotools' pure-Python COCOeval.
`MaskScoringCOCOEvaluator` uses faster-coco-eval when it is installed; this measures both on the
detections a demo run saved (bbox ranked by `score`, segm by `mask_score`, as the evaluator
does), checks they give the same numbers, and reports the median of several repeats. Each timed
run is what one evaluation does per task: loadRes, evaluate, accumulate, summarize.

Run from the repository root after `make demo` (or pass --predictions):

    python benchmarks/bench_coco_eval.py [--repeats 5]
"""

import argparse
import contextlib
import copy
import io
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import command, machine, median_ms  # noqa: E402

DEFAULT_PREDICTIONS = os.path.join(
    ROOT, "output", "demo", "ms_rcnn_s1", "inference", "synthetic_shapes_val",
    "coco_instances_results.json",
)  # fmt: skip


def evaluate(cls, gt, dets, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        e = cls(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", default=DEFAULT_PREDICTIONS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not os.path.isfile(args.predictions):
        raise SystemExit(f"{args.predictions}: no such file; run `make demo` first")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ms_rcnn.data import prepare_synthetic_dataset
    from ms_rcnn.evaluation.cocoeval_backend import faster_cocoeval_class

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(prepare_synthetic_dataset("synthetic_shapes_val"))
    with open(args.predictions) as f:
        dets = json.load(f)
    faster = faster_cocoeval_class()
    print(f"Machine: {machine()}")
    print(f"Command: {command()}\n")
    print(
        f"synthetic_shapes_val: {len(gt.getImgIds())} images, {len(gt.getAnnIds())} GT "
        f"instances, {len(dets)} detections; median of {args.repeats}\n"
    )
    print("| task | pycocotools COCOeval ms | faster-coco-eval ms | speed-up | same numbers |")
    print("|---|---:|---:|---:|---|")
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm":  # as the evaluator: masks ranked by mask_score, mask areas
            task_dets = [{**d, "score": d.get("mask_score", d["score"])} for d in dets]
            for d in task_dets:
                d.pop("bbox", None)
        else:
            task_dets = dets
        a = evaluate(COCOeval, gt, task_dets, iou_type)
        b = evaluate(faster, gt, task_dets, iou_type)
        same = np.array_equal(np.asarray(a.stats), np.asarray(b.stats[:12])) and np.allclose(
            a.eval["precision"], b.eval["precision"], rtol=0, atol=1e-12
        )
        t = median_ms(
            {
                "pycocotools": lambda: evaluate(COCOeval, gt, task_dets, iou_type),  # noqa: B023
                "faster": lambda: evaluate(faster, gt, task_dets, iou_type),  # noqa: B023
            },
            args.repeats,
        )
        print(
            f"| {iou_type} (AP {100 * a.stats[0]:.2f}) | {t['pycocotools']:.0f} | "
            f"{t['faster']:.0f} | {t['pycocotools'] / t['faster']:.1f}x | {same} |"
        )


if __name__ == "__main__":
    main()
