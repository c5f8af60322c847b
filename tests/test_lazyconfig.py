"""The LazyConfig (python) configs in configs/lazy: what they build, that they are Detectron2's
own configs with only the ROI heads changed, that they survive save/load, and that Detectron2's
unmodified tools/lazyconfig_train_net.py trains and evaluates with them."""

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf
from torch import nn

from ms_rcnn import (
    CascadeMaskScoringROIHeads,
    MaskIoUHead,
    MaskScoringROIHeads,
    SoftNMSFastRCNNOutputLayers,
)
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

ROOT = Path(__file__).resolve().parent.parent
LAZY = ROOT / "configs" / "lazy"
TRAIN_NET_ENV = "MS_RCNN_LAZYCONFIG_TRAIN_NET"


def lazyconfig_train_net() -> Path:
    """Detectron2's tools/lazyconfig_train_net.py, from the installed Detectron2 itself.

    Asks the build (ms_rcnn.env.detectron2_build): a regular install lists the script among its
    files (Detectron2's setup.py installs its `tools/` folder as a top-level package); an
    editable install or a checkout on the path has it in its source tree, beside the package.
    `$MS_RCNN_LAZYCONFIG_TRAIN_NET` points elsewhere.
    """
    from ms_rcnn.env import detectron2_build

    if os.environ.get(TRAIN_NET_ENV):
        return Path(os.environ[TRAIN_NET_ENV])
    build = detectron2_build()
    if build["install"] == "source checkout":
        script = Path(build["path"]).parent / "tools" / "lazyconfig_train_net.py"
        if script.is_file():
            return script
    for dist_name in importlib.metadata.packages_distributions().get("detectron2", []):
        dist = importlib.metadata.distribution(dist_name)
        for file in dist.files or []:
            if str(file) == "tools/lazyconfig_train_net.py":
                return Path(dist.locate_file(file))
    pytest.fail(
        f"the installed Detectron2 ({build['install']}, {build['path']}) has no "
        f"tools/lazyconfig_train_net.py; set {TRAIN_NET_ENV} to that script in a Detectron2 "
        "checkout"
    )


def load(name):
    return LazyConfig.load(str(LAZY / name))


def lazyconfig_train_net_module():
    """Detectron2's tools/lazyconfig_train_net.py, imported (its command line runs only under
    __main__)."""
    spec = importlib.util.spec_from_file_location("d2_lazyconfig_train_net", lazyconfig_train_net())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def test_ms_rcnn_config_builds_mask_scoring_heads():
    model = build(load("ms_rcnn_R_50_FPN_1x.py"))
    heads = model.roi_heads
    assert type(heads) is MaskScoringROIHeads
    assert type(heads.box_predictor) is SoftNMSFastRCNNOutputLayers
    assert not heads.box_predictor.soft_nms_enabled  # Detectron2's NMS unless switched on
    assert isinstance(heads.maskiou_head, MaskIoUHead)
    assert heads.maskiou_head.predictor.out_features == heads.num_classes == 80
    assert heads.maskiou_head.input_channels == model.backbone.output_shape()["p2"].channels


def test_cascade_config_builds_cascade_mask_scoring_heads():
    heads = build(load("cascade_ms_rcnn_R_50_FPN_1x.py")).roi_heads
    assert type(heads) is CascadeMaskScoringROIHeads
    assert isinstance(heads.box_predictor, nn.ModuleList) and len(heads.box_predictor) == 3
    assert heads.maskiou_head.predictor.out_features == 80


