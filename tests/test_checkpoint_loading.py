"""No silent skips when training from MODEL.WEIGHTS: a layer of another shape is an error, except
the class-dependent output layers when the class count changes (fine-tuning on new classes)."""

import logging

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from ms_rcnn.checkpoint import MSRCNNCheckpointer


def saved_model(tmp_path, name="source", edit=None, **cfg_kwargs):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MaskScoringROIHeads", **cfg_kwargs))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if edit:
        edit(state)
    path = tmp_path / f"{name}.pth"
    torch.save({"model": state}, path)
    return path, state


def fresh_model(**cfg_kwargs):
    torch.manual_seed(1)
    return build_model(tiny_cfg("MaskScoringROIHeads", **cfg_kwargs))


def widen_fc1(state):
    w = state["roi_heads.box_head.fc1.weight"]
    state["roi_heads.box_head.fc1.weight"] = torch.cat([w, w[:, :1]], dim=1)


def test_training_refuses_a_backbone_or_head_layer_of_another_shape(tmp_path):
    path, _ = saved_model(tmp_path, edit=widen_fc1)
    with pytest.raises(ValueError) as err:
        MSRCNNCheckpointer(fresh_model()).resume_or_load(str(path), resume=False)
    msg = str(err.value)
    assert str(path) in msg and "roi_heads.box_head.fc1" in msg, msg
    assert "both have 3 classes" in msg and "left randomly initialized" in msg, msg


def test_training_refuses_a_class_layer_of_another_shape_with_the_same_class_count(tmp_path):
    """The official layout (background rows kept) with the class count right: a wrong layout,
    not new classes. Before this change it trained with a random box regressor."""

    def keep_background_box_rows(state):
        for suffix in ("weight", "bias"):
            key = f"roi_heads.box_predictor.bbox_pred.{suffix}"
            state[key] = torch.cat([state[key][:4], state[key]])

    path, _ = saved_model(tmp_path, edit=keep_background_box_rows)
    with pytest.raises(ValueError, match=r"roi_heads.box_predictor.bbox_pred \(16, 16\) in the"):
        MSRCNNCheckpointer(fresh_model()).resume_or_load(str(path), resume=False)


def test_new_class_count_is_one_log_line_and_reinitializes_only_the_class_layers(tmp_path, caplog):
    path, source = saved_model(tmp_path, num_classes=3)
    model = fresh_model(num_classes=5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        MSRCNNCheckpointer(model).resume_or_load(str(path), resume=False)
    lines = [
        r.getMessage() for r in caplog.records if "fine-tuning on new classes" in r.getMessage()
    ]
    assert len(lines) == 1, lines
    class_layers = (
        "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
        "roi_heads.mask_head.predictor", "roi_heads.maskiou_head.predictor",
    )  # fmt: skip
    assert all(layer in lines[0] for layer in class_layers), lines[0]
    for k, v in model.state_dict().items():
        expected = fresh[k] if k.rsplit(".", 1)[0] in class_layers else source[k]
        assert torch.equal(v, expected), k


def test_new_class_count_does_not_excuse_another_layer(tmp_path):
    path, _ = saved_model(tmp_path, edit=widen_fc1, num_classes=3)
    with pytest.raises(ValueError, match=r"roi_heads.box_head.fc1.*not class-dependent"):
        MSRCNNCheckpointer(fresh_model(num_classes=5)).resume_or_load(str(path), resume=False)


def test_absent_layers_stay_allowed_and_named_when_training(tmp_path, caplog):
    """An ImageNet-like checkpoint (backbone only): the heads are absent, loaded as random, and
    the log names them."""

    def backbone_only(state):
        for k in [k for k in state if not k.startswith("backbone.")]:
            del state[k]

    path, source = saved_model(tmp_path, edit=backbone_only)
    model = fresh_model()
    with caplog.at_level(logging.INFO):
        MSRCNNCheckpointer(model).resume_or_load(str(path), resume=False)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items())
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "roi_heads.box_head.fc1" in log and "proposal_generator.rpn_head" in log, log


def test_evaluation_refuses_an_absent_layer(tmp_path):
    def no_mask_predictor(state):
        del state["roi_heads.mask_head.predictor.weight"]

    path, _ = saved_model(tmp_path, edit=no_mask_predictor)
    with pytest.raises(ValueError, match=r"absent from it: roi_heads.mask_head.predictor"):
        MSRCNNCheckpointer(fresh_model(), strict=True).load(str(path))


def test_predictor_loads_strictly(tmp_path):
    from ms_rcnn.predict.predictor import MSRCNNPredictor

    def no_maskiou_head(state):
        for k in [k for k in state if k.startswith("roi_heads.maskiou_head.")]:
            del state[k]

    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    cfg.MODEL.WEIGHTS = str(saved_model(tmp_path, name="baseline", edit=no_maskiou_head)[0])
    with pytest.raises(ValueError, match=r"baseline.pth .*absent from it: roi_heads.maskiou_head"):
        MSRCNNPredictor(cfg)
    path, source = saved_model(tmp_path)
    cfg.MODEL.WEIGHTS = str(path)
    predictor = MSRCNNPredictor(cfg)
    state = predictor.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.items())
    outputs = predictor(torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8).numpy())
    instances = outputs["instances"]
    assert len(instances) > 0 and instances.has("mask_scores")
