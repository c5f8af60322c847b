"""The PointRend configs: each pair differs only where it should, PointRend's keys are added
when (and only when) a config needs them, and tools/train_net.py trains and evaluates both."""

import json

import pytest
import torch
from conftest import flatten_config
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from test_train_net import ROOT, run_train_net

from ms_rcnn import add_ms_rcnn_config, merge_config_file
from ms_rcnn.config import uses_pointrend

CONFIGS = ROOT / "configs"


def load(path):
    return merge_config_file(add_ms_rcnn_config(get_cfg()), str(CONFIGS / path))


def differences(a, b):
    fa, fb = flatten_config(a), flatten_config(b)
    assert fa.keys() == fb.keys()
    return {k for k in fa if fa[k] != fb[k]}


def test_demo_pair_differs_only_in_the_roi_heads():
    base = load("demo/pointrend_R_18_demo.yaml")
    ms = load("demo/ms_rcnn_pointrend_R_18_demo.yaml")
    assert differences(base, ms) == {"MODEL.ROI_HEADS.NAME"}
    assert ms.MODEL.ROI_HEADS.NAME == "PointRendMaskScoringROIHeads"
    assert base.MODEL.ROI_HEADS.NAME == "PointRendROIHeads"


def test_demo_pointrend_differs_from_the_demo_mask_rcnn_only_in_its_mask_branch():
    pointrend = load("demo/pointrend_R_18_demo.yaml")
    mask_rcnn = get_cfg()
    add_ms_rcnn_config(mask_rcnn)
    # Same key set: PointRend's keys (and values) first, then the Mask R-CNN demo's on top.
    merge_config_file(mask_rcnn, str(CONFIGS / "demo/pointrend_R_18_demo.yaml"))
    mask_rcnn.merge_from_file(str(CONFIGS / "demo/mask_rcnn_R_18_demo.yaml"))
    changed = differences(mask_rcnn, pointrend)
    allowed = ("MODEL.ROI_MASK_HEAD.", "MODEL.POINT_HEAD.")
    assert changed - {"MODEL.ROI_HEADS.NAME", "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES"} == {
        k for k in changed if k.startswith(allowed)
    }
    assert "MODEL.ROI_MASK_HEAD.NAME" in changed and "SOLVER.MAX_ITER" not in changed


def test_coarse_variant_differs_only_in_the_scored_mask():
    refined = load("demo/ms_rcnn_pointrend_R_18_demo.yaml")
    coarse = load("demo/ms_rcnn_pointrend_R_18_demo_coarse.yaml")
    assert differences(refined, coarse) == {"MODEL.ROI_MASKIOU_HEAD.POINTREND_MASK"}


def test_r50_pair_differs_only_in_the_roi_heads_and_maskiou_keys():
    base = load("PointRend/pointrend_rcnn_R_50_FPN_1x.yaml")
    ms = load("PointRend/ms_rcnn_pointrend_R_50_FPN_1x.yaml")
    changed = differences(base, ms)
    assert "MODEL.ROI_HEADS.NAME" in changed
    assert all(
        k == "MODEL.ROI_HEADS.NAME" or k.startswith("MODEL.ROI_MASKIOU_HEAD.") for k in changed
    )
    assert ms.MODEL.POINT_HEAD.NUM_CLASSES == ms.MODEL.ROI_HEADS.NUM_CLASSES == 80
    assert ms.MODEL.ROI_MASK_HEAD.POOLER_TYPE == ""


