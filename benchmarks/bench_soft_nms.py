"""Benchmark Soft-NMS on a Detectron2-sized workload and inside an R-50-FPN Mask R-CNN.

Prints a markdown table of medians over `--repeats` runs:

* Micro: per-class candidates of ~1000 proposals x 80 classes (made like
  `fast_rcnn_inference` does: every (proposal, class) with score > the test threshold) at score
  thresholds 0.05 and 0.001, timed for `batched_soft_nms` (gaussian, linear, and gaussian with
  `topk=100` as used at inference), torchvision's `batched_nms`, and the plain-loop reference of
  tests/test_soft_nms.py (the textbook algorithm over Python lists).
* End to end: a full-width R-50-FPN Mask R-CNN (configs/Base-RCNN-FPN.yaml, MASK_ON, 80 classes,
  random weights) on one random 800x1333 image, with Detectron2's hard NMS and with Soft-NMS.

Run from the repository root: python benchmarks/bench_soft_nms.py [--repeats 7] [--threads 1]
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torchvision.ops import batched_nms

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from common import build_r50_fpn, calibrate_frozen_bn, machine, median_ms, timed_calls  # noqa: E402
from test_soft_nms import reference_soft_nms  # noqa: E402  (the one plain-loop reference)

from ms_rcnn.modeling.soft_nms import batched_soft_nms  # noqa: E402


def detection_workload(num_proposals=1000, num_classes=80, num_objects=20, seed=0):
    """Class-specific boxes (P, K, 4) and class scores (P, K) that look like a trained head's.

    70% of the proposals jitter around `num_objects` objects of random classes, the rest are
    background. Per-class boxes jitter around their proposal. Logits are N(0, 2) with the
    background logit raised by 8 and the object's class raised by 8-10, so after the softmax a
    few classes per proposal are likely and the rest are small but not all tiny.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = 800.0, 1333.0
    size = torch.rand(num_objects, 2, generator=g) * 400 + 20
    corner = torch.rand(num_objects, 2, generator=g) * (torch.tensor([width, height]) - size)
    objects = torch.cat([corner, corner + size], dim=1)
    object_class = torch.randint(0, num_classes, (num_objects,), generator=g)

    num_fg = int(0.7 * num_proposals)
    which = torch.randint(0, num_objects, (num_fg,), generator=g)
    extent = (objects[which, 2:] - objects[which, :2]).repeat(1, 2)
    fg = objects[which] + torch.randn(num_fg, 4, generator=g) * 0.15 * extent
    bg_size = torch.rand(num_proposals - num_fg, 2, generator=g) * 300 + 10
    bg_corner = torch.rand(num_proposals - num_fg, 2, generator=g) * (
        torch.tensor([width, height]) - bg_size
    )
    proposals = torch.cat([fg, torch.cat([bg_corner, bg_corner + bg_size], dim=1)])
    extent = (proposals[:, 2:] - proposals[:, :2]).abs().repeat(1, 2)
    noise = torch.randn(num_proposals, num_classes, 4, generator=g) * 0.05 * extent[:, None]
    boxes = proposals[:, None, :] + noise
    x0, x1 = boxes[..., 0::2].min(-1).values, boxes[..., 0::2].max(-1).values
    y0, y1 = boxes[..., 1::2].min(-1).values, boxes[..., 1::2].max(-1).values
    boxes = torch.stack([x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width)], -1)
    boxes = torch.cat([boxes, y1.clamp(0, height)[..., None]], dim=-1)

    logits = torch.randn(num_proposals, num_classes + 1, generator=g) * 2.0
    logits[:, -1] += 8.0
    logits[torch.arange(num_fg), object_class[which]] += 8.0 + 2 * torch.rand(num_fg, generator=g)
    return boxes, logits.softmax(-1)[:, :-1]


def candidates(boxes, scores, score_thresh):
    """(R', 4) boxes, (R',) scores, (R',) classes with score > score_thresh (as Detectron2)."""
    mask = scores > score_thresh
    inds = mask.nonzero()
    return boxes[mask], scores[mask], inds[:, 1]


def micro_rows(args):
    boxes, scores = detection_workload(seed=args.seed)
    rows = []
    for thresh in (0.05, 0.001):
        b, s, c = candidates(boxes, scores, thresh)
        per_class = torch.bincount(c, minlength=80)
        label = f"{thresh} ({len(s)} cand., <= {int(per_class.max())}/class)"
        keep, _ = batched_soft_nms(b, s, c, "gaussian")
        ref_keep, _ = reference_soft_nms(b, s, c, "gaussian")
        assert sorted(keep.tolist()) == sorted(ref_keep), "disagrees with the reference"
        timings = median_ms(_implementations(b, s, c), args.repeats)
        loop = {"gaussian": timings["plain loop gaussian"], "linear": timings["plain loop linear"]}
        nms_ms = timings["torchvision batched_nms 0.5"]
        for name, ms in timings.items():
            method = "linear" if "linear" in name else "gaussian"
            baseline = "plain" in name or "torchvision" in name
            speedup = "" if baseline else f"{loop[method] / ms:.1f}x"
            rows.append((label, name, f"{ms:.2f}", speedup, f"{ms / nms_ms:.1f}"))
    return rows


