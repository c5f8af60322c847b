"""Converted and trained checkpoints record the config keys their weights need (pixel mean and
std, input format, anchors, RoIAlign, IoU clamp), and loading them checks those keys: a warning
when training from them, an error in --eval-only and predict unless overridden."""

import logging
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from peer_checkpoints import peer_checkpoint
from predict_helpers import run_predict

ROOT = Path(__file__).resolve().parent.parent
MRB_CONFIG = "configs/COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml"
D2_CONFIG = "configs/COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yaml"
# Read by hand off configs/Base-RCNN-FPN-maskrcnn-benchmark.yaml (and Detectron2's defaults it
# keeps: PIXEL_STD 1, BGR, 3 aspect ratios, sizes 32..512, OFFSET 0).
MRB_VALUES = {
    "MODEL.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.FORMAT": "BGR",
    "MODEL.ANCHOR_GENERATOR.NAME": "MaskrcnnBenchmarkAnchorGenerator",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlign",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 2,
    "MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION": False,
}
# Where ms_rcnn_R_50_FPN_1x.yaml (Detectron2's defaults) differs from them, by hand.
D2_DIFFERENT = {
    "MODEL.PIXEL_MEAN": "[103.53, 116.28, 123.675]",
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": "0",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": "0",
    "MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION": "True",
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """tools/convert_checkpoint.py's output for a synthetic official MS R-CNN checkpoint."""
    from ms_rcnn.conversion.cli import main

    folder = tmp_path_factory.mktemp("converted")
    peer, _ = peer_checkpoint("official")
    torch.save({"model": peer, "iteration": 90000}, folder / "model_0090000.pth")
    out = folder / "converted.pth"
    assert (
        main(["--source", "maskrcnn-benchmark", str(folder / "model_0090000.pth"), str(out)]) == 0
    )
    return out


def config(path, *opts):
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(str(ROOT / path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


@pytest.fixture(scope="module")
def d2_model():
    from detectron2.modeling import build_model

    return build_model(config(D2_CONFIG))


def test_a_converted_checkpoint_records_the_keys_and_the_config(converted):
    record = torch.load(converted, map_location="cpu", weights_only=True)["weights_config"]
    assert record["config_file"] == MRB_CONFIG
    for key, value in MRB_VALUES.items():
        assert record["keys"][key] == value, key  # as YAML parsed them: exact


def load(model, path, cfg, strict):
    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    return MSRCNNCheckpointer(model, strict=strict, config=cfg).load(str(path))


def assert_names_the_differences(message, path):
    for key, ours in D2_DIFFERENT.items():
        assert key in message, key
        assert ours in message, (key, ours)
    assert (
        "[102.9801, 115.9465, 122.7717]" in message
        and "MaskrcnnBenchmarkAnchorGenerator" in message
    )
    assert "MODEL.PIXEL_STD" not in message and "INPUT.FORMAT" not in message  # equal ones
    assert MRB_CONFIG in message and str(path) in message


def test_the_maskrcnn_benchmark_weights_in_detectron2s_config(converted, d2_model, caplog):
    """Loads strictly (same shapes) today, with no word: AP drops silently."""
    cfg = config(D2_CONFIG)
    with pytest.raises(ValueError) as err:  # evaluation, predict
        load(d2_model, converted, cfg, strict=True)
    assert_names_the_differences(str(err.value), converted)
    assert "MODEL.WEIGHTS_CONFIG_CHECK warn" in str(err.value)  # the way to load it anyway
    with caplog.at_level(logging.WARNING):  # training from it: a warning, naming the same
        load(d2_model, converted, cfg, strict=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("MODEL.PIXEL_MEAN" in w for w in warnings)
    assert_names_the_differences(next(w for w in warnings if "MODEL.PIXEL_MEAN" in w), converted)


@pytest.mark.parametrize("mode", ["warn", "off"])
def test_the_override_loads_it_on_purpose(converted, d2_model, caplog, mode):
    cfg = config(D2_CONFIG, "MODEL.WEIGHTS_CONFIG_CHECK", mode)
    with caplog.at_level(logging.WARNING):
        load(d2_model, converted, cfg, strict=True)
    warned = any("MODEL.PIXEL_MEAN" in r.getMessage() for r in caplog.records)
    assert warned == (mode == "warn")
    with pytest.raises(ValueError, match="WEIGHTS_CONFIG_CHECK"):
        load(d2_model, converted, config(D2_CONFIG, "MODEL.WEIGHTS_CONFIG_CHECK", "maybe"), True)


def test_its_own_config_loads_without_a_word(converted, caplog):
    from detectron2.modeling import build_model

    cfg = config(MRB_CONFIG)
    with caplog.at_level(logging.INFO):
        load(build_model(cfg), converted, cfg, strict=True)
    assert not any("WEIGHTS_CONFIG" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------- trained checkpoints


@pytest.fixture
def other_mean(predict_setup, tmp_path):
    """The predict tests' tiny MS R-CNN saved by a run whose config had another pixel mean."""
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=6)
    cfg.merge_from_file(str(predict_setup / "ms.yaml"))
    cfg.MODEL.PIXEL_MEAN = [10.0, 20.0, 30.0]
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    model = build_model(cfg)
    MSRCNNCheckpointer(model, str(tmp_path), config=cfg).save("other_mean")
    return tmp_path / "other_mean.pth", cfg


def test_a_trained_checkpoint_records_its_run_config(other_mean):
    path, cfg = other_mean
    record = torch.load(path, map_location="cpu", weights_only=True)["weights_config"]
    assert record["config_file"] == str(Path(cfg.OUTPUT_DIR) / "config.yaml")
    assert record["keys"]["MODEL.PIXEL_MEAN"] == [10.0, 20.0, 30.0]
    assert record["keys"]["MODEL.ANCHOR_GENERATOR.NAME"] == "DefaultAnchorGenerator"
    assert record["keys"]["MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION"] is True


def test_predict_refuses_a_mismatch_unless_overridden(predict_setup, other_mean, tmp_path):
    from ms_rcnn.predict.pipeline import InputError

    path, _ = other_mean
    with pytest.raises(InputError, match=r"MODEL.PIXEL_MEAN.*\[10.0, 20.0, 30.0\].*\[103.53"):
        run_predict(predict_setup, tmp_path / "a", weights=path)
    assert not (tmp_path / "a").exists()
    assert run_predict(predict_setup, tmp_path / "b", "MODEL.WEIGHTS_CONFIG_CHECK", "warn",
                       weights=path) == 0  # fmt: skip


def test_eval_only_refuses_a_mismatch_unless_overridden(predict_setup, other_mean, tmp_path):
    from detectron2.engine import default_argument_parser

    from ms_rcnn.data.user_datasets import add_register_coco_argument
    from ms_rcnn.engine import main

    path, _ = other_mean
    images = predict_setup / "shapes" / "images"

    def args(*opts):
        argv = ["--config-file", str(predict_setup / "ms.yaml"), "--eval-only",
                "--register-coco", "pred_shapes", str(predict_setup / "remapped.json"),
                str(images), "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "eval"),
                "TEST.BOUNDARY_EVAL.ENABLED", "False", *opts]  # fmt: skip
        return add_register_coco_argument(default_argument_parser()).parse_args(argv)

    with pytest.raises(ValueError, match=r"MODEL.PIXEL_MEAN.*\[10.0, 20.0, 30.0\]"):
        main(args())
    results = main(args("MODEL.WEIGHTS_CONFIG_CHECK", "warn"))
    assert "segm" in results


def test_an_old_checkpoint_loads_as_before_and_says_it_cannot_be_checked(predict_setup, caplog):
    from detectron2.modeling import build_model

    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=6)
    cfg.merge_from_file(str(predict_setup / "ms.yaml"))
    with caplog.at_level(logging.INFO):
        load(build_model(cfg), predict_setup / "ms.pth", cfg, strict=True)
    assert any(
        "records no config keys" in r.getMessage() and "not checked" in r.getMessage()
        for r in caplog.records
    )


def test_training_from_it_warns_and_records_its_own_config(predict_setup, other_mean, tmp_path,
                                                          caplog):  # fmt: skip
    """Trainer: starting from weights made for another pixel mean is a warning naming it (the
    fine-tuning goes on); the checkpoints it writes record the training config."""
    from ms_rcnn.data.user_datasets import register_coco_datasets
    from ms_rcnn.engine import Trainer

    path, _ = other_mean
    images = predict_setup / "shapes" / "images"
    register_coco_datasets([("pred_shapes", str(predict_setup / "remapped.json"), str(images))])
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=6)
    cfg.merge_from_file(str(predict_setup / "ms.yaml"))
    cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = str(path), str(tmp_path / "train")
    trainer = Trainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=False)
    assert any("MODEL.PIXEL_MEAN is [10.0, 20.0, 30.0]" in r.getMessage() for r in caplog.records)
    trainer.checkpointer.save("after")
    saved = torch.load(tmp_path / "train" / "after.pth", map_location="cpu", weights_only=False)
    assert saved["weights_config"]["keys"]["MODEL.PIXEL_MEAN"] == list(cfg.MODEL.PIXEL_MEAN)
