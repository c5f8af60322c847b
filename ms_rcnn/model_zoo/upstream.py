"""Detectron2's own LazyConfig recipes, loaded for the configs that build on them.

`get_detectron2_config(name)` is `LazyConfig.load` of one of Detectron2's config files:

- a name below Detectron2's `configs/` ("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py",
  "common/models/mask_rcnn_vitdet.py") comes from the installed Detectron2's model zoo, as
  `detectron2.model_zoo.get_config` finds it;
- a project's config ("projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py") comes from a
  Detectron2 source checkout, which Detectron2 does not install: `$DETECTRON2_SRC` names it
  (the Makefile's variable of the same name: a checkout, or a source tarball such as
  `detectron2-main.tar.gz`, whose `projects/` is unpacked once into a cache folder), else the
  installed Detectron2 itself when it is an editable install of a checkout.

Before loading, it checks that the installed Detectron2 has what the recipe needs (ViTDet's
ViT backbone is newer than Detectron2 v0.6) and raises `Detectron2FeatureMissing`, an
ImportError naming what is missing, rather than the recipe's own import error.
"""

import hashlib
import importlib.util
import os
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple

from .model_zoo import ConfigNotFoundError

__all__ = [
    "CHECKOUT_ENV",
    "Detectron2CheckoutNotFound",
    "Detectron2FeatureMissing",
    "UpstreamConfigUnavailable",
    "detectron2_checkout",
    "get_detectron2_config",
    "get_detectron2_config_file",
]

CHECKOUT_ENV = "DETECTRON2_SRC"
INSTALL_HINT = (
    "install Detectron2 from a checkout of its main branch (git clone "
    "https://github.com/facebookresearch/detectron2; in ms-rcnn: make setup "
    "DETECTRON2_SRC=path/to/detectron2, see docs/INSTALL.md)"
)
_NEWER = "which Detectron2 added after v0.6; the installed {installed} does not have it: " + (
    INSTALL_HINT
)
# (config names starting with this, module they need, why and what to do). Detectron2's version
# string did not change after v0.6 ("0.6" on main too), so what is there is checked instead.
REQUIREMENTS: List[Tuple[str, str, str]] = [
    (
        "projects/ViTDet/",
        "detectron2.modeling.backbone.vit",
        "the ViT backbone (ViT, SimpleFeaturePyramid, get_vit_lr_decay_rate), " + _NEWER,
    ),
    (
        "common/models/mask_rcnn_vitdet.py",
        "detectron2.modeling.backbone.vit",
        "the ViT backbone (ViT, SimpleFeaturePyramid), " + _NEWER,
    ),
    (
        "projects/ViTDet/",
        "timm",
        "timm, whose DropPath and Mlp Detectron2's ViT uses without declaring it: pip install "
        "timm (make setup DETECTRON2_SRC=... installs it)",
    ),
]


class UpstreamConfigUnavailable(Exception):
    """A Detectron2 recipe this installation cannot provide (the two errors below); the
    installer's smoke test skips the configs that raise it, which say why when used."""


class Detectron2FeatureMissing(UpstreamConfigUnavailable, ImportError):
    """The installed Detectron2 lacks what a Detectron2 recipe needs (e.g. v0.6 and ViTDet)."""


class Detectron2CheckoutNotFound(UpstreamConfigUnavailable, ConfigNotFoundError):
    """A project's config (projects/...) with no Detectron2 checkout that has it."""


def _installed_detectron2() -> str:
    import detectron2

    return f"Detectron2 {detectron2.__version__} at {Path(detectron2.__file__).parent}"


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check_requirements(name: str) -> None:
    """Raise Detectron2FeatureMissing if the installed Detectron2 cannot run config `name`."""
    for prefix, module, why in REQUIREMENTS:
        if name.startswith(prefix) and not _module_exists(module):
            why = why.format(installed=_installed_detectron2())
            raise Detectron2FeatureMissing(
                f"Detectron2's config {name} needs module {module}: {why}"
            )