def _implementations(b, s, c):
    """What the micro benchmark times, on boxes b, scores s, classes c."""
    return {
        "plain loop gaussian": lambda: reference_soft_nms(b, s, c, "gaussian"),
        "plain loop linear": lambda: reference_soft_nms(b, s, c, "linear"),
        "batched_soft_nms gaussian": lambda: batched_soft_nms(b, s, c, "gaussian"),
        "batched_soft_nms linear": lambda: batched_soft_nms(b, s, c, "linear"),
        "batched_soft_nms gaussian topk=100": lambda: batched_soft_nms(
            b, s, c, "gaussian", topk=100
        ),
        "torchvision batched_nms 0.5": lambda: batched_nms(b, s, c, 0.5),
    }


def e2e_rows(args):
    from ms_rcnn.modeling.box_predictor import SoftNMSFastRCNNOutputLayers

    g = torch.Generator().manual_seed(args.seed)
    image = torch.randint(0, 256, (3, 800, 1333), generator=g, dtype=torch.uint8)
    inputs = [{"image": image, "height": 800, "width": 1333}]
    cfg, model = build_r50_fpn(0.001)
    calibrate_frozen_bn(model, inputs)
    heads = model.roi_heads
    hard = heads.box_predictor
    cfg.TEST.SOFT_NMS.ENABLED = True
    soft = SoftNMSFastRCNNOutputLayers(cfg, heads.box_head.output_shape)
    soft.load_state_dict(hard.state_dict())

    # The candidate scores, to report counts and to pick a threshold leaving ~1000 of them.
    probs = []
    hook = hard.register_forward_hook(lambda m, i, out: probs.append(out[0].softmax(-1)[:, :-1]))
    with torch.no_grad():
        model(inputs)
    hook.remove()
    probs = probs[0].flatten()
    calibrated = float(probs.sort(descending=True).values[min(999, len(probs) - 1)]) * 0.9999

    rows = []
    for thresh in (0.001, calibrated):
        num_candidates = int((probs > thresh).sum())
        stage = {hard: [], soft: []}  # seconds in box_predictor.inference (the NMS stage)
        e2e = {hard: [], soft: []}
        with contextlib.ExitStack() as timers:
            for predictor in (hard, soft):
                predictor.test_score_thresh = thresh
                timers.enter_context(timed_calls(predictor, "inference", stage[predictor]))
            for _ in range(args.e2e_repeats + 1):  # the first run warms up; alternate
                for predictor in (hard, soft):
                    heads.box_predictor = predictor
                    start = time.perf_counter()
                    with torch.no_grad():
                        num_dets = len(model(inputs)[0]["instances"])
                    e2e[predictor].append(time.perf_counter() - start)
        heads.box_predictor = hard

        def ms(times):
            return 1000 * statistics.median(times[1:])

        label = f"{thresh:.4g} ({num_candidates} cand., {num_dets} dets)"
        added = ms(stage[soft]) - ms(stage[hard])
        e2e_change = 100 * (ms(e2e[soft]) - ms(e2e[hard])) / ms(e2e[hard])
        rows.append(
            (label, "Detectron2 hard NMS 0.5", f"{ms(e2e[hard]):.0f}", f"{ms(stage[hard]):.1f}", "")
        )
        rows.append(
            (
                label,
                "Soft-NMS gaussian",
                f"{ms(e2e[soft]):.0f}",
                f"{ms(stage[soft]):.1f}",
                f"{added:+.1f} ms = {100 * added / ms(e2e[hard]):+.2f}% "
                f"(e2e medians differ by {e2e_change:+.1f}%)",
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per micro row")
    parser.add_argument("--e2e-repeats", type=int, default=5, help="timed runs per e2e row")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-e2e", action="store_true", help="only the micro benchmark")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"Machine: {machine()}")
    print(f"Command: python {' '.join(sys.argv)}\n")
    print("Soft-NMS of the per-class candidates of 1000 proposals x 80 classes, median of")
    print(f"{args.repeats} runs (sigma 0.5, linear IoU threshold 0.3, score threshold 0.001).\n")
    print("| test score thresh | implementation | median ms | speed-up vs plain loop | x NMS |")
    print("|---|---|---:|---:|---:|")
    for row in micro_rows(args):
        print("| " + " | ".join(row) + " |")
    if args.skip_e2e:
        return
    print(f"\nR-50-FPN Mask R-CNN, random weights, an 800x1333 image, median of {args.e2e_repeats}")
    print("runs. The second threshold is picked so ~1000 candidates survive. 'stage' is the time")
    print("in box_predictor.inference (candidates + NMS or Soft-NMS), 'added' its difference.\n")
    print("| SCORE_THRESH_TEST | box NMS | e2e ms | stage ms | added by Soft-NMS |")
    print("|---|---|---:|---:|---|")
    for row in e2e_rows(args):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
