"""The config keys a checkpoint's weights need, recorded in the checkpoint and checked at load.

Some config keys change what the weights compute without changing any tensor's shape: the
pixel mean and std and the channel order the first layer was trained on, the anchors the RPN's
deltas refer to, how RoIAlign samples (aligned or not, sampling ratio), the box-delta weights,
where ResNet strides, whether the predicted IoU is clamped. Weights loaded under other values
load strictly and lose AP without a word (maskrcnn-benchmark weights in
`ms_rcnn_R_50_FPN_1x.yaml`). So checkpoints written by the converters and by training record
those keys (`weights_config`), and `MSRCNNCheckpointer` compares them with the config it loads
into (`check_weights_config`), as `MODEL.WEIGHTS_CONFIG_CHECK` says:

- "error" (default): an error where weights are loaded for inference (--eval-only, predict,
  `MSRCNNPredictor`), a warning when training starts from them (fine-tuning may change these
  keys on purpose);
- "warn": a warning everywhere (to load such weights on purpose, e.g. to measure the loss);
- "off": no check.

A checkpoint without the record (Detectron2's model zoo, ms-rcnn before it recorded them) loads
as before, with a log line saying it could not be checked.
"""

import logging
import math
from typing import Optional

from .config import uses_mask_scoring

__all__ = ["RECORD_KEY", "CHECKED_KEYS", "CHECK_MODES", "weights_config", "check_weights_config"]

logger = logging.getLogger(__name__)

RECORD_KEY = "weights_config"  # in the checkpoint dict, next to "model"
CHECK_MODES = ("error", "warn", "off")
CHECKED_KEYS = (
    "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
    "INPUT.FORMAT",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.ANCHOR_GENERATOR.NAME",
    "MODEL.ANCHOR_GENERATOR.SIZES",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "MODEL.ANCHOR_GENERATOR.OFFSET",
    "MODEL.RPN.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO",
)
# Only for ROI heads that score masks (a Mask R-CNN has no predicted IoU to clamp).
MASK_SCORING_KEYS = ("MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION",)


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return _plain(node)


def _plain(value):
    """YAML-safe plain data (tuples become lists), as torch.load(weights_only=True) reads."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def weights_config(cfg, config_file: str) -> dict:
    """The record to store in a checkpoint whose weights were made under `cfg`.

    Args:
        cfg: the config the weights were trained (or converted) for.
        config_file: the config to name when they are loaded under other values (a training
            run's OUTPUT_DIR/config.yaml, a converter's config).
    """
    keys = CHECKED_KEYS + (MASK_SCORING_KEYS if uses_mask_scoring(cfg) else ())
    values = {key: _get(cfg, key) for key in keys}
    return {"config_file": config_file, "keys": {k: v for k, v in values.items() if v is not None}}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def check_weights_config(cfg, record: Optional[dict], path: str, *, inference: bool) -> None:
    """Compare a checkpoint's record (`weights_config`) with `cfg`, as
    `cfg.MODEL.WEIGHTS_CONFIG_CHECK` says (see the module docstring).

    Args:
        cfg: the config the weights are being loaded into.
        record: the checkpoint's record, or None for a checkpoint without one.
        path: the checkpoint, for the messages.
        inference: the weights are loaded to evaluate or predict (an error in mode "error").

    Raises:
        ValueError: in mode "error" for inference, naming each key that differs with both
            values, the config to use and the override; or for an unknown mode.
    """
    mode = cfg.MODEL.get("WEIGHTS_CONFIG_CHECK", "error")
    if mode not in CHECK_MODES:
        raise ValueError(f"MODEL.WEIGHTS_CONFIG_CHECK must be one of {CHECK_MODES}, got {mode!r}")
    if mode == "off":
        return
    if not record or not isinstance(record.get("keys"), dict):
        logger.info(
            f"Checkpoint {path} records no config keys (written by Detectron2 or an older "
            "ms-rcnn): its pixel mean/std, input format, anchors and RoIAlign settings are not "
            "checked against the config."
        )
        return
    current = {key: _get(cfg, key) for key in record["keys"]}
    differences = [
        f"{key} is {stored} in the checkpoint, {current[key]} in the config"
        for key, stored in record["keys"].items()
        if current[key] is not None and not _same(stored, current[key])
    ]
    if not differences:
        return
    message = (
        f"Checkpoint {path} was made for other values of config keys that change what its "
        f"weights compute (AP drops without any other error): {'; '.join(differences)}. Use "
        f"the config it was made with, {record.get('config_file') or '(not recorded)'}, or "
        "set these keys to the checkpoint's values."
    )
    if mode == "error" and inference:
        raise ValueError(
            message + " To load it as it is on purpose, add `MODEL.WEIGHTS_CONFIG_CHECK warn` "
            "to the config overrides."
        )
    logger.warning(message)
