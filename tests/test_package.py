"""The package imports, has one version, and says how to install Detectron2 when it is missing."""

import re
import subprocess
import sys
from pathlib import Path

import ms_rcnn

ROOT = Path(__file__).resolve().parent.parent


def test_version_has_one_source():
    setup_py = (ROOT / "setup.py").read_text()
    assert "__version__" in setup_py  # setup.py reads it from ms_rcnn/version.py, no copy
    assert re.fullmatch(r"\d+\.\d+\.\d+", ms_rcnn.__version__)


def test_public_api_is_exported():
    for name in ["add_ms_rcnn_config", "MaskScoringROIHeads", "MaskIoUHead",
                 "ROI_MASKIOU_HEAD_REGISTRY", "build_maskiou_head", "mask_iou_targets",
                 "mask_iou_loss", "mask_iou_inference"]:  # fmt: skip
        assert hasattr(ms_rcnn, name), name


def test_import_without_detectron2_explains_how_to_install():
    # Hide detectron2 from the import system in a fresh interpreter.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'detectron2' or name.startswith('detectron2.'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n"
        "import ms_rcnn\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "ms_rcnn needs Detectron2" in proc.stderr
    assert "make setup" in proc.stderr
