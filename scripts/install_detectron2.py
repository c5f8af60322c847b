#!/usr/bin/env python
"""Install Detectron2 into the running Python environment, without a C++ build.

Detectron2 publishes nothing on PyPI. This script, run by `make setup`:

1. keeps an already working Detectron2 (for example one built from an upstream git checkout);
2. otherwise downloads PyPI's `pb1-detectron2` sdist (upstream v0.6's Python package without
   `detectron2/layers/csrc/`), checks its sha256, and builds it with these changes:
   - no compiled extension; `detectron2/_C.py` stands in for it. It answers the version queries
     of `collect_env` and raises an error naming the missing op for anything else. Mask R-CNN on
     axis-aligned boxes never calls `_C` (it uses torchvision's roi_align and nms);
   - the v0.6 lines that fail on today's libraries, fixed the way upstream main fixed them:
     `np.bool`/`np.int`/`np.float`/`np.str` (removed in NumPy 1.24) become the builtins,
     `Image.LINEAR` (removed in Pillow 10) becomes `Image.BILINEAR`, the model-zoo configs are
     installed as package data, the `black==21.4b2` pin (which no longer imports with
     current click) is relaxed as upstream did, and `detectron2.export` imports caffe2 (gone
     from torch 2) only if it is there, so TracingAdapter and FlopCountAnalysis import;
   - `pkg_resources` (gone with setuptools >= 81) no longer used to find model-zoo configs.
     Upstream main has not fixed this (it still imports it as of 02b5c4e2).

With `--source PATH`, it builds that Detectron2 checkout (e.g. upstream main) the same way:
no compiled ops, and the fixes the checkout still needs (see `patch_checkout`).

A smoke test checks the result, or an already installed Detectron2: Detectron2's core, its
model zoo, COCO evaluation, then ms-rcnn's configs and evaluator from this checkout. A failure
names the step and says what to do.

Usage: python scripts/install_detectron2.py [--force] [--source PATH]
"""

import argparse
import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
SDIST_NAME = "pb1-detectron2"
# sha256 of pb1-detectron2-0.6.tar.gz: the patches below were written against these bytes.
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Imports and calls that must work for ms-rcnn, in steps: Detectron2's core (models, data
# pipeline, polygon masks), its model zoo, COCO evaluation, then ms-rcnn's own configs and
# evaluator, imported from this checkout (the script runs before `make setup` installs ms-rcnn).
# Each step prints a "SMOKE-STEP" line first, so a failure can be told apart and explained.
SMOKE_TEST = """
import glob, os, sys, tempfile
def step(name, detail=""):
    print("SMOKE-STEP", name, detail, flush=True)

step("core")
import numpy as np, torch
import detectron2, detectron2.modeling, detectron2.data.transforms
from detectron2.export import TracingAdapter  # needs the optional-caffe2 patch on torch 2
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.structures import PolygonMasks
from detectron2.utils.collect_env import collect_env_info
poly = PolygonMasks([[np.array([0, 0, 8, 0, 8, 8, 0, 8], dtype=np.float64)]])
m = poly.crop_and_resize(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 4)
assert m.dtype == torch.bool and m[0, 0, 0] and not m[0, 3, 3], m
collect_env_info()

step("model_zoo")
from detectron2 import model_zoo
model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
model_zoo.get_config("common/models/mask_rcnn_fpn.py")

step("evaluator")
from detectron2.evaluation import COCOEvaluator

root = sys.argv[1]
sys.path.insert(0, root)
step("project-import", root)
from detectron2.config import LazyConfig, get_cfg
import ms_rcnn
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

step("project-evaluator")  # one image, its ground truth predicted back: segm AP must be 100
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances, Boxes
box = [4.0, 4.0, 20.0, 20.0]
record = {"file_name": "x.png", "image_id": 1, "height": 32, "width": 32, "annotations": [
    {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
     "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]], "iscrowd": 0}]}
DatasetCatalog.register("ms_rcnn_smoke", lambda: [record])
MetadataCatalog.get("ms_rcnn_smoke").thing_classes = ["square"]
with tempfile.TemporaryDirectory() as out:
    evaluator = MaskScoringCOCOEvaluator("ms_rcnn_smoke", ("bbox", "segm"), False, out)
    pred = Instances((32, 32), pred_boxes=Boxes(torch.tensor([box])), scores=torch.tensor([0.9]),
                     pred_classes=torch.tensor([0]), mask_scores=torch.tensor([0.8]))
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 4:20, 4:20] = True
    pred.pred_masks = mask
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": pred}])
    segm_ap = evaluator.evaluate()["segm"]["AP"]
    assert segm_ap > 99, f"segm AP {segm_ap} for a perfect prediction"

for path in sorted(glob.glob(os.path.join(root, "configs", "**", "*.yaml"), recursive=True)):
    step("project-yaml", path)
    cfg = get_cfg()
    ms_rcnn.add_ms_rcnn_config(cfg)
    cfg.merge_from_file(path)
for path in sorted(glob.glob(os.path.join(root, "configs", "lazy", "*.py"))):
    step("project-lazy", path)
    LazyConfig.load(path)

print("detectron2", detectron2.__version__, "at", detectron2.__file__)
"""

