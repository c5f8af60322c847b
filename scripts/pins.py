"""The versions pinned in constraints.txt (the one place pins live, each with its reason), as the
setup scripts read them: install_detectron2.py for the Detectron2 sdist, setup_mmdet_env.py for
mmdetection, mmcv and mmengine."""

import re
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pinned(name: str) -> str:
    """The version of constraints.txt's `name==version` line; exits naming the file and the
    package when there is none."""
    match = re.search(rf"^{re.escape(name)}==(\S+)", CONSTRAINTS.read_text(), re.M)
    if not match:
        raise SystemExit(f"{CONSTRAINTS} has no '{name}==' pin")
    return match.group(1)
