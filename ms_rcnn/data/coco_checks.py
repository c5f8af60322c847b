"""COCO-format loading that names the file at fault instead of failing deep inside pycocotools.

Detectron2's `load_coco_json` reports a truncated or malformed JSON as a bare JSONDecodeError
or KeyError ('images') without the path, and a missing image only when a data-loader worker
first reads it, mid-training. `load_coco_json_checked` (and `register_coco_instances_checked`,
the drop-in for Detectron2's `register_coco_instances`) checks both when the dataset is loaded.
"""

from __future__ import annotations

import json
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["load_coco_json_checked", "register_coco_instances_checked", "check_image_files"]

# COCO fields load_coco_json reads unconditionally, per record.
_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_MAX_LISTED = 5


def _check_structure(data, json_file: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: a COCO JSON holds an object, got {type(data).__name__}")
    data.setdefault("annotations", [])  # legal: image-info-only files (e.g. test-dev)
    for key, fields in _REQUIRED.items():
        records = data.get(key)
        if not isinstance(records, list):
            raise ValueError(f"{json_file}: malformed COCO JSON, no {key!r} list")
        for k, record in enumerate(records):
            missing = [f for f in fields if not isinstance(record, dict) or f not in record]
            if missing:
                raise ValueError(f"{json_file}: {key}[{k}] lacks {missing}")
    if not data["categories"]:
        raise ValueError(f"{json_file}: malformed COCO JSON, 'categories' is empty")
    ids = {c["id"] for c in data["categories"]}
    images = {im["id"] for im in data["images"]}
    for k, ann in enumerate(data["annotations"]):
        bbox = ann["bbox"]
        numbers = isinstance(bbox, list) and len(bbox) == 4
        numbers = numbers and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox
        )
        if not numbers:
            raise ValueError(
                f"{json_file}: annotations[{k}] (id {ann.get('id')}) bbox {bbox!r} is not 4 "
                "finite numbers [x, y, width, height]"
            )
        if ann["category_id"] not in ids:
            raise ValueError(
                f"{json_file}: annotations[{k}] (id {ann.get('id')}) has category_id "
                f"{ann['category_id']}, not in 'categories'"
            )
        if ann["image_id"] not in images:
            raise ValueError(
                f"{json_file}: annotations[{k}] (id {ann.get('id')}) has image_id "
                f"{ann['image_id']}, not in 'images'"
            )


def read_coco_json(json_file: str) -> dict:
    """Parse and check a COCO instances JSON; every error names `json_file`."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO JSON {json_file}: no such file")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not valid JSON (truncated or malformed?): {e}") from e
    _check_structure(data, json_file)
    return data


def check_image_files(dataset_dicts, dataset_name: str | None = None) -> None:
    """Raise FileNotFoundError naming the images of `dataset_dicts` that do not exist."""
    missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
    if missing:
        where = f" of dataset {dataset_name}" if dataset_name else ""
        listed = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise FileNotFoundError(f"{len(missing)} image file(s){where} missing: {listed}{more}")


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: str | None = None, **kwargs
) -> list[dict]:
    """Detectron2's `load_coco_json`, after checking the JSON, then checking every image exists.

    Raises:
        FileNotFoundError: the JSON or an image file is missing (its path in the message).
        ValueError: the JSON is truncated, not JSON, or not COCO instances (path and record).
    """
    from detectron2.data.datasets.coco import load_coco_json

    # Parsed twice (here and by pycocotools): the price of naming the file and the record;
    # small next to decoding the images.
    read_coco_json(json_file)
    dicts = load_coco_json(json_file, image_root, dataset_name, **kwargs)
    check_image_files(dicts, dataset_name)
    return dicts


def register_coco_instances_checked(name: str, metadata: dict, json_file: str, image_root: str):
    """`detectron2.data.datasets.register_coco_instances`, loading with `load_coco_json_checked`."""
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
