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
