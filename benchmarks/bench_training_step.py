"""Benchmark: time per training step, Mask R-CNN vs MS R-CNN, and the share spent on IoU targets.

Two settings, both on the project's generated synthetic_shapes_train data (RLE masks, so GT is
BitMasks as in the demo):

* demo: the CPU demo config (configs/demo/*_R_18_demo.yaml: R-18-GN-FPN, 128 px, batch 8);
* r50: full-width R-50-FPN (configs/Base-RCNN-FPN.yaml, FrozenBN, 512 RoIs/image) at a small
  input (the same images resized to 320 px), batch 2; random weights, with the FrozenBN
  statistics set from one batch and a small learning rate so that training stays finite.

Both models start from the same weights for every shared layer and train on the same prefetched
batches, taking turns step by step, so load drift on the shared machine hits both alike. A
step is forward + backward + SGD update. Inside the MS R-CNN steps, the time in
`mask_iou_targets` (given the GT crops the mask loss needs anyway) and in `gt_mask_crops` (the
crop itself, which the baseline's mask loss also computes) is measured.

Run from the repository root:

    python benchmarks/bench_training_step.py [--steps 10] [--threads 1] [--settings demo r50]
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import calibrate_frozen_bn, command, machine, timed_calls  # noqa: E402


def settings_cfg(setting, roi_heads):
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "demo", "Base-Demo-CPU.yaml"))
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.DATALOADER.NUM_WORKERS = 0
    if setting == "r50":
        base = get_cfg()
        add_ms_rcnn_config(base)
        base.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
        for node in ("RESNETS", "FPN", "ANCHOR_GENERATOR", "RPN", "ROI_BOX_HEAD"):
            cfg.MODEL[node] = base.MODEL[node].clone()
        cfg.MODEL.ROI_MASK_HEAD = base.MODEL.ROI_MASK_HEAD.clone()
        cfg.MODEL.ROI_MASKIOU_HEAD = base.MODEL.ROI_MASKIOU_HEAD.clone()
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = base.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = base.MODEL.PIXEL_MEAN, base.MODEL.PIXEL_STD
        cfg.MODEL.RESNETS.DEPTH = 50
        cfg.MODEL.BACKBONE.FREEZE_AT = 2
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (320,), 320
        cfg.SOLVER.IMS_PER_BATCH = 2
        # Random weights: a small step keeps training finite; the time per step is the same.
        cfg.SOLVER.BASE_LR = 1e-4
    return cfg


def prefetch(cfg, num):
    from detectron2.data import build_detection_train_loader

    import ms_rcnn.data  # noqa: F401  (registers the synthetic datasets)

    it = iter(build_detection_train_loader(cfg))
    return [next(it) for _ in range(num)]


def run_setting(setting, steps):
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    import ms_rcnn.modeling.mask_scoring as mask_scoring

    cfgs = {
        name: settings_cfg(setting, name) for name in ("StandardROIHeads", "MaskScoringROIHeads")
    }
    torch.manual_seed(0)
    models = {name: build_model(cfg).train() for name, cfg in cfgs.items()}
    batches = prefetch(cfgs["StandardROIHeads"], steps + 2)
    if setting == "r50":  # FrozenBN with identity statistics would blow the activations up
        models["StandardROIHeads"].eval()
        calibrate_frozen_bn(models["StandardROIHeads"], batches[0])
        models["StandardROIHeads"].train()
    missing = models["MaskScoringROIHeads"].load_state_dict(
        models["StandardROIHeads"].state_dict(), strict=False
    )
    assert all(k.startswith("roi_heads.maskiou_head.") for k in missing.missing_keys)
    optimizers = {name: build_optimizer(cfgs[name], m) for name, m in models.items()}
    times = {name: [] for name in models}
    calls = {"mask_iou_targets": [], "gt_mask_crops": []}  # seconds per call, MS R-CNN steps
    parts = []  # per timed MS R-CNN step: ({function: seconds in it}, step seconds)
    with contextlib.ExitStack() as timers, EventStorage():
        for fn, sink in calls.items():
            timers.enter_context(timed_calls(mask_scoring, fn, sink))
        for i, batch in enumerate(batches):
            for name, model in models.items():
                torch.manual_seed(i)  # same sampling of RoIs in both models
                before = {fn: len(sink) for fn, sink in calls.items()}
                start = time.perf_counter()
                losses = model(batch)
                optimizers[name].zero_grad()
                sum(losses.values()).backward()
                optimizers[name].step()
                elapsed = time.perf_counter() - start
                if i >= 2:  # two warm-up steps
                    times[name].append(elapsed)
                    if name == "MaskScoringROIHeads":
                        spent = {fn: sum(s[before[fn] :]) for fn, s in calls.items()}
                        parts.append((spent, elapsed))
    base = statistics.median(times["StandardROIHeads"])
    ms = statistics.median(times["MaskScoringROIHeads"])
    ratio = statistics.median(
        m / b for b, m in zip(times["StandardROIHeads"], times["MaskScoringROIHeads"])
    )
    target_share = statistics.median(p["mask_iou_targets"] / e for p, e in parts)
    crop_share = statistics.median(p["gt_mask_crops"] / e for p, e in parts)
    target_ms = 1000 * statistics.median(p["mask_iou_targets"] for p, _ in parts)
    crop_ms = 1000 * statistics.median(p["gt_mask_crops"] for p, _ in parts)
    return base, ms, ratio, target_ms, target_share, crop_ms, crop_share


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--settings", nargs="+", default=["demo", "r50"], choices=["demo", "r50"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does on the CPU
    print(f"Machine: {machine()}")
    print(f"Command: {command()}\n")
    print(f"Median of {args.steps} steps per model (after 2 warm-up steps), interleaved.\n")
    print(
        "| setting | Mask R-CNN s/step | MS R-CNN s/step | MS / Mask (median of per-step "
        "ratios) | IoU targets ms (share of step) | GT crop ms (share; the mask loss needs it "
        "too) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for setting in args.settings:
        base, ms, ratio, t_ms, t_share, c_ms, c_share = run_setting(setting, args.steps)
        print(
            f"| {setting} | {base:.3f} | {ms:.3f} | {ratio:.3f} | "
            f"{t_ms:.1f} ({100 * t_share:.2f}%) | {c_ms:.1f} ({100 * c_share:.2f}%) |"
        )


if __name__ == "__main__":
    main()