C_STANDIN = '''"""Stand-in for Detectron2's compiled ops (written by ms-rcnn's installer).

This Detectron2 was built without its C++/CUDA extension. Mask R-CNN and MS R-CNN on
axis-aligned boxes do not need it; deformable convolution, rotated boxes and the fast COCO
evaluator do. Use COCOEvaluator(..., use_fast_impl=False), or build Detectron2 from an upstream
git checkout to get them.
"""

PURE_PYTHON_STANDIN = True


def get_compiler_version():
    return "none (detectron2 built without compiled ops)"


def get_cuda_version():
    return "none (detectron2 built without compiled ops)"


def has_cuda():
    return False


class MissingCompiledOpError(AttributeError):
    pass


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOpError(
        f"detectron2._C.{name} is a compiled op, and this Detectron2 was installed without "
        "compiled ops (ms-rcnn's pure-Python build). Avoid the feature that needs it "
        "(deformable conv, rotated boxes, COCOEvaluator(use_fast_impl=True)) or install "
        "Detectron2 from an upstream git checkout."
    )
'''

NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?!_)")

MODEL_ZOO_OLD = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
MODEL_ZOO_NEW = """    cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)"""

# setup.py lines that build the C++/CUDA extension, in v0.6 and in upstream main alike.
SETUP_NO_EXTENSION = [
    ("    ext_modules=get_extensions(),\n", ""),
    ('    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n', ""),
]

SETUP_REPLACEMENTS = [
    *SETUP_NO_EXTENSION,
    ('"black==21.4b2"', '"black"'),
    (
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()}',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}',
    ),
]


