"""The CPU demo (`ms-rcnn-demo`, `tools/demo.py`, `make demo`): train a baseline Mask R-CNN
and MS R-CNN on generated data, compare their AP.

Steps: generate the synthetic_shapes datasets (cached under $MS_RCNN_DATASETS or ./datasets),
train each arm with the same seed through `ms-rcnn-train` (one subprocess per run, full log in
its output dir) with the model zoo's demo configs, evaluate on synthetic_shapes_val, then print
the comparison table. A run whose results already exist for the same settings is not trained
again, so an interrupted demo picks up where it stopped. Runs from any folder.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

from .env import add_version_argument

EXAMPLES = """examples:
  %(prog)s                  # one seed per arm, the configs' schedule (~25 min)
  %(prog)s --iters 100      # a quick look (AP will be low)
  %(prog)s --seeds 1 2 3    # the figures in the README
  %(prog)s --seeds 1 2 3 --arms mask_rcnn ms_rcnn ms_rcnn_head_only
                            # also add mask scoring to each trained baseline
"""
# Each arm's config, by its name in ms-rcnn's model zoo.
ARMS = {
    "mask_rcnn": "demo/mask_rcnn_R_18_demo.yaml",
    "ms_rcnn": "demo/ms_rcnn_R_18_demo.yaml",
    # MS R-CNN from the same seed's trained baseline (mask_rcnn_s<seed>/model_final.pth),
    # training only the MaskIoU head: the "add mask scoring to an existing model" workflow.
    "ms_rcnn_head_only": "demo/ms_rcnn_R_18_demo_maskiou_only.yaml",
    # Options that are off by default (issue 15): the MaskIoU head also trained on background
    # RoIs, and a boundary-aware quality target.
    "ms_rcnn_negatives": "demo/ms_rcnn_R_18_demo_negatives.yaml",
    "ms_rcnn_boundary_target": "demo/ms_rcnn_R_18_demo_boundary_target.yaml",
    # Mask scoring on PointRend (docs/DESIGN.md): its baseline and the MaskIoU arm.
    "pointrend": "demo/pointrend_R_18_demo.yaml",
    "ms_rcnn_pointrend": "demo/ms_rcnn_pointrend_R_18_demo.yaml",
    "ms_rcnn_pointrend_coarse": "demo/ms_rcnn_pointrend_R_18_demo_coarse.yaml",
    # Real photographs (issue 26): the kudzu bug set, registered from --kudzu-root.
    "kudzu_mask_rcnn": "kudzu/mask_rcnn_R_18_kudzu.yaml",
    "kudzu_ms_rcnn": "kudzu/ms_rcnn_R_18_kudzu.yaml",
}
# Where the kudzu photographs are when --kudzu-root is not given: $MS_RCNN_REAL_DATA/kudzu, or
# the workplace's shared data beside the repository (the project does not redistribute them;
# docs/REAL_DATA.md).
DEFAULT_KUDZU_ROOT = os.path.join(
    os.environ.get("MS_RCNN_REAL_DATA") or os.path.join("..", "shared", "data"), "kudzu"
)
CALIBRATION_PLOT = "maskiou_calibration.png"
ETA_LINE = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+total_loss: ([\d.]+)")
SPEED_LINE = re.compile(r"Overall training speed: (\d+) iterations in (\S+) \(([\d.]+) s / it\)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train a baseline Mask R-CNN and MS R-CNN on generated data, compare AP.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_version_argument(parser)
    parser.add_argument("--iters", type=int, default=None, help="training iterations per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed")
    parser.add_argument("--output-dir", default=os.path.join("output", "demo"))
    parser.add_argument("--arms", nargs="+", default=["mask_rcnn", "ms_rcnn"], choices=list(ARMS))
    parser.add_argument(
        "--baseline-dir",
        default=None,
        help="where ms_rcnn_head_only finds mask_rcnn_s<seed>/model_final.pth (default: "
        "--output-dir)",
    )
    parser.add_argument("--soft-nms", action="store_true", help="evaluate with Soft-NMS")
    parser.add_argument(
        "--kudzu-root",
        default=DEFAULT_KUDZU_ROOT,
        help="the kudzu set (annotations/{train,val}.json, images/) for the kudzu_* arms "
        "(default: %(default)s, from $MS_RCNN_REAL_DATA when set)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra KEY VALUE config overrides")
    return parser.parse_args(argv)


def run_overrides(args, seed, arm="ms_rcnn"):
    opts = ["SEED", str(seed)]
    if arm == "ms_rcnn_head_only":
        checkpoint = baseline_checkpoint(args, seed)
        if not os.path.isfile(checkpoint):
            raise SystemExit(
                f"ms_rcnn_head_only (seed {seed}) starts from the baseline's {checkpoint}, which "
                "does not exist: run the mask_rcnn arm first (or pass --baseline-dir)"
            )
        opts += ["MODEL.WEIGHTS", checkpoint]
    if args.iters is not None:
        if args.iters < 1:
            raise SystemExit("--iters must be >= 1")
        iters = args.iters
        if arm == "ms_rcnn_head_only":  # keep its share of the full schedule (its config's)
            iters = max(1, iters * config_max_iter(arm) // config_max_iter("mask_rcnn"))
        # Keep the schedule's shape: warm-up, then two LR drops at 75% and 92%.
        # Detectron2's step scheduler needs steps strictly increasing within (0, iters): on
        # very short runs (--iters 1 or 2) the two drops merge or vanish.
        steps = tuple(sorted({s for s in (int(iters * 0.75), int(iters * 0.92)) if 0 < s < iters}))
        opts += ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(steps)]
        opts += ["SOLVER.WARMUP_ITERS", str(min(100, max(1, iters // 5)))]
    if args.soft_nms:
        opts += ["TEST.SOFT_NMS.ENABLED", "True"]
        if arm == "mask_rcnn":  # StandardROIHeads plus the Soft-NMS box predictor, nothing else
            opts += ["MODEL.ROI_HEADS.NAME", "SoftNMSROIHeads"]
    return opts + list(args.opts)


def config_max_iter(arm):
    """SOLVER.MAX_ITER of an arm's config (with its _BASE_ files)."""
    from .model_zoo import get_config

    return get_config(ARMS[arm]).SOLVER.MAX_ITER


