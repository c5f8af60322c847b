"""Benchmark: what mask scoring adds to inference, against what its arithmetic requires.

1. Whole model: R-50-FPN Mask R-CNN (StandardROIHeads) vs MS R-CNN (MaskScoringROIHeads) with
   the same weights for every shared layer, one 800x1333 image, exactly 100 detections
   (SCORE_THRESH_TEST 0, so the box head keeps its top 100). Latency ratio (median of interleaved
   runs) next to the FLOP ratio from fvcore's counter (Detectron2's FlopCountAnalysis) for both.
   Also the mask-branch stage alone (`_forward_mask`), where the MaskIoU head runs.
2. The MaskIoU head alone on 100 RoIs: achieved GFLOP/s against the same layers run back to back
   as bare torch ops (conv2d / linear on the same shapes, no concatenation or pooling): the
   practical limit of this CPU for this arithmetic. Also a large matmul, the CPU's peak.

FLOPs are fvcore's: one multiply-add counts as one flop (GFLOP/s here are G multiply-adds/s).
Random weights: FrozenBatchNorm statistics are set from one pass so the RPN behaves (see
common.calibrate_frozen_bn). Run from the repository root:

    python benchmarks/bench_inference_overhead.py [--repeats 5] [--threads 1]
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    build_r50_fpn,
    calibrate_frozen_bn,
    command,
    machine,
    median_ms,
    random_image_inputs,
    timed_calls,
)

DETECTIONS = 100


def build_pair(inputs):
    """(baseline, ms) models in eval mode; ms has the baseline's weights for all shared layers."""
    _, baseline = build_r50_fpn(0.0, "StandardROIHeads")
    calibrate_frozen_bn(baseline, inputs)
    _, ms = build_r50_fpn(0.0, "MaskScoringROIHeads")
    result = ms.load_state_dict(baseline.state_dict(), strict=False)
    assert all(k.startswith("roi_heads.maskiou_head.") for k in result.missing_keys)
    assert not result.unexpected_keys
    return baseline, ms


def check_same_detections(baseline, ms, inputs):
    with torch.no_grad():
        a = baseline(inputs)[0]["instances"]
        b = ms(inputs)[0]["instances"]
    assert len(a) == len(b) == DETECTIONS, (len(a), len(b))
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.pred_masks, b.pred_masks)
    assert b.has("pred_maskiou") and b.has("mask_scores")


def time_models(models, inputs, repeats):
    """Interleaved whole-model and `_forward_mask` times (seconds) per model name."""
    total = {name: [] for name in models}
    stage = {name: [] for name in models}
    with contextlib.ExitStack() as timers, torch.no_grad():
        for name, model in models.items():
            timers.enter_context(timed_calls(model.roi_heads, "_forward_mask", stage[name]))
        for _ in range(repeats + 1):  # the first round warms up
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs)
                total[name].append(time.perf_counter() - start)
    # Runs alternate, so the ratio within each (baseline, MS) pair cancels slow load drift.
    names = list(models)
    pair_ratio = statistics.median(m / b for b, m in zip(total[names[0]][1:], total[names[1]][1:]))
    return (
        {n: 1000 * statistics.median(t[1:]) for n, t in total.items()},
        {n: 1000 * statistics.median(t[1:]) for n, t in stage.items()},
        pair_ratio,
    )


def count_flops(models, inputs):
    from detectron2.utils.analysis import FlopCountAnalysis

    flops = {}
    for name, model in models.items():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        # Module names carry the tracing wrapper's prefix; match them by their ending.
        by_module = analysis.by_module()

        def of(suffix, by_module=by_module):
            return sum(v for k, v in by_module.items() if k.endswith(suffix))

        flops[name] = {
            "total": analysis.total(),
            "mask_branch": of("roi_heads.mask_head") + of("roi_heads.mask_pooler"),
            "maskiou_head": of("roi_heads.maskiou_head"),
        }
    return flops