def test_pointrend_keys_are_added_only_when_the_config_needs_them():
    assert uses_pointrend(str(CONFIGS / "demo/ms_rcnn_pointrend_R_18_demo.yaml"))  # via _BASE_
    assert not uses_pointrend(str(CONFIGS / "demo/ms_rcnn_R_18_demo.yaml"))
    assert "POINT_HEAD" not in load("demo/ms_rcnn_R_18_demo.yaml").MODEL
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load("nope.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["pointrend_R_18_demo.yaml", "ms_rcnn_pointrend_R_18_demo.yaml"])
def test_train_net_trains_and_evaluates_the_demo_configs(tmp_path, config):
    out = tmp_path / "run"
    proc = run_train_net(
        tmp_path, config, "OUTPUT_DIR", str(out),
        "MODEL.POINT_HEAD.FC_DIM", "16", "MODEL.ROI_MASK_HEAD.FC_DIM", "32",
    )  # fmt: skip
    results = json.loads((out / "eval_results.json").read_text())
    text = json.dumps(results)
    assert "segm" in text and "bbox" in text
    log = proc.stdout + proc.stderr + (out / "log.txt").read_text()
    assert "loss_mask_point" in log and "loss_mask" in log
    calibration = out / "inference" / "synthetic_shapes_tiny_val" / "calibration.json"
    assert ("loss_maskiou" in log) == config.startswith("ms_rcnn")
    if config.startswith("ms_rcnn"):  # the evaluator saw pred_maskiou
        assert calibration.is_file()
        assert (calibration.parent / "maskiou_calibration.png").is_file()


# The class count a user sets for their own data: PointRend's point head has a second one,
# MODEL.POINT_HEAD.NUM_CLASSES (80 by default), which PointRend only asserts equal, without
# naming either key, deep inside the model's construction (a bare AssertionError before).
CLASS_COUNT_ERROR = r"NUM_CLASSES=4 but MODEL.POINT_HEAD.NUM_CLASSES=80.*POINT_HEAD.NUM_CLASSES 4"


@pytest.mark.parametrize(
    "config", ["demo/pointrend_R_18_demo.yaml", "PointRend/ms_rcnn_pointrend_R_50_FPN_1x.yaml"]
)
def test_point_head_class_count_must_match_the_roi_heads(config):
    from ms_rcnn.config import check_pointrend_config

    cfg = load(config)
    check_pointrend_config(cfg)  # as shipped: 80 and 80, or 6 and 6
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    with pytest.raises(
        ValueError, match=CLASS_COUNT_ERROR.replace("=80", f"={cfg.MODEL.POINT_HEAD.NUM_CLASSES}")
    ):
        check_pointrend_config(cfg)
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = 4
    check_pointrend_config(cfg)


def test_class_count_check_leaves_other_configs_alone():
    from ms_rcnn.config import check_pointrend_config

    cfg = load("demo/ms_rcnn_R_18_demo.yaml")  # no PointRend keys at all
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    check_pointrend_config(cfg)
    cfg = load("demo/pointrend_R_18_demo.yaml")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.MASK_ON = False  # a box-only model builds no point head
    check_pointrend_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = False  # coarse masks only: no point head either
    check_pointrend_config(cfg)
    torch.manual_seed(0)
    build_model(cfg)  # and PointRend agrees: it builds with the two counts apart


def test_train_net_predict_and_the_python_api_name_the_point_head_class_count(tmp_path):
    from types import SimpleNamespace

    from ms_rcnn.engine import setup
    from ms_rcnn.predict.pipeline import InputError, predict_config

    config = str(CONFIGS / "PointRend" / "ms_rcnn_pointrend_R_50_FPN_1x.yaml")
    opts = [
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "4",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    ]
    args = SimpleNamespace(config_file=config, register_coco=[], eval_only=False,
                           resume=False, num_gpus=1, opts=opts)  # fmt: skip
    with pytest.raises(ValueError, match=CLASS_COUNT_ERROR):
        setup(args)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(InputError, match=CLASS_COUNT_ERROR):
        predict_config(config, opts, 0.5)

    cfg = load("demo/ms_rcnn_pointrend_R_18_demo.yaml")  # a user building the model in Python
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match=r"POINT_HEAD.NUM_CLASSES 4"):
        build_model(cfg)
