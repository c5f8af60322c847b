"""The demo's (ms_rcnn.demo, tools/demo.py) schedule scaling and its skip-if-done rule (the
training itself is exercised by tests/test_train_net.py)."""

import json
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def demo():
    import ms_rcnn.demo

    return ms_rcnn.demo


def test_iters_scale_the_schedule(demo):
    args = SimpleNamespace(iters=200, soft_nms=True, opts=["MODEL.X", "1"])
    opts = demo.run_overrides(args, seed=3)
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["SEED"] == "3"
    assert pairs["SOLVER.MAX_ITER"] == "200"
    assert pairs["SOLVER.STEPS"] == "(150, 184)"
    assert pairs["SOLVER.WARMUP_ITERS"] == "40"
    assert pairs["TEST.SOFT_NMS.ENABLED"] == "True"
    assert "MODEL.ROI_HEADS.NAME" not in pairs
    baseline = dict(zip(*[iter(demo.run_overrides(args, 3, "mask_rcnn"))] * 2))
    assert baseline["MODEL.ROI_HEADS.NAME"] == "SoftNMSROIHeads"  # else it would be refused
    assert opts[-2:] == ["MODEL.X", "1"]
    assert demo.run_overrides(SimpleNamespace(iters=None, soft_nms=False, opts=[]), 1) == [
        "SEED",
        "1",
    ]
    # Very short runs: steps Detectron2's scheduler accepts (strictly increasing, in (0, iters)),
    # checked with the scheduler itself.
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    for iters, expected in [(1, "()"), (2, "(1,)"), (3, "(2,)"), (4, "(3,)"), (13, "(9, 11)")]:
        short = dict(zip(*[iter(demo.run_overrides(SimpleNamespace(iters=iters, soft_nms=False,
                                                                   opts=[]), 1))] * 2))  # fmt: skip
        assert short["SOLVER.STEPS"] == expected, iters
        steps = list(eval(short["SOLVER.STEPS"]))
        MultiStepParamScheduler(
            values=[0.1**k for k in range(len(steps) + 1)], milestones=steps, num_updates=iters
        )
    with pytest.raises(SystemExit, match="--iters"):
        demo.run_overrides(SimpleNamespace(iters=0, soft_nms=False, opts=[]), 1)


def test_a_run_is_done_only_with_results_for_the_same_settings(demo, tmp_path):
    opts = ["SEED", "1"]
    assert not demo.is_done(tmp_path, opts)
    (tmp_path / "demo_run.json").write_text(json.dumps({"opts": opts}))
    assert not demo.is_done(tmp_path, opts)  # no results yet: training was interrupted
    (tmp_path / "eval_results.json").write_text("{}")
    assert demo.is_done(tmp_path, opts)
    assert not demo.is_done(tmp_path, ["SEED", "2"])
    (tmp_path / "demo_run.json").write_text("{truncated")
    assert not demo.is_done(tmp_path, opts)


def test_other_settings_are_moved_aside_not_deleted(demo, tmp_path):
    run = tmp_path / "ms_rcnn_s1"
    run.mkdir()
    (run / "model_final.pth").write_text("weights")
    (run / "demo_run.json").write_text(json.dumps({"opts": ["SEED", "1"]}))
    assert demo.prepare_run_dir(str(run), "ms_rcnn", 1, ["SEED", "1"]) is True  # resume
    assert demo.prepare_run_dir(str(run), "ms_rcnn", 1, ["SEED", "1", "X", "2"]) is False
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("ms_rcnn_s1.old-")]
    assert len(aside) == 1 and (aside[0] / "model_final.pth").read_text() == "weights"
    assert json.loads((run / "demo_run.json").read_text())["opts"] == ["SEED", "1", "X", "2"]


# The head-only arm: starts from its seed's baseline checkpoint, keeps its share of the schedule,
# refuses a missing baseline by name, and reports training cost from the logs.


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
