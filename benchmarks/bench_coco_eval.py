"""Benchmark: COCO evaluation time on the demo's validation set, pycocotools vs faster-coco-eval,
and the cost of Boundary AP as a ratio to the segm evaluation.

Detectron2 built without compiled ops (as `make setup` builds it) cannot run its own
`COCOeval_opt`, so its evaluator falls back to pycocotools' pure-Python COCOeval.
`MaskScoringCOCOEvaluator` uses faster-coco-eval when it is installed; this measures both on the
detections a demo run saved (bbox ranked by `score`, segm by `mask_score`, as the evaluator
does), checks they give the same numbers, and reports the median of several repeats. Each timed
run is what one evaluation does per task: loadRes, evaluate, accumulate, summarize.

Boundary AP (`ms_rcnn.evaluation.boundary`, faster-coco-eval's iouType "boundary") is timed
against faster-coco-eval's segm on the same detections, which is what turning
TEST.BOUNDARY_EVAL.ENABLED on adds to an evaluation.

Run from the repository root after `make demo` (or pass --predictions):

    python benchmarks/bench_coco_eval.py [--repeats 5]

Without a demo run, `--perturbed-gt` times detections made from the validation set's own
masks (shifted, grown or shrunk, plus misplaced copies as false positives; about as many per
image as the demo model keeps): the timings depend on the counts and mask sizes, not on how
good the detections are.
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


def perturbed_gt_detections(gt, per_image=37, seed=0):
    """COCO-format detections made from `gt`'s masks: three perturbed copies of each instance
    (shifted up to 3 pixels, grown or shrunk by up to 2) and misplaced copies of random
    instances of the image (shifted 10-40 pixels, random class) up to `per_image`."""
    import cv2
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    cat_ids = gt.getCatIds()
    kernel = np.ones((3, 3), np.uint8)
    dets = []
    for img_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id)) if not a.get("iscrowd")]
        if not anns:
            continue
        masks = [gt.annToMask(a) for a in anns]
        plan = [(i, a["category_id"], 3, 0) for i, a in enumerate(anns) for _ in range(3)]
        while len(plan) < per_image:
            plan.append((int(rng.integers(len(anns))), int(rng.choice(cat_ids)), 0, 10))
        for i, cat, jitter, far in plan:
            shift = rng.integers(-jitter, jitter + 1, 2) if not far else rng.integers(far, 41, 2)
            m = np.roll(masks[i], tuple(int(v) for v in shift * rng.choice([-1, 1], 2)), (0, 1))
            grow = int(rng.integers(-2, 3))
            if grow > 0:
                m = cv2.dilate(m, kernel, iterations=grow)
            elif grow < 0:
                m = cv2.erode(m, kernel, iterations=-grow)
            if not m.any():
                continue
            rle = mask_util.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("utf-8")
            score = float(rng.uniform(0.05, 1.0))
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": cat,
                    "segmentation": rle,
                    "bbox": list(mask_util.toBbox(rle)),
                    "score": score,
                    "mask_score": score * float(rng.uniform(0.2, 1.0)),
                }
            )
    return dets


def boundary_cost(gt, dets, faster, repeats):
    """Median ms of faster-coco-eval's segm and of Boundary AP on the same ranked masks."""
    from ms_rcnn.evaluation.boundary import evaluate_boundary, ranked_detections

    ranked = ranked_detections(dets, "mask_score")
    segm_dets = [{k: v for k, v in d.items() if k != "bbox"} for d in ranked]
    t = median_ms(
        {
            "segm": lambda: evaluate(faster, gt, segm_dets, "segm"),
            "boundary": lambda: evaluate_boundary(gt.dataset, ranked),
        },
        repeats,
    )
    segm_ap = 100 * evaluate(faster, gt, segm_dets, "segm").stats[0]
    boundary_ap = evaluate_boundary(gt.dataset, ranked)["AP"]
    print("\n| faster-coco-eval | AP | ms | ratio to segm |")
    print("|---|---:|---:|---:|")
    print(f"| segm | {segm_ap:.2f} | {t['segm']:.0f} | 1.0x |")
    ratio = t["boundary"] / t["segm"]
    print(f"| boundary (dilation 0.02) | {boundary_ap:.2f} | {t['boundary']:.0f} | {ratio:.1f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", default=DEFAULT_PREDICTIONS)
    parser.add_argument(
        "--perturbed-gt",
        action="store_true",
        help="time detections made from the validation masks instead of a demo run's",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.perturbed_gt and not os.path.isfile(args.predictions):
        raise SystemExit(
            f"{args.predictions}: no such file; run `make demo` first, or use --perturbed-gt"
        )
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ms_rcnn.data import prepare_synthetic_dataset
    from ms_rcnn.evaluation.cocoeval_backend import faster_cocoeval_class

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(prepare_synthetic_dataset("synthetic_shapes_val"))
    if args.perturbed_gt:
        dets = perturbed_gt_detections(gt)
    else:
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
    boundary_cost(gt, dets, faster, args.repeats)


if __name__ == "__main__":
    main()
