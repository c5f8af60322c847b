#!/usr/bin/env python
"""Check ms-rcnn on a CUDA GPU. No GPU has run this code yet: run this on the first one.

    python scripts/check_gpu.py [--detectron2-src ../shared/detectron2/detectron2-main.tar.gz]

Steps, each a row of the final table with its result and time:

1. cuda-ops: Detectron2's build (ms_rcnn.env) has CUDA ops, and one (rotated-box IoU) gives
   the CPU's numbers on the GPU. With --detectron2-src and a build without CUDA ops, Detectron2
   is first rebuilt from that source (scripts/install_detectron2.py --source SRC --force).
2. device-tests: the suite's device-dependent tests (`pytest -m device`) on cuda.
3. amp-training: tools/train_net.py trains the demo's MS R-CNN for --iters iterations (100)
   with SOLVER.AMP.ENABLED True on cuda; every logged loss must be finite.
4. maskiou-targets: one training batch through the CPU model; the MaskIoU targets computed on
   the GPU from the same mask logits and instances equal the CPU's (TARGET_TOL).
5. cpu-vs-gpu: the weights of step 3 on --images validation images, on the CPU and on the GPU
   (fp32): boxes, masks and mask scores agree within the tolerances below.

Without a GPU it says so and exits 0: nothing is checked, and nothing is claimed. The exit
status is 1 when a step fails.
`--dry-run-on-cpu` runs the same steps with the CPU as the second device (and AMP off:
Detectron2's AMP trainer needs CUDA), to check this script itself; it is not a GPU check.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "demo" / "ms_rcnn_R_18_demo.yaml"

# Tolerances, GPU against CPU on the same weights and inputs (fp32 inference; cuDNN and the
# CPU sum in different orders, so not bit-equal):
TARGET_TOL = 1e-4  # MaskIoU targets: max |difference| over the batch's RoIs
MIN_SCORE = 0.3  # compare the confident detections only (low-score ones may swap order)
BOX_TOL = 0.5  # pixels, each coordinate of a matched box
MASK_IOU_MIN = 0.98  # IoU between the two masks of a matched detection
SCORE_TOL = 0.01  # |difference| of scores and of mask scores
MATCHED_MIN = 0.98  # share of the CPU's confident detections the GPU must match

CUDA_OPS_CHECK = """
import json, torch
from detectron2.structures import RotatedBoxes, pairwise_iou_rotated
from ms_rcnn.env import detectron2_build, detectron2_line
build = detectron2_build()
boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 0.0, 2.0, 2.0, 30.0]])
out = {"cuda_ops": build["cuda_ops"], "line": detectron2_line(build)}
try:
    cpu = pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes))
    dev = pairwise_iou_rotated(RotatedBoxes(boxes.to(DEVICE)), RotatedBoxes(boxes.to(DEVICE)))
    out["max_diff"] = float((dev.cpu() - cpu).abs().max())
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kwargs)


def step_cuda_ops(args):
    if args.detectron2_src:
        code = CUDA_OPS_CHECK.replace("DEVICE", repr(args.device))
        first = json.loads(run([sys.executable, "-c", code]).stdout.splitlines()[-1])
        if first["cuda_ops"] != "yes" and args.device == "cuda":
            cmd = [sys.executable, "scripts/install_detectron2.py", "--source",
                   args.detectron2_src, "--force"]  # fmt: skip
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode != 0:
                return False, f"rebuilding from {args.detectron2_src} failed (see above)"
    code = CUDA_OPS_CHECK.replace("DEVICE", repr(args.device))
    proc = run([sys.executable, "-c", code])
    if proc.returncode != 0:
        return False, proc.stderr.strip().splitlines()[-1]
    out = json.loads(proc.stdout.splitlines()[-1])
    if "error" in out and args.device == "cpu" and "stand-in" in out["line"]:
        return None, f"{out['line']}; no compiled op to run"  # dry run on the stand-in build
    if "error" in out:
        return False, f"{out['line']}; rotated IoU on {args.device}: {out['error'][:200]}"
    ok = out["max_diff"] <= 1e-5 and (out["cuda_ops"] == "yes" or args.device == "cpu")
    return ok, f"{out['line']}; rotated IoU, max abs diff {args.device} - cpu {out['max_diff']:.1e}"


def step_device_tests(args):
    env = dict(os.environ, MS_RCNN_TEST_DEVICE=args.device, OMP_NUM_THREADS="1")
    proc = run([sys.executable, "-m", "pytest", "-m", "device", "-q", "-p", "no:cacheprovider"],
               env=env)  # fmt: skip
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:])
    return proc.returncode == 0, summary


