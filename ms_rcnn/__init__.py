"""Mask Scoring R-CNN for Detectron2.

Importing this package registers its heads in Detectron2's registries (`ROI_HEADS_REGISTRY`;
`ANCHOR_GENERATOR_REGISTRY` for maskrcnn-benchmark's anchors) and this package's
`ROI_MASKIOU_HEAD_REGISTRY`. Call `add_ms_rcnn_config(cfg)` after
`get_cfg()` and before `merge_from_file` to add its config keys.
"""

from .version import __version__

try:
    import detectron2  # noqa: F401
except ImportError as e:
    raise ImportError(
        "ms_rcnn needs Detectron2, which is not on PyPI and so is not installed with ms-rcnn. "
        "Run `make setup` in the ms-rcnn repository (it builds Detectron2 v0.6 without compiled "
        "ops), or `python scripts/install_detectron2.py` inside your environment, or install "
        "Detectron2 from an upstream git checkout. See docs/INSTALL.md."
    ) from e

from . import model_zoo, modeling
from .config import add_ms_rcnn_config
from .model_zoo import merge_config_file
from .modeling import *  # noqa: F403  (the model's public names: one list, modeling.__all__)

__all__ = [
    "__version__",
    "model_zoo",
    "add_ms_rcnn_config",
    "merge_config_file",
    *modeling.__all__,
]