def _container(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


def test_ms_rcnn_config_is_detectron2s_with_only_the_roi_heads_and_evaluator_changed():
    ours = _container(load("ms_rcnn_R_50_FPN_1x.py"))
    theirs = _container(model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"))
    # Detectron2's COCOEvaluator would rank segm results by `scores`, leaving mask scoring out.
    assert ours["dataloader"]["evaluator"].pop("_target_") is MaskScoringCOCOEvaluator
    theirs["dataloader"]["evaluator"].pop("_target_")
    ours_heads, theirs_heads = ours["model"].pop("roi_heads"), theirs["model"].pop("roi_heads")
    assert ours == theirs
    assert ours_heads.pop("maskiou_head")["_target_"] is MaskIoUHead
    assert ours_heads.pop("_target_") is MaskScoringROIHeads
    assert ours_heads["box_predictor"].pop("_target_") is SoftNMSFastRCNNOutputLayers
    theirs_heads.pop("_target_")
    theirs_heads["box_predictor"].pop("_target_")
    assert ours_heads == theirs_heads


def test_cascade_config_is_detectron2s_cascade_with_only_the_roi_heads_class_changed():
    ours = _container(load("cascade_ms_rcnn_R_50_FPN_1x.py")["model"])
    theirs = _container(model_zoo.get_config("common/models/cascade_rcnn.py").model)
    theirs["backbone"]["bottom_up"]["freeze_at"] = 2  # as in the 1x schedule's configs
    assert ours["roi_heads"].pop("_target_") is CascadeMaskScoringROIHeads
    assert ours["roi_heads"].pop("maskiou_head")["_target_"] is MaskIoUHead
    theirs["roi_heads"].pop("_target_")
    assert ours == theirs


@pytest.mark.parametrize(
    "name",
    ["ms_rcnn_R_50_FPN_synthetic_tiny.py", "cascade_ms_rcnn_R_50_FPN_1x.py"],
)
def test_config_survives_save_and_load(name, tmp_path):
    """Detectron2's reload_lazy_config pattern: LazyConfig.save to YAML, LazyConfig.load back.
    The reloaded config saves to the same text and builds the same model. (Not the same initial
    weights for a seed: the YAML sorts keys, so sub-modules are built in another order.)"""
    cfg = load(name)
    first = tmp_path / "first.yaml"
    LazyConfig.save(cfg, str(first))
    assert not list(tmp_path.glob("*.pkl"))  # save falls back to a pickle if YAML fails
    reloaded = LazyConfig.load(str(first))
    second = tmp_path / "second.yaml"
    LazyConfig.save(reloaded, str(second))
    assert second.read_text() == first.read_text()
    assert "_target_: ms_rcnn." in first.read_text()

    original, rebuilt = build(cfg), build(reloaded)
    assert repr(rebuilt) == repr(original)
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert any(k.startswith("roi_heads.maskiou_head.") for k in shapes)


def test_lazyconfig_train_net_is_detectron2s_own_script():
    """The script the next test runs is the installed Detectron2's (whatever its version), not a
    copy in this repository, and it has the train/test entry points the docs rely on."""
    script = lazyconfig_train_net().resolve()
    assert script.is_file(), script
    # A venv may live inside the checkout (make test-main's .venv-main, with an editable
    # Detectron2's tree in its src/): nothing inside a venv is ours.
    in_venv = any((folder / "pyvenv.cfg").is_file() for folder in script.parents)
    ours = ROOT in script.parents and not in_venv
    assert not ours, f"{script} is a file of ms-rcnn, not Detectron2's"
    module = lazyconfig_train_net_module()
    for name in ("do_train", "do_test", "main"):
        assert callable(getattr(module, name, None)), f"{script} has no {name}()"


def test_tools_lazyconfig_train_net_trains_and_evaluates(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, MS_RCNN_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(lazyconfig_train_net()),
           "--config-file", str(LAZY / "ms_rcnn_R_50_FPN_synthetic_tiny.py"),
           f"train.output_dir={out}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert (out / "model_final.pth").is_file()
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    steps = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in steps] == [0, 1]
    for r in steps:
        assert {"loss_mask", "loss_maskiou", "loss_cls"} <= r.keys()
        assert all(r[k] == r[k] for k in ("loss_mask", "loss_maskiou"))  # not NaN
    assert {"bbox/AP", "segm/AP"} <= records[-1].keys()  # the final evaluation ran
    saved = LazyConfig.load(str(out / "config.yaml"))  # default_setup saved the config
    assert saved.model.roi_heads._target_ == "ms_rcnn.MaskScoringROIHeads"
    assert saved.train.output_dir == str(out)
