"""Benchmark: vectorized `mask_iou_targets` vs a per-RoI Python loop (the reference ports' style).

Setting: 2 images of 800 x 1333, 8 GT instances each (star polygons, ~24 vertices, 1-2 parts),
128 positive RoIs per image (jittered GT boxes), 80-class logits at M = 28; GT as BitMasks and
as PolygonMasks; each RoI tagged with its GT's index, as MaskScoringMixin's sampling does.

Two like-for-like comparisons with the loop: from scratch (GT crop + area ratio + IoU; the
loop crops inside it, as maskrcnn-benchmark's does), and given the GT crops the mask loss computes
anyway (area ratio + IoU: what MS R-CNN adds to a training step; mmdetection's loop computes only
this part). Then Detectron2's own `crop_and_resize` and `gt_mask_crops` (the crop shared by the
mask loss and the targets).

Run: .venv/bin/python benchmarks/bench_maskiou_targets.py [--repeats 5] [--threads 1]
"""

import argparse
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import command, machine, median_ms  # noqa: E402

from ms_rcnn.modeling.maskiou_targets import gt_mask_crops, mask_iou_targets  # noqa: E402

H, W, M, K, ROIS, GTS = 800, 1333, 28, 80, 128, 8


def make_batch(fmt, rng):
    images = []
    for _ in range(2):
        polys, boxes = [], []
        for _ in range(GTS):
            parts = []
            for _ in range(rng.integers(1, 3)):
                n = 24
                ang = (np.arange(n) + rng.uniform(0, 0.9, n)) * 2 * np.pi / n
                rad = rng.uniform(40, 160) * rng.uniform(0.6, 1.0, n)
                cx, cy = rng.uniform(170, W - 170), rng.uniform(170, H - 170)
                parts.append(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).ravel())
            polys.append(parts)
            xy = np.concatenate(parts).reshape(-1, 2)
            boxes.append([*xy.min(0), *xy.max(0)])
        match = rng.integers(0, GTS, ROIS)
        gt_boxes = np.array(boxes)[match]
        size = gt_boxes[:, 2:] - gt_boxes[:, :2]
        jitter = rng.uniform(-0.15, 0.15, (ROIS, 4)) * np.concatenate([size, size], 1)
        inst = Instances((H, W))
        inst.proposal_boxes = Boxes(torch.tensor(gt_boxes + jitter, dtype=torch.float32))
        inst.gt_classes = torch.from_numpy(rng.integers(0, K, ROIS))
        inst.gt_index = torch.from_numpy(match)  # as MaskScoringMixin's sampling tags them
        matched = [polys[j] for j in match]
        if fmt == "polygon":
            inst.gt_masks = PolygonMasks(matched)
        else:  # what Detectron2's sampler produces: one image-size mask per proposal
            inst.gt_masks = BitMasks.from_polygon_masks(polys, H, W)[torch.from_numpy(match)]
        images.append(inst)
    return images


def per_roi_loop(logits, images, crops=None):
    """Reference style: one RoI at a time, on the CPU, with the official clamps; it crops the GT
    itself unless given the (R, M, M) crops, like `mask_iou_targets(..., gt_crops=)`."""
    out, r = [], 0
    for inst in images:
        for i in range(len(inst)):
            box = inst.proposal_boxes.tensor[i]
            gt = inst.gt_masks[i]
            crop = gt.crop_and_resize(box[None], M)[0] if crops is None else crops[r]
            x1, y1, x2, y2 = (int(v) for v in box.tolist())
            if isinstance(gt, BitMasks):
                full = gt.tensor[0]
                ratio = full[max(y1, 0) : y2, max(x1, 0) : x2].sum().item() / max(full.sum(), 1)
            else:  # rasterize the polygons on the whole image and inside the box
                rle = mask_util.merge(mask_util.frPyObjects(gt.polygons[0], H, W))
                shifted = [p - np.tile([x1, y1], len(p) // 2) for p in gt.polygons[0]]
                rle_in = mask_util.merge(mask_util.frPyObjects(shifted, y2 - y1, x2 - x1))
                ratio = float(mask_util.area(rle_in)) / max(float(mask_util.area(rle)), 1.0)
            pred = logits[r, int(inst.gt_classes[i])] > 0
            p, g, inter = pred.sum().item(), crop.sum().item(), (pred & crop).sum().item()
            union = max(p + g / max(ratio, 1e-10) - inter, 1.0)
            out.append(max(inter, 0) / union)
            r += 1
    return torch.tensor(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"Machine: {machine()}")
    print(f"Command: {command()}")
    print(f"setting: 2 images x {ROIS} RoIs, K={K}, M={M}, {H}x{W}, median of {args.repeats}")
    print(
        "| GT format | from scratch: vectorized | per-RoI loop | speed-up | given the crops: "
        "vectorized | per-RoI loop | speed-up | Detectron2 crop alone | gt_mask_crops |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for fmt in ("bitmask", "polygon"):
        images = make_batch(fmt, np.random.default_rng(0))
        logits = torch.randn(2 * ROIS, K, M, M)
        crops = torch.cat(gt_mask_crops(images, M))
        fns = {
            "scratch": lambda: mask_iou_targets(logits, images),  # noqa: B023
            "loop": lambda: per_roi_loop(logits, images),  # noqa: B023
            "shared": lambda: mask_iou_targets(logits, images, gt_crops=crops),  # noqa: B023
            "loop shared": lambda: per_roi_loop(logits, images, crops),  # noqa: B023
            "d2 crop": lambda: [
                x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, M)
                for x in images  # noqa: B023
            ],
            "our crop": lambda: gt_mask_crops(images, M),  # noqa: B023
        }
        t = median_ms(fns, args.repeats, min_sample_s=0.2)
        d2_crop = torch.cat(fns["d2 crop"]())
        assert torch.equal(crops, d2_crop), "gt_mask_crops differs from Detectron2's crop"
        diff = (fns["scratch"]() - fns["loop"]()).abs()
        assert torch.equal(fns["scratch"](), fns["shared"]())
        assert torch.equal(fns["loop"](), fns["loop shared"]())
        print(
            f"| {fmt} | {t['scratch']:.1f} ms | {t['loop']:.1f} ms | "
            f"{t['loop'] / t['scratch']:.1f}x | {t['shared']:.1f} ms | {t['loop shared']:.1f} ms | "
            f"{t['loop shared'] / t['shared']:.1f}x | {t['d2 crop']:.1f} ms | "
            f"{t['our crop']:.1f} ms |"
        )
        print(f"<!-- {fmt}: |vectorized - loop| mean {diff.mean():.5f}, max {diff.max():.4f} -->")


if __name__ == "__main__":
    main()