def baseline_checkpoint(args, seed):
    base = getattr(args, "baseline_dir", None) or args.output_dir
    return os.path.join(base, f"mask_rcnn_s{seed}", "model_final.pth")


def training_speed(out_dir):
    """(iterations, seconds per iteration) from a run's log, or None if it did not finish."""
    try:
        with open(os.path.join(out_dir, "log.txt")) as f:
            matches = SPEED_LINE.findall(f.read())
    except OSError:
        return None
    if not matches:
        return None
    iters, _, per_iter = matches[-1]
    return int(iters), float(per_iter)


def read_record(out_dir):
    try:
        with open(os.path.join(out_dir, "demo_run.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_done(out_dir, opts):
    """A run is done if it saved results for exactly these settings."""
    record = read_record(out_dir)
    if not record or record.get("opts") != opts:
        return False
    return os.path.exists(os.path.join(out_dir, "eval_results.json"))


def prepare_run_dir(out_dir, arm, seed, opts):
    """Return True to resume an interrupted run with the same settings. A folder holding a
    run with other settings is moved aside (never deleted): nothing trained is lost."""
    record = read_record(out_dir)
    if record is not None and record.get("opts") == opts:
        return True
    if os.path.exists(out_dir) and os.listdir(out_dir):
        aside = f"{out_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(out_dir, aside)
        print(f"{out_dir} held a run with other settings; moved it to {aside}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "demo_run.json"), "w") as f:
        json.dump({"arm": arm, "seed": seed, "opts": opts, "config": ARMS[arm]}, f)
    return False


def train_one(arm, seed, opts, out_dir, progress, flags=()):
    resume = prepare_run_dir(out_dir, arm, seed, opts)
    # The training command of this same installation (the demo's datasets are in ./datasets
    # or $MS_RCNN_DATASETS, so it runs in this folder too).
    cmd = [sys.executable, "-m", "ms_rcnn.train_cli", "--config-file", ARMS[arm], *flags,
           *(["--resume"] if resume else []), *opts, "OUTPUT_DIR", out_dir]  # fmt: skip
    if resume:
        progress(f"{arm} seed {seed}: resuming the interrupted run in {out_dir}")
    tail = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            match = ETA_LINE.search(line)
            if match:
                eta, it, loss = match.groups()
                progress(f"{arm} seed {seed}: iter {int(it) + 1}, loss {loss}, run eta {eta}")
            elif "Evaluating predictions" in line or "Start inference" in line:
                progress(f"{arm} seed {seed}: evaluating")
    if proc.returncode != 0:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"training {arm} (seed {seed}) failed; full log: {out_dir}/log.txt")


def training_cost_table(output_dir, arms, seeds):
    """Markdown table: iterations and training seconds per run (from each run's log)."""
    lines = ["| arm | seed | iterations | s / iter | training s |", "|---|---:|---:|---:|---:|"]
    for arm in arms:
        for seed in seeds:
            speed = training_speed(os.path.join(output_dir, f"{arm}_s{seed}"))
            if speed is None:
                lines.append(f"| {arm} | {seed} | n/a | n/a | n/a |")
                continue
            iters, per_iter = speed
            lines.append(f"| {arm} | {seed} | {iters} | {per_iter:.3f} | {iters * per_iter:.0f} |")
    return "\n".join(lines)


def dataset_flags(arm, args):
    """The --register-coco flags an arm's training needs (the kudzu arms' photographs)."""
    if not arm.startswith("kudzu_"):
        return []
    flags = []
    for split in ("train", "val"):
        json_file = os.path.join(args.kudzu_root, "annotations", f"{split}.json")
        if not os.path.isfile(json_file):
            raise SystemExit(
                f"{arm}: no kudzu annotations at {json_file}; pass --kudzu-root (the folder "
                "with annotations/ and images/) or set MS_RCNN_REAL_DATA"
            )
        flags += [
            "--register-coco",
            f"kudzu_{split}",
            json_file,
            os.path.join(args.kudzu_root, "images"),
        ]
    return flags


def test_dataset(arm):
    return "kudzu_val" if arm.startswith("kudzu_") else "synthetic_shapes_val"


def main(argv=None) -> int:
    args = parse_args(argv)
    from .data import prepare_synthetic_dataset

    start = time.time()
    if any(not arm.startswith("kudzu_") for arm in args.arms):
        for name in ["synthetic_shapes_train", "synthetic_shapes_val"]:
            print(f"dataset {name}: {prepare_synthetic_dataset(name)}")
        print(f"datasets ready in {time.time() - start:.0f} s", flush=True)

    # The head-only arm needs its seed's baseline, so the baseline runs first.
    arms = sorted(set(args.arms), key=list(ARMS).index)
    runs = [(arm, seed) for seed in args.seeds for arm in arms]
    started = time.time()
    for k, (arm, seed) in enumerate(runs):
        out_dir = os.path.join(args.output_dir, f"{arm}_s{seed}")
        opts = run_overrides(args, seed, arm)  # after the baseline ran: it names its checkpoint
        if is_done(out_dir, opts):
            print(f"[{k + 1}/{len(runs)}] {arm} seed {seed}: results exist, skipping ({out_dir})")
            continue
        run_start = time.time()

        def progress(msg, k=k):
            elapsed = time.time() - started
            print(f"[{k + 1}/{len(runs)}] {msg} | demo elapsed {elapsed / 60:.1f} min", flush=True)

        train_one(arm, seed, opts, out_dir, progress, dataset_flags(arm, args))
        minutes = (time.time() - run_start) / 60
        print(f"[{k + 1}/{len(runs)}] {arm} seed {seed} done in {minutes:.1f} min", flush=True)

    from .analysis.compare import comparison_table, load_arms, plot_comparison

    specs = [
        f"{arm}=" + ",".join(os.path.join(args.output_dir, f"{arm}_s{s}") for s in args.seeds)
        for arm in arms
    ]
    loaded = load_arms(specs)
    table, _ = comparison_table(loaded)
    png = plot_comparison(loaded, os.path.join(args.output_dir, "comparison.png"))
    print("\n" + table)
    print("\n" + training_cost_table(args.output_dir, arms, args.seeds))
    print(f"\nbar chart: {png}")
    for arm in arms:
        for seed in args.seeds:
            run_dir = os.path.join(args.output_dir, f"{arm}_s{seed}")
            plot = os.path.join(run_dir, "inference", test_dataset(arm), CALIBRATION_PLOT)
            if os.path.exists(plot):
                print(f"calibration plot ({arm}, seed {seed}): {plot}")
    return 0
