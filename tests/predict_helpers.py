"""Shared by the tools/predict.py tests: a folder with generated images, their COCO JSON and
tiny checkpoints (`make_predict_setup`, the session fixture `predict_setup` in conftest.py),
and ways to run predict on it and to compute the model's own outputs without predict's code."""

import json
from pathlib import Path

import numpy as np
import torch
from conftest import tiny_cfg
from PIL import Image

# Non-contiguous dataset category ids, so the mapping back from contiguous ids is exercised.
DATASET_IDS = [3, 5, 8, 13, 21, 34]


def make_predict_setup(base: Path) -> Path:
    """4 generated 64x64 images, their COCO JSON with remapped category ids, and tiny MS R-CNN
    and Mask R-CNN checkpoints with their configs (random weights: ranks and IoUs vary)."""
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer
    from ms_rcnn.data.synthetic import generate_synthetic_dataset

    json_file = generate_synthetic_dataset(str(base), "shapes", num_images=4, seed=7, image_size=64)
    data = json.loads(Path(json_file).read_text())
    old_ids = sorted(c["id"] for c in data["categories"])
    remap = dict(zip(old_ids, DATASET_IDS))
    for c in data["categories"]:
        c["id"] = remap[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    (base / "remapped.json").write_text(json.dumps(data))
    for arm, heads in (("ms", "MaskScoringROIHeads"), ("plain", "StandardROIHeads")):
        torch.manual_seed(0)
        cfg = tiny_cfg(heads, mask_format="bitmask", num_classes=6)
        cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
        cfg.TEST.DETECTIONS_PER_IMAGE = 8
        cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ("pred_shapes",)
        MSRCNNCheckpointer(build_model(cfg), str(base)).save(arm)
        (base / f"{arm}.yaml").write_text(cfg.dump())
    return base


def predict_args(
    setup_dir, out, *extra, arm="ms", inputs=None, weights=None, config=None, register=True
):
    """predict's arguments; `register`: with --register-coco pred_shapes (the config's test
    dataset)."""
    from ms_rcnn.predict.cli import build_parser

    images = setup_dir / "shapes" / "images"
    registration = ["--register-coco", "pred_shapes", str(setup_dir / "remapped.json"),
                    str(images)] if register else []  # fmt: skip
    argv = ["--config-file", str(config or setup_dir / f"{arm}.yaml"),
            "--input", *(inputs or [str(images)]), "--output", str(out), *registration,
            *extra, "MODEL.WEIGHTS", str(weights or setup_dir / f"{arm}.pth")]  # fmt: skip
    return build_parser().parse_args(argv)


def run_predict(setup_dir, out, *extra, **kwargs):
    from ms_rcnn.predict.cli import run

    return run(predict_args(setup_dir, out, *extra, **kwargs))


def model_outputs(setup_dir, arm, paths, score_thresh=0.0, config=None, weights=None):
    """The checkpoint's own outputs per image, at class-score threshold `score_thresh`,
    computed here without ms_rcnn.predict: PIL read, BGR, no resize (64 is the test size),
    one image a call."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ms_rcnn import add_ms_rcnn_config

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(str(config or setup_dir / f"{arm}.yaml"))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(weights or setup_dir / f"{arm}.pth"))
    outputs = {}
    for path in paths:
        bgr = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]
        image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1)))
        with torch.no_grad():
            outputs[str(path)] = model([{"image": image, "height": 64, "width": 64}])[0][
                "instances"
            ]
    return outputs
