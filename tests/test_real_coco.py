"""Real COCO photographs and annotations (coco_tiny, docs/REAL_DATA.md) through every command, as a
user runs them: --register-coco with the 80 original category ids (1..90) and the crowd regions,
training with the demo config and with the from-scratch COCO config, --eval-only, predict on the
val images, and `ms-rcnn-compare ablate --gt-json` on predict's and the evaluator's outputs.

Models start from random weights (no ImageNet or COCO weights here) and train a few iterations
at a small size, so AP is about zero: the tests check that ids, files and numbers agree between
the commands, not that the model is good.
"""

import copy
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_eval_results
from real_data import (
    COCO_IMAGES,
    COCO_TRAIN_JSON,
    COCO_VAL_JSON,
    CROWD_AND_OBJECTS,
    CROWD_TOO,
    VAL_WITH_CROWD,
    VAL_WITHOUT_46,
    annotations_of,
    evaluate,
    load_json,
    register,
    requires_coco_tiny,
    subset,
    tiny_real_cfg,
    training_losses,
    write_json,
)

pytestmark = requires_coco_tiny

BIN = Path(sys.executable).parent
REGISTER = [
    "--register-coco", "real_coco_train", str(COCO_TRAIN_JSON), str(COCO_IMAGES),
    "--register-coco", "real_coco_val", str(COCO_VAL_JSON), str(COCO_IMAGES),
]  # fmt: skip
DATASETS = [
    "DATASETS.TRAIN", "('real_coco_train',)", "DATASETS.TEST", "('real_coco_val',)",
    "MODEL.ROI_HEADS.NUM_CLASSES", "80",
]  # fmt: skip
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
    "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(2,)", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.DEVICE", "cpu", "SEED", "1",
]  # fmt: skip
# The demo's R-18 made narrower (channel counts stay multiples of 32 for GroupNorm).
DEMO_NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip
# The R-50 COCO configs made narrower, same depth and layers (GroupNorm: multiples of 32).
R50_NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "128",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "DATASETS.TEST", "()",
]  # fmt: skip


