"""Synthetic instance-segmentation data for ms-rcnn demos and tests.

Importing this package registers the synthetic datasets (see `SYNTHETIC_DATASETS`) with
Detectron2 under ``$MS_RCNN_DATASETS`` (default ``./datasets``), so configs can name them, e.g.
``DATASETS.TRAIN: ("synthetic_shapes_train",)``. Nothing is generated until a dataset is first
loaded. The generator itself (numpy, Pillow, pycocotools) is imported on first use too.
"""

from __future__ import annotations

import importlib

from .registry import (
    SYNTHETIC_DATASETS,
    default_root,
    prepare_synthetic_dataset,
    register_synthetic_datasets,
)

# Public names served lazily from submodules, so `import ms_rcnn.data` stays cheap.
_LAZY = {
    "CLASS_NAMES": "shapes",
    "GENERATOR_VERSION": "synthetic",
    "dataset_paths": "synthetic",
    "generate_synthetic_dataset": "synthetic",
    "generation_params": "synthetic",
    "load_coco_json_checked": "coco_checks",
    "register_coco_instances_checked": "coco_checks",
    "mask_to_polygons": "masks",
    "polygons_to_mask": "masks",
    "render_preview": "preview",
}

__all__ = [
    "SYNTHETIC_DATASETS",
    "default_root",
    "prepare_synthetic_dataset",
    "register_synthetic_datasets",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_synthetic_datasets()
