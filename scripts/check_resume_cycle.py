#!/usr/bin/env python
"""Train -> SIGKILL -> --resume -> --eval-only with tools/train_net.py, on the tiny generated data.

Run by `make test-main` against a Detectron2 checkout (e.g. upstream main), with whatever
Python runs this script. It exits non-zero, naming the step, unless:

1. a training run killed with SIGKILL mid-way leaves whole checkpoints and a `last_checkpoint`
   tag naming one of them;
2. `--resume` continues at the iteration after the tagged checkpoint (its optimizer state
   included) and finishes at SOLVER.MAX_ITER;
3. `--eval-only` on the final weights evaluates the validation set (bbox and segm AP).

Usage: python scripts/check_resume_cycle.py [--workdir DIR] [--keep]
"""

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "demo" / "ms_rcnn_R_18_demo.yaml"
MAX_ITER, PERIOD = 30, 10
# Narrow layers and a few RoIs, as in the tests: the whole cycle takes about a minute on a CPU.
OPTS = [
    "DATASETS.TRAIN", '("synthetic_shapes_tiny_train",)', "DATASETS.TEST", "()",
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(20,)", "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
KILL_AFTER = 2 * PERIOD - 1  # kill once the second checkpoint is written and tagged
TIMEOUT = 600


class CycleError(RuntimeError):
    pass


def launch(workdir, out, log, *args):
    """Start tools/train_net.py, its output going to the open file `log`. `args` are flags
    (--resume, --eval-only) and then `KEY VALUE` overrides, which go after OPTS to win."""
    flags = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    env = dict(os.environ, MS_RCNN_DATASETS=str(workdir / "datasets"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG),
           *flags, *OPTS, *overrides, "OUTPUT_DIR", str(out)]  # fmt: skip
    # Its own process group, so that SIGKILL reaches everything it started.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                            start_new_session=True)  # fmt: skip


def train_net(workdir, out, log_name, *args):
    """Run tools/train_net.py to the end; its log text, or CycleError if it failed."""
    with open(workdir / log_name, "w") as log:
        proc = launch(workdir, out, log, *args)
        try:
            proc.wait(timeout=TIMEOUT)
        finally:
            stop(proc)
    text = (workdir / log_name).read_text()
    if proc.returncode != 0:
        raise CycleError(f"train_net.py {' '.join(args)} failed:\n{text[-3000:]}")
    return text


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def train_and_kill(workdir, out):
    target = out / f"model_{KILL_AFTER:07d}.pth"
    tag = out / "last_checkpoint"
    deadline = time.time() + TIMEOUT
    with open(workdir / "1-train.log", "w") as log:
        proc = launch(workdir, out, log)
        try:
            while not (tag.is_file() and tag.read_text() == target.name):
                if proc.poll() is not None:
                    raise CycleError("training ended before the kill:\n" + _tail(workdir))
                if time.time() > deadline:
                    raise CycleError(f"no {target.name} within {TIMEOUT} s")
                time.sleep(0.05)
        finally:
            stop(proc)
    if (out / "model_final.pth").exists():
        raise CycleError("the run finished before it was killed; nothing to resume")
    for path in sorted(out.glob("model_*.pth")):
        load(path)  # raises if a kill left a partial file
    saved = load(out / tag.read_text())
    if "_trainer" not in saved.get("trainer", {}):
        raise CycleError(f"{tag.read_text()} holds no optimizer state")
    return saved["iteration"]


def _tail(workdir):
    return (workdir / "1-train.log").read_text()[-3000:]


def resume(workdir, out, killed_at):
    text = train_net(workdir, out, "2-resume.log", "--resume")
    expected = f"Starting training from iteration {killed_at + 1}"
    if expected not in text:
        raise CycleError(f"--resume did not log '{expected}':\n{text[-3000:]}")
    if "no optimizer state" in text:
        raise CycleError("--resume did not find the optimizer state it saved")
    final = load(out / "model_final.pth")
    if final["iteration"] != MAX_ITER - 1:
        raise CycleError(f"model_final.pth is at iteration {final['iteration']}")


def evaluate(workdir, out):
    eval_out = out / "eval"
    train_net(
        workdir,
        eval_out,
        "3-eval.log",
        "--eval-only",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "DATASETS.TEST",
        '("synthetic_shapes_tiny_val",)',
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    )  # fmt: skip (some AP after 30 steps)
    # ms_rcnn.evaluation.save_eval_results: {"format": ..., "results": {task: {metric: value}}}
    results = json.loads((eval_out / "eval_results.json").read_text())["results"]
    aps = {task: results.get(task, {}).get("AP") for task in ("bbox", "segm")}
    if not all(isinstance(ap, float) and not math.isnan(ap) for ap in aps.values()):
        raise CycleError(f"--eval-only gave no bbox/segm AP: {results}")
    return aps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to run (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ms-rcnn-cycle-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "run"
    start = time.time()
    try:
        killed_at = train_and_kill(workdir, out)
        print(f"[cycle] killed with SIGKILL; last checkpoint at iteration {killed_at}")
        resume(workdir, out, killed_at)
        print(f"[cycle] --resume went on from iteration {killed_at + 1} to {MAX_ITER - 1}")
        aps = evaluate(workdir, out)
        print(f"[cycle] --eval-only: bbox AP {aps['bbox']:.2f}, segm AP {aps['segm']:.2f}")
    except CycleError as e:
        print(f"[cycle] FAILED (logs in {workdir}): {e}", file=sys.stderr)
        sys.exit(1)
    print(f"[cycle] passed in {time.time() - start:.0f} s")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
