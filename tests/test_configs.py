"""Every shipped YAML config loads with add_ms_rcnn_config (and merge_config_file, which adds
PointRend's keys to the configs that need them) and builds its model."""

from pathlib import Path

import pytest
import yaml
from conftest import flatten_config
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import ms_rcnn

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
YAMLS = sorted(p for p in CONFIG_DIR.rglob("*.yaml"))


def load(path):
    cfg = get_cfg()
    ms_rcnn.add_ms_rcnn_config(cfg)
    return ms_rcnn.merge_config_file(cfg, str(path))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads_and_builds(path):
    cfg = load(path)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)  # random init; MODEL.WEIGHTS is only read by a checkpointer
    assert type(model.roi_heads).__name__ == cfg.MODEL.ROI_HEADS.NAME


def test_bases_stay_inside_configs():
    for path in YAMLS:
        base = yaml.safe_load(path.read_text()).get("_BASE_")
        if base:
            resolved = (path.parent / base).resolve()
            assert resolved.is_file() and CONFIG_DIR in resolved.parents, (path, base)


def test_base_agrees_with_model_zoo():
    from detectron2 import model_zoo

    ours = flatten_config(yaml.safe_load((CONFIG_DIR / "Base-RCNN-FPN.yaml").read_text()))
    zoo_path = model_zoo.get_config_file("Base-RCNN-FPN.yaml")
    theirs = flatten_config(yaml.safe_load(Path(zoo_path).read_text()))
    assert ours == theirs


def test_add_config_is_idempotent_and_keeps_user_values():
    cfg = get_cfg()
    ms_rcnn.add_ms_rcnn_config(cfg)
    cfg.MODEL.ROI_MASKIOU_HEAD.LOSS_WEIGHT = 3.0
    ms_rcnn.add_ms_rcnn_config(cfg)
    assert cfg.MODEL.ROI_MASKIOU_HEAD.LOSS_WEIGHT == 3.0
    assert "ROI_MASKIOU_HEAD" not in get_cfg().MODEL  # Detectron2's defaults stay untouched
    assert "RESIZE_STYLE" not in get_cfg().INPUT


def test_resize_style_defaults_to_detectron2_and_keeps_a_user_value():
    cfg = ms_rcnn.add_ms_rcnn_config(get_cfg())
    assert cfg.INPUT.RESIZE_STYLE == "detectron2"
    cfg.INPUT.RESIZE_STYLE = "mmdet"
    assert ms_rcnn.add_ms_rcnn_config(cfg).INPUT.RESIZE_STYLE == "mmdet"


def test_only_the_converted_weights_configs_resize_like_their_framework():
    """The peer bases' resize reaches every config built on them; all others keep Detectron2's."""
    styles = {path.name: load(path).INPUT.RESIZE_STYLE for path in YAMLS}
    peers = {n for n in styles if "mmdet" in n or "maskrcnn_benchmark" in n or "maskrcnn-b" in n}
    assert len(peers) == 10  # the 2 bases and the MS/Mask R-CNN of each peer
    for name, style in styles.items():
        expected = "mmdet" if "mmdet" in name else "maskrcnn-benchmark" if name in peers else None
        assert style == (expected or "detectron2"), name


@pytest.mark.parametrize("prefix,minimum", [("ms_rcnn_", 4), ("cascade_ms_rcnn_", 2)])
def test_baseline_and_ms_rcnn_twins_differ_only_in_roi_heads(prefix, minimum):
    folder = CONFIG_DIR / "COCO-InstanceSegmentation"
    twins = sorted(folder.glob(f"{prefix}*.yaml"))
    assert len(twins) >= minimum
    for ms_path in twins:
        base_path = folder / ms_path.name.replace("ms_rcnn_", "mask_rcnn_")
        ms, base = flatten_config(load(ms_path)), flatten_config(load(base_path))
        differing = {k for k in ms if ms[k] != base[k]}
        assert differing == {"MODEL.ROI_HEADS.NAME"}, (ms_path.name, differing)


@pytest.mark.parametrize("schedule", ["1x", "3x"])
def test_cascade_baseline_agrees_with_model_zoo(schedule):
    from detectron2 import model_zoo

    name = f"cascade_mask_rcnn_R_50_FPN_{schedule}.yaml"
    ours = flatten_config(load(CONFIG_DIR / "COCO-InstanceSegmentation" / name))
    theirs = flatten_config(load(model_zoo.get_config_file(f"Misc/{name}")))
    assert ours == theirs  # and the twin test ties cascade_ms_rcnn_* to these
