"""Your own COCO-format datasets from the command line: ``--register-coco NAME JSON IMAGE_ROOT``.

`tools/train_net.py` and `tools/predict.py` take the flag (repeatable). Registration runs inside
`ms_rcnn.engine.setup`, i.e. inside `main(args)`, so each process that Detectron2's `launch`
starts registers the datasets itself: a dataset registered only in the parent would be unknown
to spawned workers.

The JSON is read once at registration, to fail early on a bad file and to give the dataset its
class names right away: Detectron2's `register_coco_instances` learns them only when the
dataset is first loaded, too late for checking MODEL.ROI_HEADS.NUM_CLASSES before training and
for naming classes in predictions on images outside the dataset.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_checks import read_coco_json, register_coco_instances_checked

__all__ = [
    "add_register_coco_argument",
    "register_coco_datasets",
    "register_coco_from_args",
    "check_num_classes",
    "check_config_datasets",
]

logger = logging.getLogger(__name__)


def add_register_coco_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the repeatable ``--register-coco NAME JSON IMAGE_ROOT`` option to `parser`."""
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format instances dataset under NAME before the config is read "
        "(use NAME in DATASETS.TRAIN / DATASETS.TEST); repeatable",
    )
    return parser


def _categories(json_file: str) -> list[dict]:
    data = read_coco_json(json_file)  # errors name the file and the record
    categories = data["categories"]
    ids = [c["id"] for c in categories]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"{json_file}: category id(s) {duplicated} appear more than once")
    # The order Detectron2's load_coco_json gives contiguous ids in (sorted dataset ids), so the
    # metadata set here is the same it sets again when the dataset is loaded.
    return sorted(categories, key=lambda c: c["id"])


def _same_dataset(name: str, json_file: str, image_root: str) -> bool:
    """True if `name` is registered with these very files (registering it again is a no-op)."""
    meta = MetadataCatalog.get(name)
    known = meta.get("json_file"), meta.get("image_root")
    if None in known:
        return False
    return os.path.realpath(known[0]) == os.path.realpath(json_file) and os.path.realpath(
        known[1]
    ) == os.path.realpath(image_root)


def register_coco_datasets(specs: Iterable[Sequence[str]]) -> list[str]:
    """Register each (name, json_file, image_root) with `register_coco_instances_checked`.

    The JSON is checked now (missing, not JSON, not COCO instances, duplicated category ids);
    missing image files are reported, all at once, when the dataset is loaded. Registering a
    name again with the same files does nothing (a process may call `main` more than once);
    with other files, or a name Detectron2 or ms-rcnn already uses for another dataset, it is
    an error.

    Returns:
        The names, in order.
    """
    names = []
    for spec in specs:
        if len(spec) != 3:
            raise ValueError(f"--register-coco takes NAME JSON IMAGE_ROOT, got {list(spec)}")
        name, json_file, image_root = spec
        json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
        if name in DatasetCatalog.list():
            if _same_dataset(name, json_file, image_root):
                names.append(name)
                continue
            meta = MetadataCatalog.get(name)
            what = (
                f"with JSON {meta.json_file} and images {meta.image_root}"
                if meta.get("json_file") and meta.get("image_root")
                else "by another module"
            )
            raise ValueError(
                f"--register-coco {name}: a dataset named {name!r} is already registered {what}; "
                f"give {json_file} another name"
            )
        categories = _categories(json_file)
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"--register-coco {name}: IMAGE_ROOT {image_root} is not a directory"
            )
        metadata = {
            "thing_classes": [c["name"] for c in categories],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        }
        register_coco_instances_checked(name, metadata, json_file, image_root)
        logger.info(f"Registered dataset {name}: {len(categories)} categories from {json_file}")
        names.append(name)
    return names


def register_coco_from_args(args) -> list[str]:
    """Register the datasets of ``args.register_coco`` (absent, as from Detectron2's own
    `default_argument_parser`, means none)."""
    return register_coco_datasets(getattr(args, "register_coco", None) or [])


def check_num_classes(cfg, dataset_names: Iterable[str]) -> None:
    """Check MODEL.ROI_HEADS.NUM_CLASSES against the class count of each of `dataset_names`.

    Fewer classes than a dataset has is an error: its annotations would carry class ids the
    model has no output for. More is a warning: it trains, with outputs no image ever asks for.
    Datasets whose classes are unknown before loading (no ``thing_classes`` in their metadata)
    are not checked.
    """
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in dict.fromkeys(dataset_names):  # unique, in order
        if name not in DatasetCatalog.list():
            continue  # Detectron2 names unregistered datasets itself when it loads them
        classes = MetadataCatalog.get(name).get("thing_classes")
        if not classes:
            continue
        if num_classes < len(classes):
            raise ValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes}, but dataset {name} has "
                f"{len(classes)} categories: set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )
        if num_classes > len(classes):
            logger.warning(
                f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes}, but dataset {name} has only "
                f"{len(classes)} categories: the model gets outputs for classes that never occur"
            )


def check_config_datasets(cfg, registered: Sequence[str]) -> None:
    """Check the config against the datasets just registered with --register-coco.

    Their class counts must fit MODEL.ROI_HEADS.NUM_CLASSES (`check_num_classes`), for those the
    config trains or tests on; a registered dataset the config does not use gets a warning, as
    it most likely means a forgotten ``DATASETS.TRAIN "('NAME',)"``.
    """
    used = {*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST}
    for name in registered:
        if name not in used:
            logger.warning(
                f"--register-coco {name}: the config does not use it (DATASETS.TRAIN="
                f"{tuple(cfg.DATASETS.TRAIN)}, DATASETS.TEST={tuple(cfg.DATASETS.TEST)}); add "
                f"e.g. DATASETS.TRAIN \"('{name}',)\""
            )
    check_num_classes(cfg, [n for n in registered if n in used])
