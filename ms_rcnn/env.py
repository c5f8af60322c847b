"""Which ms-rcnn and which Detectron2 this process runs: the one answer behind every command's
`--version`, the training log's first lines and bug reports.

Detectron2 comes in several builds that behave differently (compiled COCOeval, deformable
convolution, rotated boxes exist only with the compiled `detectron2._C`); a report that says
only "0.6" cannot tell them apart.
"""

import argparse
import importlib
import os
import subprocess
import sys
from typing import Dict, Optional

__all__ = ["add_version_argument", "detectron2_build", "version_text"]


def _git_commit(folder: str) -> Optional[str]:
    """The commit of the git checkout holding `folder`, if it is one (an editable install)."""
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


def detectron2_build() -> Dict[str, Optional[str]]:
    """Facts about the importable Detectron2, each a string (or None when unknown):

    - ``version``, ``path`` (the package folder);
    - ``install``: "source checkout" when the package lives in a folder with Detectron2's
      setup.py beside it (an editable or in-place install), else "site-packages";
    - ``commit``: the checkout's git commit, when it is a git checkout;
    - ``ops``: "compiled" (the real `detectron2._C`), "stand-in" (ms-rcnn's pure-Python
      replacement, built by `make setup` without a compiler), or "missing";
    - ``cuda_ops``: "yes"/"no" for a compiled `_C` (whether it was built with CUDA).
    """
    import detectron2

    path = os.path.dirname(os.path.abspath(detectron2.__file__))
    root = os.path.dirname(path)
    source = os.path.isfile(os.path.join(root, "setup.py"))
    info = {
        "version": getattr(detectron2, "__version__", None),
        "path": path,
        "install": "source checkout" if source else "site-packages",
        "commit": _git_commit(root) if source else None,
        "ops": "missing",
        "cuda_ops": None,
    }
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


def version_text() -> str:
    """Two lines for `--version`: ms-rcnn's version, then Detectron2's build."""
    from .version import __version__

    lines = [f"ms-rcnn {__version__} (Python {sys.version.split()[0]})"]
    try:
        d2 = detectron2_build()
    except ImportError:
        return lines[0] + "\ndetectron2: not importable"
    ops = {"compiled": "compiled ops", "stand-in": "no compiled ops (ms-rcnn's stand-in)"}
    parts = [ops.get(d2["ops"], "no _C extension")]
    if d2["ops"] == "compiled":
        parts.append("CUDA ops" if d2["cuda_ops"] == "yes" else "CPU ops only")
    where = d2["install"] + (f" at commit {d2['commit'][:12]}" if d2["commit"] else "")
    lines.append(f"detectron2 {d2['version']}: {', '.join(parts)}; {where} ({d2['path']})")
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
