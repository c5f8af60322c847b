"""Finding ms-rcnn's configs by name, and loading them with the keys and heads they need."""

import difflib
import os
from pathlib import Path
from typing import List, Tuple

from ..config import add_ms_rcnn_config, add_project_config

__all__ = [
    "ConfigNotFoundError",
    "configs_root",
    "get_config",
    "get_config_file",
    "list_configs",
    "merge_config_file",
    "resolve_config_file",
    "zoo_config_name",
]

CONFIG_SUFFIXES = (".yaml", ".py")


class ConfigNotFoundError(FileNotFoundError):
    """A config name that is neither a file nor a config of the model zoo."""


def configs_root() -> Path:
    """The folder of the shipped configs: `ms_rcnn/model_zoo/configs` in an installed wheel
    (setup.py copies the repository's `configs/` there at build time), else the `configs/`
    folder of the source checkout this package is imported from (an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigNotFoundError(
        f"ms-rcnn's configs are missing: neither {here / 'configs'} (an installed wheel) nor "
        f"{here.parents[1] / 'configs'} (a source checkout) exists; reinstall ms-rcnn from its "
        "wheel or sdist, or from a checkout with `pip install -e .`"
    )


def list_configs() -> List[str]:
    """Every config's name (its path below the zoo's root, with '/'), sorted."""
    root = configs_root()
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix in CONFIG_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )


def zoo_config_name(name: str) -> str:
    """The zoo name of `name`: also a path as the repository's README writes it
    ("configs/demo/x.yaml", "./configs/...", with "\\" or "/")."""
    name = name.replace("\\", "/").removeprefix("./")
    return name[len("configs/") :] if name.startswith("configs/") else name


def near_matches(name: str, names: List[str], limit: int = 5) -> List[str]:
    """Names that look like `name`: the same file name in another folder first, then close
    spellings of the whole name or of the file name."""
    base = name.rsplit("/", 1)[-1]
    bases = {}
    for n in names:
        bases.setdefault(n.rsplit("/", 1)[-1], []).append(n)
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    for b in difflib.get_close_matches(base, list(bases), n=limit, cutoff=0.6):
        close.extend(bases[b])
    return list(dict.fromkeys(bases.get(base, []) + close))[:limit]  # in order, once each


def get_config_file(name: str) -> str:
    """The path of the zoo's config `name` (e.g. "demo/ms_rcnn_R_18_demo.yaml"). An unknown
    name raises ConfigNotFoundError listing the near matches."""
    root = configs_root()
    rel = zoo_config_name(name)
    path = root / rel
    if rel and path.is_file() and path.suffix in CONFIG_SUFFIXES:
        return str(path)
    names = list_configs()
    matches = near_matches(rel, names)
    hint = (
        "near matches: " + ", ".join(matches)
        if matches
        else f"{len(names)} configs, e.g. {', '.join(names[:3])}"
    )
    raise ConfigNotFoundError(
        f"{name!r} is not a config of ms-rcnn's model zoo ({hint}); "
        "`ms_rcnn.model_zoo.list_configs()` lists them all"
    )


def resolve_config_file(path_or_name: str) -> Tuple[str, str]:
    """(path, what it is) for a `--config-file` value: an existing file is used as it is,
    anything else is looked up in the model zoo. The second item says which, for the log."""
    if not path_or_name:
        raise ConfigNotFoundError(
            "no config given: pass a YAML/LazyConfig file or a model zoo name, "
            "e.g. --config-file demo/ms_rcnn_R_18_demo.yaml"
        )
    if os.path.isfile(path_or_name):
        return path_or_name, f"config file {os.path.abspath(path_or_name)}"
    if os.path.isdir(path_or_name):
        raise ConfigNotFoundError(f"config {path_or_name!r} is a folder, not a config file")
    try:
        path = get_config_file(path_or_name)
    except ConfigNotFoundError as e:
        raise ConfigNotFoundError(f"config {path_or_name!r}: no such file, and {e}") from None
    return path, f"model zoo config {zoo_config_name(path_or_name)} ({path})"


def merge_config_file(cfg, config_file: str):
    """`cfg.merge_from_file` for a path or a zoo name, after adding the keys of the Detectron2
    project the file uses (PointRend's); for a PointRend config it also registers ms-rcnn's
    PointRend ROI heads, so `build_model(cfg)` works. `cfg` should already have ms-rcnn's keys
    (`add_ms_rcnn_config`). Returns `cfg`.

    Raises ConfigNotFoundError (a FileNotFoundError) naming the file, or an ImportError saying
    how to get PointRend when the file needs it and it is not importable.
    """
    path, _ = resolve_config_file(config_file)
    add_project_config(cfg, path)
    if "POINT_HEAD" in cfg.MODEL:
        # Imported here, not at package import: PointRend is optional, and importing it twice
        # under two names (detectron2.projects.point_rend, point_rend) registers its heads twice.
        from ..modeling import pointrend  # noqa: F401  (registers PointRendMaskScoringROIHeads)
    cfg.merge_from_file(path)
    return cfg


def get_config(name: str):
    """The zoo's config `name`, loaded: a YAML config as a CfgNode with ms-rcnn's keys (and
    PointRend's, where it needs them) added and merged; a LazyConfig `.py` as
    `LazyConfig.load` gives it. A path to a config file works too."""
    path, _ = resolve_config_file(name)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.load(path)
    from detectron2.config import get_cfg

    return merge_config_file(add_ms_rcnn_config(get_cfg()), path)