def projects_from_tarball(tarball: Path) -> Path:
    """A folder holding the `projects/` tree of a Detectron2 source tarball (its top folder
    stripped), unpacked once into ms-rcnn's cache ($XDG_CACHE_HOME or ~/.cache) and reused
    while the tarball is the same file (path, size, modification time)."""
    stat = tarball.stat()
    key = hashlib.sha256(f"{tarball}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ms_rcnn"
    root = cache / f"detectron2-src-{key[:16]}"
    if (root / "projects").is_dir():
        return root
    partial = cache / f"{root.name}.partial-{os.getpid()}"
    with tarfile.open(tarball) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            # Only plain files and folders below <top>/projects/: no links, nothing outside.
            below_projects = len(parts) > 2 and parts[1] == "projects" and ".." not in parts
            if below_projects and (member.isfile() or member.isdir()):
                member.name = str(Path(*parts[1:]))
                members.append(member)
        if not members:
            raise Detectron2CheckoutNotFound(
                f"{CHECKOUT_ENV}={tarball}: a tarball without a projects/ folder (not a "
                "Detectron2 source tarball)"
            )
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(partial, members=members, **kwargs)
    try:
        partial.rename(root)
    except OSError:  # another process unpacked it meanwhile
        if not (root / "projects").is_dir():
            raise
    return root


def detectron2_checkout() -> Optional[Path]:
    """The Detectron2 source checkout to read projects' configs from: `$DETECTRON2_SRC` (a
    checkout, or a source tarball: see `projects_from_tarball`), else the checkout the
    installed Detectron2 is imported from (an editable install), else None."""
    if os.environ.get(CHECKOUT_ENV):
        path = Path(os.environ[CHECKOUT_ENV]).expanduser().resolve()
        if path.is_file() and tarfile.is_tarfile(path):
            return projects_from_tarball(path)
        return path
    import detectron2

    root = Path(detectron2.__file__).resolve().parents[1]
    return root if (root / "projects").is_dir() and (root / "setup.py").is_file() else None


def get_detectron2_config_file(name: str) -> str:
    """The path of Detectron2's config `name` (see the module's docstring)."""
    check_requirements(name)
    if name.startswith("projects/"):
        root = detectron2_checkout()
        if root is None:
            raise Detectron2CheckoutNotFound(
                f"Detectron2's {name} is in Detectron2's source tree, which the installed "
                f"{_installed_detectron2()} does not include: set {CHECKOUT_ENV} to a Detectron2 "
                "checkout (the one it was built from), e.g. "
                f"{CHECKOUT_ENV}=path/to/detectron2"
            )
        path = root / name
        if not path.is_file():
            where = (
                f"${CHECKOUT_ENV}={os.environ[CHECKOUT_ENV]}"
                if os.environ.get(CHECKOUT_ENV)
                else "the checkout of the installed Detectron2"
            )
            raise Detectron2CheckoutNotFound(
                f"Detectron2's {name} is not in {root} ({where}): point {CHECKOUT_ENV} at a "
                "Detectron2 checkout that has it (its main branch)"
            )
        return str(path)
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(name)
    except RuntimeError:  # "... not available in Model Zoo!"
        raise ConfigNotFoundError(
            f"Detectron2's config {name} is not in the installed {_installed_detectron2()} "
            f"(detectron2.model_zoo): {INSTALL_HINT}"
        ) from None


def get_detectron2_config(name: str):
    """`LazyConfig.load` of Detectron2's config `name`: a model zoo name such as
    "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", or a project's
    "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py" (from `$DETECTRON2_SRC`).

    Raises Detectron2FeatureMissing (an ImportError) when the installed Detectron2 lacks what
    the config needs, ConfigNotFoundError when the file is not found.
    """
    from detectron2.config import LazyConfig

    path = get_detectron2_config_file(name)
    try:
        return LazyConfig.load(path)
    except ImportError as e:
        if isinstance(e, Detectron2FeatureMissing) or not (e.name or "").startswith("detectron2"):
            raise
        raise Detectron2FeatureMissing(
            f"Detectron2's config {name} ({path}) imports {e.name}, which the installed "
            f"{_installed_detectron2()} lacks ({e}): {INSTALL_HINT}"
        ) from e