def head_rows(head, repeats):
    """The MaskIoU head vs its layers as bare ops on the same shapes, and a matmul peak."""
    from fvcore.nn import FlopCountAnalysis

    s = head.input_resolution
    g = torch.Generator().manual_seed(0)
    features = torch.randn(DETECTIONS, head.input_channels, s, s, generator=g).relu()
    masks = torch.rand(DETECTIONS, 1, 2 * s, 2 * s, generator=g)
    analysis = FlopCountAnalysis(head, (features, masks))
    analysis.unsupported_ops_warnings(False)
    head_flops = analysis.total()

    x0 = torch.cat([features, F.max_pool2d(masks, 2)], dim=1)
    conv_params = [(c.weight, c.bias, c.stride) for c in head.convs]
    fc_params = [(fc.weight, fc.bias) for fc in [*head.fcs, head.predictor]]

    def bare_layers():
        x = x0
        for w, b, stride in conv_params:
            x = F.relu(F.conv2d(x, w, b, stride, 1))
        x = x.flatten(1)
        for w, b in fc_params[:-1]:
            x = F.relu(F.linear(x, w, b))
        return F.linear(x, *fc_params[-1])

    a = torch.randn(2048, 2048, generator=g)
    with torch.no_grad():
        times = median_ms(
            {
                "head": lambda: head(features, masks),
                "bare": bare_layers,
                "matmul": lambda: a @ a,
            },
            repeats,
        )
    gemm_flops = 2048**3
    return head_flops, times, gemm_flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}")
    print(f"Command: {command()}\n")

    inputs = random_image_inputs()
    baseline, ms = build_pair(inputs)
    check_same_detections(baseline, ms, inputs)
    models = {"Mask R-CNN": baseline, "MS R-CNN": ms}
    total, stage, pair_ratio = time_models(models, inputs, args.repeats)
    flops = count_flops(models, inputs)

    print(f"R-50-FPN, 800x1333, {DETECTIONS} detections, median of {args.repeats} interleaved runs")
    print("| model | latency ms | mask branch ms | GFLOPs (fvcore) | mask branch GFLOPs |")
    print("|---|---:|---:|---:|---:|")
    for name in models:
        f = flops[name]
        branch = f["mask_branch"] + f["maskiou_head"]
        print(
            f"| {name} | {total[name]:.0f} | {stage[name]:.0f} | {f['total'] / 1e9:.1f} | "
            f"{branch / 1e9:.1f} |"
        )
    b, m = "Mask R-CNN", "MS R-CNN"
    latency_over = 100 * (pair_ratio - 1)
    flop_over = 100 * (flops[m]["total"] / flops[b]["total"] - 1)
    print(
        f"\nMS / Mask R-CNN - 1 (median of per-pair ratios): latency {latency_over:+.1f}%, "
        f"FLOPs {flop_over:+.1f}% "
        f"(gap {latency_over - flop_over:+.1f} points); time added {total[m] - total[b]:.0f} ms, "
        f"of which in the mask branch {stage[m] - stage[b]:.0f} ms"
    )

    head_flops, times, gemm_flops = head_rows(ms.roi_heads.maskiou_head, 3 * args.repeats)
    print(f"\nMaskIoU head alone, {DETECTIONS} RoIs, {head_flops / 1e9:.2f} GFLOPs:")
    print("| what | ms | GFLOP/s | share of the bare layers' rate |")
    print("|---|---:|---:|---:|")
    bare_rate = head_flops / times["bare"] / 1e6
    for label, key, fl in (
        ("MaskIoUHead.forward", "head", head_flops),
        ("its layers as bare conv2d/linear calls (practical limit)", "bare", head_flops),
        ("2048x2048 matmul (CPU peak, for scale)", "matmul", gemm_flops),
    ):
        rate = fl / times[key] / 1e6
        print(f"| {label} | {times[key]:.1f} | {rate:.1f} | {rate / bare_rate:.2f} |")


if __name__ == "__main__":
    main()
