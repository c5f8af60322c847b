"""Check a converted checkpoint against the model its config builds: names, shapes, values."""

import os
from typing import Dict, List, Optional

import torch

from .common import ConversionError

__all__ = ["config_from_file", "build_model_from_config", "check_fits", "check_loads_exactly"]


def config_from_file(config_file: str, opts: Optional[List[str]] = None):
    """The ms-rcnn config of `config_file` (+ `opts`), on the CPU, without weights."""
    from detectron2.config import get_cfg

    from ..config import add_ms_rcnn_config

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config {config_file}: no such file (run from the repository)")
    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    return cfg


def build_model_from_config(config_file: str, opts: Optional[List[str]] = None):
    """The ms-rcnn model of `config_file` (+ `opts`), on the CPU, randomly initialized."""
    from detectron2.modeling import build_model

    return build_model(config_from_file(config_file, opts))


def check_fits(state: Dict[str, torch.Tensor], model, what: str = "converted checkpoint") -> None:
    """Every model tensor present in `state` with its shape, and nothing else; else an error
    listing the tensors the conversion did not fill, the extra ones and the wrong shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"model tensors it does not fill ({len(missing)}): {', '.join(missing)}")
    if extra:
        problems.append(f"tensors the model does not have ({len(extra)}): {', '.join(extra)}")
    if shapes:
        problems.append(f"tensors of another shape ({len(shapes)}): {', '.join(shapes)}")
    if problems:
        raise ConversionError(f"{what} does not fit the model: " + "; ".join(problems))


def check_loads_exactly(path: str, model, cfg=None) -> None:
    """Load `path` as training and evaluation do (MSRCNNCheckpointer, strict; with `cfg`, the
    config keys it records checked against it too), then check that every model tensor equals
    the file's: no loader step changed or skipped any of them."""
    from ..checkpoint import MSRCNNCheckpointer

    MSRCNNCheckpointer(model, strict=True, config=cfg).load(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, saved[k])]
    if changed:
        raise ConversionError(f"{path}: the loader changed {', '.join(changed)}")