EXPORT_OPTIONAL_CAFFE2 = """try:
    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401  (only for caffe2 export)
except ImportError:
    pass
else:
    from .api import *
"""


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def run_smoke_test(root=ROOT, env=None):
    """Run SMOKE_TEST in a fresh interpreter, with ms-rcnn's checkout `root`: (None, version
    line, "") if it passes, else (the failed step, its detail, stderr)."""
    cmd = [sys.executable, "-c", SMOKE_TEST, str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return None, proc.stdout.strip().splitlines()[-1], ""
    steps = [
        line.split(" ", 2)[1:] for line in proc.stdout.splitlines() if line.startswith("SMOKE-STEP")
    ]
    step, detail = (steps[-1] + [""])[:2] if steps else ("core", "")
    return step, detail.strip(), proc.stderr


def what_to_do(step, detail, error):
    """What the user can do about a failed smoke-test step (printed with the error)."""
    if "No module named 'pkg_resources'" in error:
        return (
            "Detectron2's model_zoo imports pkg_resources, which setuptools >= 81 no longer "
            "ships (upstream main still does as of commit 02b5c4e2; LazyConfig configs that use "
            "model_zoo fail with it). Either `pip install 'setuptools<81'`, or reinstall your "
            "Detectron2 checkout with `python scripts/install_detectron2.py --source PATH`, "
            "which removes that import."
        )
    if step == "model_zoo":
        return (
            "Detectron2's model-zoo configs are not where detectron2.model_zoo looks (an "
            "editable install of a checkout needs detectron2/model_zoo/configs). Reinstall it "
            "with `python scripts/install_detectron2.py --source PATH` or `pip install PATH` "
            "(not -e)."
        )
    if step == "evaluator":
        return (
            "Detectron2's COCO evaluation does not import; the error names the missing piece "
            "(usually pycocotools: `pip install 'pycocotools>=2.0.2'`)."
        )
    if step in ("project-yaml", "project-lazy"):
        return (
            f"ms-rcnn's config {detail} does not load with this Detectron2 (a key or module it "
            "uses is missing here). The versions ms-rcnn is tested with are listed in "
            "docs/DETECTRON2_VERSIONS.md; use one of them, or report the error."
        )
    if step.startswith("project"):
        return (
            f"ms-rcnn ({step}) fails with this Detectron2. The versions ms-rcnn is tested with "
            "are listed in docs/DETECTRON2_VERSIONS.md; use one of them, or report the error."
        )
    return (
        "Detectron2 itself does not import or its basic ops fail. Reinstall it: "
        "`python scripts/install_detectron2.py --force` (v0.6 without compiled ops) or "
        "`--source PATH` (a checkout, e.g. upstream main)."
    )


def working_detectron2(just_installed=False):
    """True if this interpreter imports a Detectron2 that passes the smoke test.

    False if there is none, or one whose core is broken (then ours replaces it). A Detectron2
    whose core works but that fails a later step is the user's own choice to keep: stop and
    say what to do instead of replacing it.
    """
    step, detail, error = run_smoke_test()
    if step is None:
        log("found a working " + detail)
        return True
    if step == "core" and not just_installed:
        if "No module named 'detectron2'" not in error:
            log("an installed Detectron2 fails the smoke test; replacing it:\n" + error[-2000:])
        return False
    where = f"{step} {detail}".strip()
    raise SystemExit(
        f"{error[-2500:]}\n[install_detectron2] Detectron2 fails the smoke test at step "
        f"'{where}'.\nWhat to do: {what_to_do(step, detail, error)}"
        + ("" if just_installed else "\n(`--force` replaces it with the v0.6 build instead.)")
    )


def pinned_version():
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith(SDIST_NAME + "=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{CONSTRAINTS} has no '{SDIST_NAME}==' pin")


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def replace_exactly(path, old, new, count=1):
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise SystemExit(f"patch failed: expected {count}x {old!r} in {path}, found {found}")
    path.write_text(text.replace(old, new))


def patch_source(src):
    pkg = src / "detectron2"
    (pkg / "_C.py").write_text(C_STANDIN)
    for old, new in SETUP_REPLACEMENTS:
        replace_exactly(src / "setup.py", old, new)
    replace_exactly(pkg / "data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR")
    # v0.6 imports caffe2 (gone from torch 2) whenever detectron2.export is imported, which
    # TracingAdapter and FlopCountAnalysis need; upstream made that import optional after v0.6.
    replace_exactly(pkg / "export/__init__.py", "from .api import *\n", EXPORT_OPTIONAL_CAFFE2)
    zoo = pkg / "model_zoo/model_zoo.py"
    replace_exactly(zoo, "import pkg_resources\n", "")
    replace_exactly(zoo, MODEL_ZOO_OLD, MODEL_ZOO_NEW)
    patched = 0
    for py in sorted(pkg.rglob("*.py")):
        text = py.read_text()
        new, n = NUMPY_ALIAS.subn(lambda m: m.group(1), text)
        if n:
            py.write_text(new)
            patched += n
    if patched < 10:  # v0.6 has 20 such uses; fewer means the source is not what we expect
        raise SystemExit(f"patch failed: only {patched} removed NumPy aliases found")
    log(
        f"patched: _C stand-in, Pillow, setuptools, model-zoo data, optional caffe2, {patched} "
        "NumPy aliases"
    )


def patch_checkout(src):
    """Prepare an upstream checkout (e.g. main) for a build without compiled ops.

    Main already has the NumPy, Pillow, black and caffe2 fixes; what it still needs is the
    `_C` stand-in, no extension in setup.py, and (as of 02b5c4e2) model_zoo without
    pkg_resources. Each fix is applied only where the checkout still needs it.
    """
    pkg = src / "detectron2"
    if not (pkg / "__init__.py").is_file() or not (src / "setup.py").is_file():
        raise SystemExit(f"{src} is not a Detectron2 checkout (no setup.py or detectron2/)")
    (pkg / "_C.py").write_text(C_STANDIN)
    for old, new in SETUP_NO_EXTENSION:
        replace_exactly(src / "setup.py", old, new)
    fixed = ["_C stand-in", "no extension"]
    zoo = pkg / "model_zoo/model_zoo.py"
    if "import pkg_resources\n" in zoo.read_text():
        replace_exactly(zoo, "import pkg_resources\n", "")
        replace_exactly(zoo, MODEL_ZOO_OLD, MODEL_ZOO_NEW)
        fixed.append("model_zoo without pkg_resources")
    log("patched checkout: " + ", ".join(fixed))


def install_checkout(source):
    """Build and install the Detectron2 checkout at `source` without compiled ops.

    The checkout itself is left untouched: it is copied (without .git and build leftovers)
    and the copy is patched and installed.
    """
    source = pathlib.Path(source).resolve()
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        src = pathlib.Path(tmp) / "detectron2"
        ignore = shutil.ignore_patterns(".git", "build", "*.egg-info", "_C*.so", "__pycache__")
        shutil.copytree(source, src, ignore=ignore, symlinks=True)
        patch_checkout(src)
        pip("install", "--no-build-isolation", "-c", str(CONSTRAINTS), str(src))


def build_and_install():
    version = pinned_version()
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        tmp = pathlib.Path(tmp)
        # --no-build-isolation: pip prepares the sdist's metadata with setup.py, which imports
        # torch; torch is installed in this environment (make setup does it first).
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "-d", str(tmp), f"{SDIST_NAME}=={version}")  # fmt: skip
        (sdist,) = tmp.glob("*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise SystemExit(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = next(p for p in tmp.iterdir() if p.is_dir())
        patch_source(src)
        pip("install", "--no-build-isolation", "-c", str(CONSTRAINTS), str(src))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if one works")
    parser.add_argument(
        "--source",
        metavar="PATH",
        help="build this Detectron2 checkout (e.g. upstream main) without compiled ops, "
        "instead of the pinned v0.6 sdist; always (re)installs",
    )
    args = parser.parse_args()
    if args.source:
        install_checkout(args.source)
    else:
        if not args.force and working_detectron2():
            return
        build_and_install()
    working_detectron2(just_installed=True)


if __name__ == "__main__":
    main()