def step_amp_training(args):
    out = Path(args.output_dir) / "amp"
    amp = args.device == "cuda"
    cmd = [sys.executable, "tools/train_net.py", "--config-file", str(CONFIG),
           "OUTPUT_DIR", str(out), "MODEL.DEVICE", args.device, "SOLVER.AMP.ENABLED", str(amp),
           "SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", "()",
           "SOLVER.WARMUP_ITERS", str(min(100, args.iters)), "SOLVER.CHECKPOINT_PERIOD",
           str(args.iters), "SOLVER.IMS_PER_BATCH", str(args.batch),
           "DATASETS.TRAIN", f"('{args.train_set}',)", "DATASETS.TEST", "()"]  # fmt: skip
    proc = run(cmd)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return False, f"tools/train_net.py exited {proc.returncode}"
    records = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    losses = [(r["iteration"], k, v) for r in records for k, v in r.items()
              if k.startswith("loss_") or k == "total_loss"]  # fmt: skip
    bad = [(i, k, v) for i, k, v in losses if not math.isfinite(v)]
    steps = sorted({i for i, _, _ in losses})
    if bad or not steps or steps[-1] != args.iters - 1 or not (out / "model_final.pth").is_file():
        return False, f"non-finite losses {bad[:3]}, logged iterations {steps[-3:]}"
    last = {k: v for i, k, v in losses if i == steps[-1]}
    return True, (
        f"{args.iters} iterations, AMP {'on' if amp else 'off (CPU)'}, {len(losses)} logged "
        f"losses finite; last total_loss {last.get('total_loss', float('nan')):.3f}, "
        f"loss_maskiou {last.get('loss_maskiou', float('nan')):.4f}"
    )


def demo_model(args, device, weights):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import ms_rcnn.data  # noqa: F401  (registers the synthetic datasets)
    from ms_rcnn import add_ms_rcnn_config, merge_config_file

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    merge_config_file(cfg, str(CONFIG))
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    cfg.DATASETS.TRAIN = (args.train_set,)
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights.is_file():
        DetectionCheckpointer(model).load(str(weights))
    return cfg, model


def step_maskiou_targets(args):
    import torch
    from detectron2.data import build_detection_train_loader
    from detectron2.utils.events import EventStorage

    import ms_rcnn.modeling.mask_scoring as mask_scoring
    from ms_rcnn.modeling.maskiou_targets import mask_iou_targets

    cfg, model = demo_model(args, "cpu", Path(args.output_dir) / "amp" / "model_final.pth")
    batch = next(iter(build_detection_train_loader(cfg)))
    seen = []

    def recording(logits, instances, threshold, gt_crops=None):
        out = mask_iou_targets(logits, instances, threshold, gt_crops=gt_crops)
        seen.append((logits, instances, threshold, gt_crops, out))
        return out

    saved, mask_scoring.mask_iou_targets = mask_scoring.mask_iou_targets, recording
    try:
        model.train()
        with EventStorage():
            model(batch)
    finally:
        mask_scoring.mask_iou_targets = saved
    (logits, instances, threshold, crops, cpu), dev = seen[0], args.device
    on_dev = [x.to(dev) for x in instances]
    given = mask_iou_targets(logits.detach().to(dev), on_dev, threshold, gt_crops=crops.to(dev))
    own = mask_iou_targets(logits.detach().to(dev), on_dev, threshold)  # its own GT crops too
    diffs = [float((t.cpu() - cpu).abs().max()) if len(cpu) else 0.0 for t in (given, own)]
    off = int(((own.cpu() - cpu).abs() > TARGET_TOL).sum())
    ok = max(diffs) <= TARGET_TOL and torch.isfinite(cpu).all() and given.device.type == dev
    return bool(ok), (
        f"{len(cpu)} RoIs: max abs diff {dev} - cpu {diffs[0]:.1e} with the CPU's GT crops, "
        f"{diffs[1]:.1e} with its own ({off} RoIs beyond {TARGET_TOL})"
    )


def predictions(args, device, images):
    import torch

    _, model = demo_model(args, device, Path(args.output_dir) / "amp" / "model_final.pth")
    model.eval()
    with torch.no_grad():
        return [model([im])[0]["instances"].to("cpu") for im in images]


def match(a, b):
    """Greedy same-class matches of a's confident detections in b: [(i, j, box IoU)]."""
    from detectron2.structures import pairwise_iou

    keep_a = (a.scores >= MIN_SCORE).nonzero().flatten().tolist()
    if not keep_a or not len(b):
        return [], len(keep_a)
    iou = pairwise_iou(a.pred_boxes[keep_a], b.pred_boxes)
    pairs, used = [], set()
    for row, i in enumerate(keep_a):
        order = iou[row].argsort(descending=True).tolist()
        j = next((j for j in order if j not in used and b.pred_classes[j] == a.pred_classes[i]),
                 None)  # fmt: skip
        if j is not None and iou[row, j] >= 0.9:
            used.add(j)
            pairs.append((i, j))
    return pairs, len(keep_a)


