"""tools/train_net.py end to end on the tiny generated dataset: train, evaluate, eval-only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_eval_results

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "DATASETS.TRAIN", '("synthetic_shapes_tiny_train",)',
    "DATASETS.TEST", '("synthetic_shapes_tiny_val",)',
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(2,)", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def run_train_net(tmp_path, config, *opts, flags=()):
    env = dict(os.environ, MS_RCNN_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file",
           str(ROOT / "configs" / "demo" / config), *flags, *TINY, *opts]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_then_evaluate_ms_rcnn(tmp_path):
    out = tmp_path / "ms"
    run_train_net(tmp_path, "ms_rcnn_R_18_demo.yaml", "OUTPUT_DIR", str(out))
    assert (out / "model_final.pth").is_file()
    results = json.loads((out / "eval_results.json").read_text())
    flat = json.dumps(results)
    assert "segm" in flat and "bbox" in flat
    inference = out / "inference" / "synthetic_shapes_tiny_val"
    assert (inference / "calibration.json").is_file()
    assert (inference / "maskiou_calibration.png").is_file()

    # --eval-only from the checkpoint it wrote gives the same results.
    again = tmp_path / "ms_eval"
    run_train_net(
        tmp_path, "ms_rcnn_R_18_demo.yaml",
        "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(again),
        flags=["--eval-only"],
    )  # fmt: skip
    rerun = json.loads((again / "eval_results.json").read_text())
    assert_same_eval_results(rerun, results)


def test_eval_results_comparison_tolerates_rounding_only():
    want = {"results": {"segm": {"AP": 41.5, "APl": None}, "calibration": {"mae": 0.0242627333}}}
    rounded = {"results": {"segm": {"AP": 41.5, "APl": None}, "calibration": {"mae": 0.0242627334}}}
    assert_same_eval_results(rounded, want)
    for wrong in (
        {"results": {"segm": {"AP": 41.6, "APl": None}, "calibration": {"mae": 0.0242627333}}},
        {"results": {"segm": {"AP": 41.5, "APl": 0.0}, "calibration": {"mae": 0.0242627333}}},
        {"results": {"segm": {"AP": 41.5, "APl": None}, "calibration": {"mae": 0.0243}}},
        {"results": {"segm": {"AP": 41.5, "APl": None}}},
    ):
        with pytest.raises(AssertionError):
            assert_same_eval_results(wrong, want)


def test_missing_config_file_is_named(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", "nope.yaml"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "nope.yaml" in proc.stderr
