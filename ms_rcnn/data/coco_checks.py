"""COCO-format loading that names the file at fault instead of failing deep inside pycocotools.

Detectron2's `load_coco_json` reports a truncated or malformed JSON as a bare JSONDecodeError
or KeyError ('images') without the path, and a missing image only when a data-loader worker
first reads it, mid-training. `load_coco_json_checked` (and `register_coco_instances_checked`,
the drop-in for Detectron2's `register_coco_instances`) checks both when the dataset is loaded.

It also drops annotations no mask can be made of (`drop_unusable_polygons`): an empty
segmentation list crashes Detectron2's mapper mid-training, a polygon of fewer than 3 points
crashes pycocotools when evaluating (a 4-number one reads as a box), and a zero-area one becomes
an instance with an empty mask in "polygon" format but vanishes in "bitmask" format. The
evaluator and `ms-rcnn-compare ablate` drop the same annotations from the ground truth.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import os
from typing import NamedTuple

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "load_coco_json_checked",
    "register_coco_instances_checked",
    "check_image_files",
    "drop_unusable_polygons",
    "drop_unusable_polygons_from_coco",
]

logger = logging.getLogger(__name__)

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


def _usable_polygon(poly) -> bool:
    """Whether a flat [x0, y0, x1, y1, ...] polygon can be drawn: at least 3 points, an even
    number of finite coordinates, an area above zero (not all points on one line)."""
    if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        if not all(map(math.isfinite, poly)):
            return False
    except TypeError:  # not numbers
        return False
    xs, ys = poly[0::2], poly[1::2]
    # Shoelace formula; map(mul) keeps it fast on COCO's 1.2 million polygons.
    twice_area = sum(map(operator.mul, xs, ys[1:] + ys[:1])) - sum(
        map(operator.mul, xs[1:] + xs[:1], ys)
    )
    return abs(twice_area) > 1e-6


class UnusablePolygons(NamedTuple):
    """Annotation ids found by `drop_unusable_polygons`."""

    dropped: list  # no usable polygon left: the whole annotation goes
    trimmed: list  # kept, without their unusable polygons

    def __bool__(self) -> bool:
        return bool(self.dropped or self.trimmed)


def _has_masks(annotations) -> bool:
    return any(a.get("segmentation") for a in annotations if not a.get("iscrowd", 0))


def _usable_part(obj, has_masks: bool):
    """The usable segmentation of a non-crowd annotation: the same object (RLE, or every piece
    usable), a shorter polygon list, or None when no mask can be made of it."""
    segm = obj.get("segmentation")
    if isinstance(segm, list):
        usable = [p for p in segm if _usable_polygon(p)]
        return (usable if len(usable) < len(segm) else segm) if usable else None
    if not segm:
        # No segmentation in a dataset with masks: the mapper would fail on it. A dataset with
        # no masks at all (boxes only) keeps its annotations.
        return None if has_masks else segm
    return segm  # RLE


def _short_list(ids) -> str:
    """The first _MAX_LISTED items (annotation ids, file names), and how many more."""
    listed = ", ".join(str(i) for i in ids[:_MAX_LISTED])
    return listed + (f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else "")


_WARNED: set = set()


def _warn_once(found: UnusablePolygons, source: str) -> None:
    """One warning per JSON file and process (it is loaded for training, testing and by the
    evaluator)."""
    try:
        key = (os.path.realpath(source), os.stat(source).st_mtime_ns)
    except OSError:
        key = (source, None)
    if key in _WARNED:
        return
    _WARNED.add(key)
    parts = []
    if found.dropped:
        parts.append(
            f"dropped {len(found.dropped)} annotation(s) without a usable polygon (empty "
            f"segmentation, fewer than 3 points, an odd number of coordinates or zero area), "
            f"ids {_short_list(found.dropped)}"
        )
    if found.trimmed:
        parts.append(
            f"removed such polygons from {len(found.trimmed)} annotation(s) that keep a usable "
            f"one, ids {_short_list(found.trimmed)}"
        )
    logger.warning(f"{source}: " + "; ".join(parts) + ". Category ids and classes are unchanged.")


def _keep_usable(annotations, has_masks: bool) -> tuple[list, UnusablePolygons]:
    """The annotations a mask can be made of, with their unusable polygons removed (in place),
    crowd regions as they are; and the ids of those dropped and of those trimmed."""
    kept, found = [], UnusablePolygons([], [])
    for ann in annotations:
        if not ann.get("iscrowd", 0):
            usable = _usable_part(ann, has_masks)
            if usable is None:
                found.dropped.append(ann.get("id"))
                continue
            if usable is not ann.get("segmentation"):
                found.trimmed.append(ann.get("id"))
                ann["segmentation"] = usable
        kept.append(ann)
    return kept, found


def drop_unusable_polygons(data: dict, source: str = "COCO JSON") -> UnusablePolygons:
    """Remove, in place, the non-crowd annotations of a COCO dict that no mask can be made of,
    and the unusable polygons of the others; warn once per `source` (the JSON's path).

    Unusable: an empty (or, in a dataset with masks, missing) segmentation; a polygon of fewer
    than 3 points, with an odd number or non-finite coordinates, or of zero area. RLE
    segmentations and crowd regions are kept as they are. Categories are not touched.
    """
    annotations = data.get("annotations") or []
    kept, found = _keep_usable(annotations, _has_masks(annotations))
    if found:
        data["annotations"] = kept
        _warn_once(found, source)
    return found


def drop_unusable_polygons_from_coco(coco_api, source: str = "COCO JSON") -> UnusablePolygons:
    """`drop_unusable_polygons` on a pycocotools COCO's dataset, then rebuild its index."""
    found = drop_unusable_polygons(coco_api.dataset, source)
    if found:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_api.createIndex()
    return found


class _NotDetectron2Filtered(logging.Filter):
    """Hides load_coco_json's own 'Filtered out N instances' warning, which ours replaces."""

    def filter(self, record) -> bool:
        return "instances without valid segmentation" not in record.getMessage()


def _drop_from_dataset_dicts(dicts, has_masks: bool) -> None:
    """The same rule on Detectron2 dataset dicts (load_coco_json already dropped polygons of
    fewer than 3 points, and left annotations with an empty list without 'segmentation')."""
    for record in dicts:
        record["annotations"], _ = _keep_usable(record["annotations"], has_masks)


def check_image_files(dataset_dicts, dataset_name: str | None = None) -> None:
    """Raise FileNotFoundError naming the images of `dataset_dicts` that do not exist."""
    missing = [d["file_name"] for d in dataset_dicts if not os.path.isfile(d["file_name"])]
    if missing:
        where = f" of dataset {dataset_name}" if dataset_name else ""
        raise FileNotFoundError(
            f"{len(missing)} image file(s){where} missing: {_short_list(missing)}"
        )


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: str | None = None, **kwargs
) -> list[dict]:
    """Detectron2's `load_coco_json`, after checking the JSON, then checking every image exists.

    Annotations no mask can be made of are dropped, with one warning (`drop_unusable_polygons`).

    Raises:
        FileNotFoundError: the JSON or an image file is missing (its path in the message).
        ValueError: the JSON is truncated, not JSON, or not COCO instances (path and record).
    """
    from detectron2.data.datasets.coco import load_coco_json

    # Parsed twice (here and by pycocotools): the price of naming the file and the record;
    # small next to decoding the images.
    data = read_coco_json(json_file)
    has_masks = _has_masks(data["annotations"])
    unusable = drop_unusable_polygons(data, json_file)  # warns, once per file
    coco_logger = logging.getLogger("detectron2.data.datasets.coco")
    hide = _NotDetectron2Filtered()
    if unusable:
        coco_logger.addFilter(hide)
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name, **kwargs)
    finally:
        coco_logger.removeFilter(hide)
    if unusable:
        _drop_from_dataset_dicts(dicts, has_masks)
    check_image_files(dicts, dataset_name)
    return dicts


def register_coco_instances_checked(name: str, metadata: dict, json_file: str, image_root: str):
    """`detectron2.data.datasets.register_coco_instances`, loading with `load_coco_json_checked`."""
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