def step_cpu_vs_gpu(args):
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg, _ = demo_model(args, "cpu", Path("-"))
    mapper = DatasetMapper(cfg, is_train=False)
    images = [mapper(d) for d in DatasetCatalog.get(args.val_set)[: args.images]]
    cpu, dev = predictions(args, "cpu", images), predictions(args, args.device, images)
    worst = {"box": 0.0, "mask_iou": 1.0, "score": 0.0, "mask_score": 0.0}
    matched = confident = 0
    for a, b in zip(cpu, dev):
        pairs, n = match(a, b)
        matched, confident = matched + len(pairs), confident + n
        for i, j in pairs:
            box = (a.pred_boxes.tensor[i] - b.pred_boxes.tensor[j]).abs().max()
            inter = (a.pred_masks[i] & b.pred_masks[j]).sum()
            union = (a.pred_masks[i] | b.pred_masks[j]).sum().clamp(min=1)
            worst["box"] = max(worst["box"], float(box))
            worst["mask_iou"] = min(worst["mask_iou"], float(inter / union))
            worst["score"] = max(worst["score"], float((a.scores[i] - b.scores[j]).abs()))
            ms = (a.mask_scores[i] - b.mask_scores[j]).abs()
            worst["mask_score"] = max(worst["mask_score"], float(ms))
    share = matched / confident if confident else 1.0
    ok = (share >= MATCHED_MIN and worst["box"] <= BOX_TOL and worst["mask_iou"] >= MASK_IOU_MIN
          and worst["score"] <= SCORE_TOL and worst["mask_score"] <= SCORE_TOL)  # fmt: skip
    return ok, (
        f"{len(images)} images, {matched}/{confident} detections with score >= {MIN_SCORE} "
        f"matched; worst: box {worst['box']:.3f} px (<= {BOX_TOL}), mask IoU "
        f"{worst['mask_iou']:.4f} (>= {MASK_IOU_MIN}), score {worst['score']:.4f}, mask score "
        f"{worst['mask_score']:.4f} (<= {SCORE_TOL})"
    )


STEPS = [
    ("cuda-ops", step_cuda_ops),
    ("device-tests", step_device_tests),
    ("amp-training", step_amp_training),
    ("maskiou-targets", step_maskiou_targets),
    ("cpu-vs-gpu", step_cpu_vs_gpu),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectron2-src", help="rebuild Detectron2 from this checkout or "
                        "tarball first if it has no CUDA ops")  # fmt: skip
    parser.add_argument("--iters", type=int, default=100, help="AMP training iterations")
    parser.add_argument("--batch", type=int, default=8, help="images per training batch")
    parser.add_argument("--images", type=int, default=20, help="images compared CPU vs GPU")
    parser.add_argument("--train-set", default="synthetic_shapes_train")
    parser.add_argument("--val-set", default="synthetic_shapes_val")
    parser.add_argument("--output-dir", help="default: a temporary folder")
    parser.add_argument("--steps", nargs="+", choices=[name for name, _ in STEPS],
                        help="run only these steps")  # fmt: skip
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="the CPU as second device: checks the script, not a GPU")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    args.device = "cpu" if args.dry_run_on_cpu else "cuda"
    if not args.dry_run_on_cpu and not torch.cuda.is_available():
        print(
            f"no GPU: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA "
            "device here, so nothing was checked. Run this on a machine with a CUDA GPU."
        )
        return 0
    if args.dry_run_on_cpu:
        print("DRY RUN: the CPU stands in for the GPU; this checks the script, not a GPU.")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="check-gpu-") as tmp:
        args.output_dir = args.output_dir or tmp
        for name, step in STEPS:
            if args.steps and name not in args.steps:
                continue
            print(f"--- {name}", flush=True)
            start = time.perf_counter()
            try:
                ok, detail = step(args)
            except Exception as e:  # a crashed step is a failed row; the others still run
                ok, detail = False, f"{type(e).__name__}: {str(e)[:300]}"
            failed += ok is False
            result = {True: "pass", False: "FAIL", None: "n/a"}[ok]
            rows.append((name, result, detail, time.perf_counter() - start))
            print(f"{name}: {rows[-1][1]}: {detail}", flush=True)
    print("\n| step | result | time | detail |\n|---|---|---:|---|")
    for name, result, detail, seconds in rows:
        print(f"| {name} | {result} | {seconds:.0f} s | {detail} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
