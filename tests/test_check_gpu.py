"""scripts/check_gpu.py: says so and exits 0 without a GPU; its steps run (CPU against CPU)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_gpu.py"


def test_without_a_gpu_it_says_so_and_checks_nothing(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("check_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "STEPS", [("x", lambda args: pytest.fail("a step ran"))])
    assert module.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no GPU:") and "nothing was checked" in out and "| step" not in out


@pytest.mark.slow
def test_dry_run_on_cpu_runs_the_steps(tmp_path):
    """The steps themselves, with the CPU as the second device (tiny data, 2 iterations); the
    device tests are left out here (they are the suite's own)."""
    env = dict(os.environ, MS_RCNN_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), "--dry-run-on-cpu", "--iters", "2", "--batch", "2",
           "--images", "2", "--train-set", "synthetic_shapes_tiny_train",
           "--val-set", "synthetic_shapes_tiny_val", "--output-dir", str(tmp_path / "out"),
           "--steps", "cuda-ops", "amp-training", "maskiou-targets", "cpu-vs-gpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("DRY RUN")
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    results = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in rows}
    assert results.pop("cuda-ops") in ("pass", "n/a")  # n/a: the stand-in has no op to run
    assert results == {"amp-training": "pass", "maskiou-targets": "pass", "cpu-vs-gpu": "pass"}
