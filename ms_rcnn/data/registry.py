"""Register the synthetic datasets in Detectron2's catalogs, generating them on first use.

Registration only records names, paths and metadata; nothing is generated (or imported beyond
Detectron2's catalogs) until `DatasetCatalog.get(name)` runs, which generates the dataset under
its root if no matching cached copy exists and then loads it with `load_coco_json`.
"""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "DEFAULT_ROOT_ENV",
    "SYNTHETIC_DATASETS",
    "default_root",
    "prepare_synthetic_dataset",
    "register_synthetic_datasets",
]

DEFAULT_ROOT_ENV = "MS_RCNN_DATASETS"

# name -> generation arguments. Every split has its own seed, so val never repeats train. The
# "_poly" twins hold the same images with polygon masks (for INPUT.MASK_FORMAT "polygon", the
# Detectron2 default); the others hold RLE masks (use INPUT.MASK_FORMAT "bitmask").
_SPLITS = {
    "train": {"num_images": 1000, "seed": 1},
    "val": {"num_images": 200, "seed": 2},
    "tiny_train": {"num_images": 16, "seed": 3},
    "tiny_val": {"num_images": 16, "seed": 4},
}
SYNTHETIC_DATASETS = {
    **{f"synthetic_shapes_{s}": {**a, "mask_format": "rle"} for s, a in _SPLITS.items()},
    **{f"synthetic_shapes_poly_{s}": {**a, "mask_format": "polygon"} for s, a in _SPLITS.items()},
}

# Must match shapes.CLASS_NAMES; repeated here so registration needs no generator import
# (tests check that the two agree).
_THING_CLASSES = ["ellipse", "ring", "crescent", "star", "cross", "zigzag"]

# name -> (root, generation arguments) of what this process registered.
_registered: dict[str, tuple[str, dict]] = {}


def default_root() -> str:
    """``$MS_RCNN_DATASETS`` if set, else ``./datasets``, as an absolute path."""
    return os.path.abspath(os.environ.get(DEFAULT_ROOT_ENV) or "datasets")


def prepare_synthetic_dataset(name: str) -> str:
    """Generate registered dataset `name` now if needed; return its JSON path.

    `DatasetCatalog.get` does this implicitly. Call it before building a `COCOEvaluator` for a
    dataset that has not been loaded yet, since the evaluator opens the JSON file directly.
    """
    from .synthetic import generate_synthetic_dataset

    root, args = _registered[name]
    return generate_synthetic_dataset(root, name, **args)


def _load(name: str) -> list[dict]:
    from .coco_checks import load_coco_json_checked

    json_file = prepare_synthetic_dataset(name)
    image_root = os.path.join(os.path.dirname(json_file), "images")
    return load_coco_json_checked(json_file, image_root, name)


def register_synthetic_datasets(root: str | None = None, force: bool = False) -> list[str]:
    """Register every name in `SYNTHETIC_DATASETS` with Detectron2 (lazily generated).

    Args:
        root: directory holding the datasets; default `default_root()`. Dataset ``name`` lives
            in ``root/name``.
        force: re-register names that are already registered (e.g. to point them at another
            root). Without it, already registered names are left alone.

    Returns:
        The names registered by this call.
    """
    root = os.path.abspath(root) if root is not None else default_root()
    done = []
    for name, args in SYNTHETIC_DATASETS.items():
        if name in DatasetCatalog.list():
            if not force:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        base = os.path.join(root, name)
        _registered[name] = (root, dict(args))
        # Bind `name` now; a plain closure would see the loop's last value.
        DatasetCatalog.register(name, lambda name=name: _load(name))
        MetadataCatalog.get(name).set(
            thing_classes=list(_THING_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(_THING_CLASSES))},
            json_file=os.path.join(base, "annotations.json"),
            image_root=os.path.join(base, "images"),
            evaluator_type="coco",
            mask_format=args["mask_format"],
        )
        done.append(name)
    return done
