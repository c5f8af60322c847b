"""Where the tests find the real photographs (docs/REAL_DATA.md), and copies made from them.

The data is not the project's and is not in the repository: CI clones the repository with
`shared/` beside it, so it is at ``<repository>/../shared/data``; ``MS_RCNN_REAL_DATA`` names
another folder holding ``coco_tiny/`` (and ``kudzu/``). Where it is absent, e.g. in a user's
clone, the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("MS_RCNN_REAL_DATA") or ROOT.parent / "shared" / "data")
COCO_TINY = REAL_DATA / "coco_tiny"
COCO_TRAIN_JSON = COCO_TINY / "annotations" / "train.json"
COCO_VAL_JSON = COCO_TINY / "annotations" / "val.json"
COCO_IMAGES = COCO_TINY / "images"

requires_coco_tiny = pytest.mark.skipif(
    not (COCO_TRAIN_JSON.is_file() and COCO_VAL_JSON.is_file() and COCO_IMAGES.is_dir()),
    reason=f"real COCO images not found in {COCO_TINY}: they live outside the repository, in "
    "../shared/data beside the clone (CI has them), or set MS_RCNN_REAL_DATA; see "
    "docs/REAL_DATA.md",
)

# coco_tiny images the tests single out (ids of train2017 / val2017).
CROWD_AND_OBJECTS = 87038  # train: 16 objects and 1 crowd region (640x480)
CROWD_TOO = 463730  # train: 21 objects and 1 crowd region (640x427)
PORTRAIT = 322864  # train: 427x640 (width x height), 6 objects
VAL_WITH_CROWD = 516168  # val: 40 objects and 1 crowd region (wine glasses, id 46), 640x480
VAL_WITHOUT_46 = 471345  # val: 640x480 too, no wine glass


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


def write_json(path, data) -> str:
    Path(path).write_text(json.dumps(data))
    return str(path)


def image_info(data: dict, image_id: int) -> dict:
    return next(im for im in data["images"] if im["id"] == image_id)


def annotations_of(data: dict, image_id: int) -> list[dict]:
    return [a for a in data["annotations"] if a["image_id"] == image_id]


def subset(data: dict, image_ids) -> dict:
    """`data` restricted to `image_ids` (all its categories kept)."""
    ids = set(image_ids)
    return {
        **data,
        "images": [im for im in data["images"] if im["id"] in ids],
        "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
    }


def register(json_path, image_root=COCO_IMAGES) -> str:
    """Register `json_path` with --register-coco's function under a name unique to the file."""
    from ms_rcnn.data.user_datasets import register_coco_datasets

    name = "real_" + str(json_path).strip("/").replace("/", "_").replace(".", "_")
    return register_coco_datasets([(name, str(json_path), str(image_root))])[0]


def tiny_real_cfg(mask_format="polygon", heads="MaskScoringROIHeads", size=160):
    """conftest's tiny model with COCO's 80 classes, at a small size, no random flip."""
    from conftest import tiny_cfg

    cfg = tiny_cfg(heads, mask_format=mask_format, num_classes=80)
    cfg.INPUT.MIN_SIZE_TRAIN = (size,)
    cfg.INPUT.MAX_SIZE_TRAIN = size * 2
    cfg.INPUT.MIN_SIZE_TEST = size
    cfg.INPUT.MAX_SIZE_TEST = size * 2
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def training_losses(cfg, batch) -> dict:
    """One training forward of a freshly built (seeded) model on mapped dataset dicts."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage(0):
        return {k: float(v) for k, v in model(batch).items()}


def perfect_outputs(data, extra=None):
    """Model outputs equal to the non-crowd ground truth of `data` (descending scores), plus
    `extra` {image_id: [annotation]} detections, scored above all the others."""
    import numpy as np
    import torch
    from detectron2.structures import Boxes, BoxMode, Instances
    from pycocotools import mask as mask_util

    ids = sorted(c["id"] for c in data["categories"])
    inputs, outputs, score = [], [], 0.9
    for im in data["images"]:
        h, w = im["height"], im["width"]
        anns = [a for a in annotations_of(data, im["id"]) if not a["iscrowd"]]
        scores = [score - 1e-4 * k for k in range(len(anns))]
        anns = anns + (extra or {}).get(im["id"], [])
        scores = scores + [0.99] * (len(anns) - len(scores))
        masks = []
        for a in anns:
            segm = a["segmentation"]
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(
                segm, list) else mask_util.frPyObjects(segm, h, w)  # fmt: skip
            masks.append(mask_util.decode(rle).astype(bool))
        inst = Instances((h, w))
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor(scores)
        inst.pred_classes = torch.tensor([ids.index(a["category_id"]) for a in anns])
        inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w)
        inst.mask_scores = inst.scores.clone()
        inst.pred_maskiou = torch.ones(len(anns))
        inputs.append({"image_id": im["id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def evaluate(name, data, gt_json, extra=None):
    """Perfect detections of `data` (plus `extra`) evaluated on dataset `name`: (the evaluator's
    results, the segm AP ablate's pycocotools gives the same detections against `gt_json`)."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    from ms_rcnn.analysis.ablation import evaluate_with_score_field, load_coco_gt
    from ms_rcnn.evaluation import MaskScoringCOCOEvaluator
    from ms_rcnn.evaluation.coco_evaluation import add_score_fields

    inputs, outputs = perfect_outputs(data, extra)
    evaluator = MaskScoringCOCOEvaluator(name, distributed=False, output_dir=None)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    ids = sorted(c["id"] for c in data["categories"])
    records = []
    for inp, out in zip(inputs, outputs):
        dets = instances_to_coco_json(out["instances"], inp["image_id"])
        add_score_fields(dets, out["instances"])
        records += [{**d, "category_id": ids[d["category_id"]]} for d in dets]
    ablated = evaluate_with_score_field(records, load_coco_gt(str(gt_json)), "mask_scores")
    return results, ablated