def ms_rcnn_train(cwd, *args, check=True):
    """The console command, in its own process, as a user runs it."""
    cmd = [str(BIN / "ms-rcnn-train"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(output_dir):
    rows = [json.loads(line) for line in (Path(output_dir) / "metrics.json").read_text().split("\n")
            if line.strip()]  # fmt: skip
    return [row["total_loss"] for row in rows if "total_loss" in row]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """3 iterations of the demo's MS R-CNN on coco_tiny train, evaluated on coco_tiny val."""
    work = tmp_path_factory.mktemp("real_coco")
    out = work / "demo"
    ms_rcnn_train(
        work, "--config-file", "demo/ms_rcnn_R_18_demo.yaml", *REGISTER, *DATASETS, *SMALL,
        *DEMO_NARROW, "OUTPUT_DIR", str(out),
    )  # fmt: skip
    return out


def test_register_coco_keeps_the_original_ids_and_the_crowd_regions():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ms_rcnn.data.user_datasets import register_coco_datasets

    names = register_coco_datasets([REGISTER[1:4], REGISTER[5:8]])
    raw = load_json(COCO_TRAIN_JSON)
    ids = sorted(c["id"] for c in raw["categories"])
    assert len(ids) == 80 and ids[-1] == 90  # COCO's ids are not contiguous
    meta = MetadataCatalog.get(names[0])
    # Known at registration, before loading: what check_num_classes and predict rely on.
    assert len(meta.thing_classes) == 80
    assert meta.thing_dataset_id_to_contiguous_id == {i: k for k, i in enumerate(ids)}
    by_id = {c["id"]: c["name"] for c in raw["categories"]}
    assert meta.thing_classes == [by_id[i] for i in ids]

    dicts = DatasetCatalog.get(names[0])
    assert meta.thing_dataset_id_to_contiguous_id == {i: k for k, i in enumerate(ids)}  # unchanged
    assert len(dicts) == len(raw["images"]) == 32
    loaded = sorted(
        (d["image_id"], a["category_id"], a.get("iscrowd", 0))
        for d in dicts
        for a in d["annotations"]
    )
    expected = sorted(
        (a["image_id"], ids.index(a["category_id"]), a["iscrowd"]) for a in raw["annotations"]
    )
    assert loaded == expected  # every annotation, the crowd regions included, same classes
    crowd = [a for d in dicts for a in d["annotations"] if a.get("iscrowd")]
    assert len(crowd) == 4 and all(isinstance(a["segmentation"], dict) for a in crowd)


def test_train_with_the_demo_config_then_eval_only(demo_run, tmp_path):
    results = json.loads((demo_run / "eval_results.json").read_text())
    flat = json.dumps(results)
    for task in ("bbox", "segm", "boundary", "calibration"):
        assert f'"{task}"' in flat, task
    assert all(math.isfinite(v) for v in losses(demo_run))
    inference = demo_run / "inference" / "real_coco_val"
    detections = json.loads((inference / "coco_instances_results.json").read_text())
    val = load_json(COCO_VAL_JSON)
    assert {d["image_id"] for d in detections} == {im["id"] for im in val["images"]}
    assert {d["category_id"] for d in detections} <= {c["id"] for c in val["categories"]}

    again = tmp_path / "eval"
    ms_rcnn_train(
        tmp_path, "--config-file", str(demo_run / "config.yaml"), "--eval-only",
        *REGISTER[4:], "MODEL.WEIGHTS", str(demo_run / "model_final.pth"),
        "OUTPUT_DIR", str(again),
    )  # fmt: skip
    assert_same_eval_results(json.loads((again / "eval_results.json").read_text()), results)


def test_the_scratch_coco_config_trains_from_random_weights(tmp_path):
    """The R-50-FPN config for users without ImageNet weights (GroupNorm, nothing frozen) keeps
    finite losses, where the ImageNet config with MODEL.WEIGHTS "" diverges (next test)."""
    out = tmp_path / "scratch"
    ms_rcnn_train(
        tmp_path, "--config-file", "COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_gn_scratch_3x.yaml",
        *REGISTER[:4], *DATASETS, *SMALL, *R50_NARROW, "SOLVER.MAX_ITER", "4",
        "OUTPUT_DIR", str(out),
    )  # fmt: skip
    values = losses(out)
    assert values and all(math.isfinite(v) and v < 100 for v in values), values


def test_the_imagenet_config_without_its_weights_diverges(tmp_path):
    """Why the scratch config exists: FrozenBN with random weights normalizes nothing."""
    proc = ms_rcnn_train(
        tmp_path, "--config-file", "COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yaml",
        *REGISTER[:4], *DATASETS, *SMALL, *R50_NARROW, "SOLVER.MAX_ITER", "4",
        "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "frozen"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "FloatingPointError" in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def predicted(demo_run, tmp_path_factory):
    """ms-rcnn-predict with the demo run's weights on the 6 val images, every detection kept,
    one image per forward pass (the evaluator's batch), in this process: its output folder."""
    from ms_rcnn.predict.cli import build_parser, run

    out = tmp_path_factory.mktemp("predicted")
    argv = [
        "--config-file", str(demo_run / "config.yaml"), "--input", str(COCO_IMAGES / "val2017"),
        "--output", str(out), *REGISTER[4:], "--confidence-threshold", "0", "--batch-size", "1",
        "MODEL.WEIGHTS", str(demo_run / "model_final.pth"),
    ]  # fmt: skip
    assert run(build_parser().parse_args(argv)) == 0
    return out


def test_predict_writes_the_json_ids_and_the_evaluator_detections(demo_run, predicted):
    predictions = json.loads((predicted / "predictions.json").read_text())
    val = load_json(COCO_VAL_JSON)
    by_name = {im["file_name"].split("/")[-1]: im["id"] for im in val["images"]}
    assert predictions
    for p in predictions:
        assert p["image_id"] == by_name[Path(p["file_name"]).name]
    assert {p["category_id"] for p in predictions} <= {c["id"] for c in val["categories"]}
    assert len(list(predicted.glob("*.jpg"))) == len(val["images"])

    # The evaluator's detections of the same weights: predict keeps those whose ranking score
    # (mask_score) is above the threshold 0, with the same ids, boxes and masks.
    evaluated = json.loads(
        (demo_run / "inference" / "real_coco_val" / "coco_instances_results.json").read_text()
    )

    def key(d):
        return (d["image_id"], d["category_id"], tuple(round(v, 2) for v in d["bbox"]),
                d["segmentation"]["counts"], round(d["mask_score"], 4))  # fmt: skip

    assert sorted(map(key, predictions)) == sorted(key(d) for d in evaluated if d["mask_score"] > 0)


def test_ablate_with_gt_json_agrees_with_the_evaluator(demo_run, predicted, tmp_path):
    from ms_rcnn.analysis.cli import main as compare

    evaluated = json.loads((demo_run / "eval_results.json").read_text())["results"]
    sources = {
        "evaluator": demo_run / "inference" / "real_coco_val",
        "predict": predicted / "predictions.json",
    }
    for label, source in sources.items():
        out = tmp_path / f"{label}.json"
        argv = ["ablate", "--predictions", str(source), "--gt-json", str(COCO_VAL_JSON),
                "--output", str(out)]  # fmt: skip
        assert compare(argv) == 0
        ablated = json.loads(out.read_text())
        for task in ("segm", "boundary"):
            for metric in ("AP", "AP50", "AP75"):
                got, want = ablated[task]["mask_scores"][metric], evaluated[task][metric]
                assert want is not None and got == pytest.approx(want, abs=0.05), (label, task)


# Crowd regions: Detectron2's rule in training, COCO's in evaluation.


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_crowd_regions_never_become_training_instances(tmp_path, mask_format, caplog):
    """An image with objects and a crowd region, and one with only a crowd region (its objects
    removed from the JSON): the crowd region is loaded (evaluation needs it) but never becomes a
    ground-truth instance; the crowd-only image leaves training, or trains as background."""
    from detectron2.data import DatasetCatalog, DatasetMapper, get_detection_dataset_dicts

    raw = load_json(COCO_TRAIN_JSON)
    data = subset(raw, [CROWD_AND_OBJECTS, CROWD_TOO])
    data["annotations"] = [
        a for a in data["annotations"] if a["image_id"] == CROWD_AND_OBJECTS or a["iscrowd"]
    ]
    name = register(write_json(tmp_path / "crowd.json", data))
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    assert [a["iscrowd"] for a in dicts[CROWD_TOO]["annotations"]] == [1]

    cfg = tiny_real_cfg(mask_format)
    mapper = DatasetMapper(cfg, is_train=True)
    mixed, crowd_only = (mapper(copy.deepcopy(dicts[i])) for i in (CROWD_AND_OBJECTS, CROWD_TOO))
    objects = [a for a in annotations_of(raw, CROWD_AND_OBJECTS) if not a["iscrowd"]]
    (crowd,) = [a for a in annotations_of(raw, CROWD_AND_OBJECTS) if a["iscrowd"]]
    instances = mixed["instances"]
    assert 0 < len(instances) <= len(objects) and len(crowd_only["instances"]) == 0
    scale = instances.image_size[1] / dicts[CROWD_AND_OBJECTS]["width"]
    x, y, w, h = crowd["bbox"]
    crowd_box = torch.tensor([x, y, x + w, y + h]) * scale
    distance = (instances.gt_boxes.tensor - crowd_box).abs().max(dim=1).values
    assert distance.min() > 2, "the crowd region's box is among the ground truth"
    ids = sorted(c["id"] for c in raw["categories"])
    assert set(instances.gt_classes.tolist()) <= {ids.index(a["category_id"]) for a in objects}

    # Training: the crowd-only image alone has no foreground (no box, mask or MaskIoU loss);
    # with the other image, every loss is finite.
    alone = training_losses(cfg, [crowd_only])
    assert alone["loss_box_reg"] == alone["loss_mask"] == alone["loss_maskiou"] == 0
    assert all(math.isfinite(v) for v in training_losses(cfg, [crowd_only, mixed]).values())

    # Detectron2 drops the crowd-only image from training by default (FILTER_EMPTY_ANNOTATIONS).
    with caplog.at_level(logging.INFO, logger="detectron2"):
        kept = get_detection_dataset_dicts([name], filter_empty=True)
    assert [d["image_id"] for d in kept] == [CROWD_AND_OBJECTS]
    assert "Removed 1 images with no usable annotations" in caplog.text
    assert len(get_detection_dataset_dicts([name], filter_empty=False)) == 2


def test_crowd_regions_are_ignored_by_evaluation():
    """A detection exactly on the val crowd region (wine glasses) is neither a true nor a false
    positive: box, mask and Boundary AP of perfect detections stay as they are, in the
    evaluator (faster-coco-eval or pycocotools) and in ablate (pycocotools). The same detection
    on an image without wine glasses is a false positive and lowers them."""
    val = load_json(COCO_VAL_JSON)
    name = register(COCO_VAL_JSON)
    (crowd,) = [a for a in annotations_of(val, VAL_WITH_CROWD) if a["iscrowd"]]
    assert crowd["category_id"] == 46
    assert 46 not in {a["category_id"] for a in annotations_of(val, VAL_WITHOUT_46)}
    base, base_ablated = evaluate(name, val, COCO_VAL_JSON)
    on_crowd, on_crowd_ablated = evaluate(name, val, COCO_VAL_JSON, {VAL_WITH_CROWD: [crowd]})
    elsewhere, elsewhere_ablated = evaluate(name, val, COCO_VAL_JSON, {VAL_WITHOUT_46: [crowd]})
    for task in ("bbox", "segm", "boundary"):
        assert base[task]["AP"] > 90, (task, base[task]["AP"])
        for metric in ("AP", "AP50", "AP75", "AP-wine glass"):
            assert on_crowd[task][metric] == pytest.approx(base[task][metric]), (task, metric)
        assert elsewhere[task]["AP-wine glass"] < base[task]["AP-wine glass"] - 1, task
    assert on_crowd_ablated == pytest.approx(base_ablated)
    assert base_ablated["AP"] == pytest.approx(base["segm"]["AP"], abs=0.05)
    assert elsewhere_ablated["AP"] < base_ablated["AP"]
    # Calibration compares with non-crowd ground truth only: the detection on the crowd region
    # matches nothing.
    assert on_crowd["calibration"]["num_matched"] == base["calibration"]["num_matched"]
