"""Which ms-rcnn and which Detectron2 this process runs: the one answer behind every command's
`--version`, the training log's first lines and bug reports.

Detectron2 comes in several builds that behave differently (compiled COCOeval, deformable
convolution, rotated boxes exist only with the compiled `detectron2._C`); a report that says
only "0.6" cannot tell them apart.
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Dict, Optional
from urllib.parse import unquote, urlparse

__all__ = ["add_version_argument", "detectron2_build", "detectron2_line", "version_text"]

# PyPI's pb1-detectron2 0.6 (the sdist `make setup` falls back to) is upstream's v0.6 tag,
# byte for byte in its detectron2/ package; builds made before the installer wrote a
# `_ms_rcnn_build.py` marker are recognized by the distribution name alone.
SDIST_DISTRIBUTION = "pb1-detectron2"
V06_COMMIT = "d1e04565d3bec8719335b88be9e9b961bf3ec464"


def _git_commit(folder: str) -> Optional[str]:
    """The commit of the git checkout holding `folder`, if it is one (an editable install)."""
    if not os.path.exists(os.path.join(folder, ".git")):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _distribution(path: str):
    """The installed distribution that provides the Detectron2 package at `path`, or None."""
    names = importlib.metadata.packages_distributions().get("detectron2", [])
    for name in dict.fromkeys([*names, "detectron2", SDIST_DISTRIBUTION]):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        # An editable install records its tree's URL and lists no package files; a regular one
        # lists detectron2/__init__.py.
        if direct.get("dir_info", {}).get("editable"):
            tree = unquote(urlparse(direct.get("url", "")).path)
            if os.path.realpath(tree) == os.path.realpath(os.path.dirname(path)):
                return dist, True
            continue
        for file in dist.files or []:
            if str(file) == "detectron2/__init__.py":
                where = os.path.dirname(str(dist.locate_file(file)))
                if os.path.realpath(where) == os.path.realpath(path):
                    return dist, False
    return None, False


def _build_marker() -> Dict:
    """What ms-rcnn's installer recorded in the build (`detectron2/_ms_rcnn_build.py`), if it
    built this one."""
    try:
        return dict(importlib.import_module("detectron2._ms_rcnn_build").BUILD)
    except (ImportError, AttributeError):
        return {}


def detectron2_build() -> Dict[str, Optional[str]]:
    """Facts about the importable Detectron2, each a string (or None when unknown):

    - ``version``, ``path`` (the package folder);
    - ``install``: "source checkout" when the package lives in a folder with Detectron2's
      setup.py beside it (an editable or in-place install), else "site-packages";
    - ``editable``: "yes" for a pip editable install, "no" for another pip install, None when
      no installed distribution provides it (a tree put on sys.path by hand);
    - ``distribution``: the pip distribution that installed it ("detectron2", or
      "pb1-detectron2" for PyPI's v0.6 sdist that `make setup` falls back to);
    - ``commit``: the checkout's git commit, else the one ms-rcnn's installer recorded (a
      tarball or a copy has no .git), else v0.6's for the PyPI sdist;
    - ``ref``: "main" or "v0.6" when the installer knew it;
    - ``source``: what ms-rcnn's installer built it from (a folder, tarball, clone or PyPI);
      None for a Detectron2 it did not build;
    - ``ops``: "compiled" (the real `detectron2._C`), "stand-in" (ms-rcnn's pure-Python
      replacement, built without a compiler), or "missing";
    - ``cuda_ops``: "yes"/"no" (whether the compiled `_C` was built with CUDA; "no" for the
      stand-in);
    - ``fingerprint``: the fixes ms-rcnn's installer applied, when it built this one.
    """
    import detectron2

    path = os.path.dirname(os.path.abspath(detectron2.__file__))
    root = os.path.dirname(path)
    source = os.path.isfile(os.path.join(root, "setup.py"))
    dist, editable = _distribution(path)
    marker = _build_marker()
    info = {
        "version": getattr(detectron2, "__version__", None),
        "path": path,
        "install": "source checkout" if source else "site-packages",
        "editable": None if dist is None else ("yes" if editable else "no"),
        "distribution": None if dist is None else dist.metadata["Name"],
        "commit": (_git_commit(root) if source else None) or marker.get("commit"),
        "ref": marker.get("ref"),
        "source": marker.get("source"),
        "ops": "missing",
        "cuda_ops": None,
        "fingerprint": marker.get("fingerprint"),
    }
    if info["distribution"] == SDIST_DISTRIBUTION:
        info["commit"] = info["commit"] or V06_COMMIT
        info["ref"] = info["ref"] or "v0.6"
        info["source"] = info["source"] or "PyPI pb1-detectron2 (v0.6 without its C++ sources)"
    try:
        ops = importlib.import_module("detectron2._C")
    except ImportError:
        return info
    if getattr(ops, "PURE_PYTHON_STANDIN", False):
        info["ops"] = "stand-in"
        info["cuda_ops"] = "no"
    else:
        info["ops"] = "compiled"
        has_cuda = getattr(ops, "has_cuda", None)
        info["cuda_ops"] = ("yes" if has_cuda() else "no") if callable(has_cuda) else None
    return info


def detectron2_line(d2: Optional[Dict] = None) -> str:
    """One line: Detectron2's version, commit, ops (compiled CPU/CUDA or stand-in), install."""
    try:
        d2 = d2 or detectron2_build()
    except ImportError:
        return "detectron2: not importable"
    ops = {
        "compiled": "compiled ops",
        "stand-in": "no compiled ops (ms-rcnn's pure-Python stand-in)",
    }.get(d2["ops"], "no _C extension")
    if d2["ops"] == "compiled":
        ops += {"yes": " (CPU and CUDA)", "no": " (CPU only)"}.get(d2["cuda_ops"], "")
    version = f"detectron2 {d2['version']}"
    if d2["commit"]:
        version += f" at commit {d2['commit'][:12]}" + (f" ({d2['ref']})" if d2["ref"] else "")
    how = {"yes": "editable install", "no": "pip install"}.get(d2["editable"], "not pip-installed")
    where = f"{how}, {d2['install']} {d2['path']}"
    return f"{version}: {ops}; {where}"


def version_text() -> str:
    """Lines for `--version`: ms-rcnn's version, Detectron2's build, torch and CUDA."""
    from .version import __version__

    lines = [f"ms-rcnn {__version__} (Python {sys.version.split()[0]})", detectron2_line()]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    except ImportError:  # pragma: no cover - Detectron2 imports torch
        pass
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """`--version`: print `version_text()` and exit. Computed when asked, so `--help` and
    ordinary runs do not probe the Detectron2 build."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw):
        kw.setdefault("help", "print ms-rcnn's and Detectron2's versions and build, then exit")
        super().__init__(option_strings, dest=dest, default=default, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def add_version_argument(parser: "argparse.ArgumentParser") -> "argparse.ArgumentParser":
    """Give a command's parser the `--version` every ms-rcnn command has."""
    parser.add_argument("--version", action=_VersionAction)
    return parser
