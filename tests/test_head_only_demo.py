"""tools/demo.py's head-only arm: it starts from its seed's baseline checkpoint, keeps its share
of the schedule, refuses a missing baseline by name, and reports training cost from the logs."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(tmp_path, iters=None, baseline_dir=None):
    return SimpleNamespace(iters=iters, soft_nms=False, opts=[], output_dir=str(tmp_path),
                           baseline_dir=baseline_dir)  # fmt: skip


def test_head_only_starts_from_its_seeds_baseline(demo, tmp_path):
    weights = tmp_path / "base" / "mask_rcnn_s2" / "model_final.pth"
    with pytest.raises(SystemExit, match=str(weights)):
        demo.run_overrides(
            args(tmp_path, baseline_dir=str(tmp_path / "base")), 2, "ms_rcnn_head_only"
        )
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    opts = demo.run_overrides(args(tmp_path, 300, str(tmp_path / "base")), 2, "ms_rcnn_head_only")
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["MODEL.WEIGHTS"] == str(weights) and pairs["SEED"] == "2"
    assert pairs["SOLVER.MAX_ITER"] == "100"  # a third of --iters, as its config is of 600
    assert "MODEL.WEIGHTS" not in demo.run_overrides(args(tmp_path, 300), 2, "ms_rcnn")


def test_training_cost_from_the_log(demo, tmp_path):
    run = tmp_path / "ms_rcnn_head_only_s1"
    run.mkdir()
    (run / "log.txt").write_text(
        "[11/22 02:55:43] d2.engine.hooks INFO: Overall training speed: 198 iterations in "
        "0:01:59 (0.6049 s / it)\n"
    )
    assert demo.training_speed(str(run)) == (198, 0.6049)
    assert demo.training_speed(str(tmp_path / "missing")) is None
    table = demo.training_cost_table(str(tmp_path), ["ms_rcnn_head_only", "ms_rcnn"], [1])
    assert "| ms_rcnn_head_only | 1 | 198 | 0.605 | 120 |" in table
    assert "| ms_rcnn | 1 | n/a | n/a | n/a |" in table
