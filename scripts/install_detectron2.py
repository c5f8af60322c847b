#!/usr/bin/env python
"""Install Detectron2 into the running Python environment, without a C++ build.

Detectron2 publishes nothing on PyPI. This script, run by `make setup`:

1. installs the libraries Detectron2 imports only where it needs them and does not declare:
   OpenCV (`Visualizer`, `detectron2.projects.point_rend`, rotation augmentation) as
   `opencv-python-headless`, unless some OpenCV already imports, and shapely (polygon crops);
   fvcore is brought to the range in constraints.txt;
2. keeps an already working Detectron2 (for example one built from an upstream git checkout),
   unless it is a fallback built by an older version of this script (see FALLBACK_FINGERPRINT);
3. otherwise downloads PyPI's `pb1-detectron2` sdist (upstream v0.6's Python package without
   `detectron2/layers/csrc/`), checks its sha256, and builds it with these changes:
   - no compiled extension; `detectron2/_C.py` stands in for it. It answers the version queries
     of `collect_env` and raises an error naming the missing op for anything else. Mask R-CNN on
     axis-aligned boxes never calls `_C` (it uses torchvision's roi_align and nms);
   - the model-zoo configs installed as package data (the sdist's setup.py looks for them where
     the sdist does not have them);
   - COMPAT_FIXES: the v0.6 lines that fail on today's Python, NumPy, Pillow, setuptools and
     torch, each fixed the way upstream main fixed it (or, where main has not, said so).

With `--source PATH`, it builds that Detectron2 checkout (e.g. upstream main) the same way:
no compiled ops, and the fixes the checkout still needs (see `patch_checkout`).

A smoke test checks the result, or an already installed Detectron2: Detectron2's core, its
model zoo, COCO evaluation, then ms-rcnn's configs and evaluator from this checkout. A failure
names the step and says what to do.

Usage: python scripts/install_detectron2.py [--force] [--source PATH]
"""

import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
SDIST_NAME = "pb1-detectron2"

# The source-tree changes live next to this script (scripts/ is on sys.path when it runs as a
# script; added here for the tests, which load it by file path).
if str(pathlib.Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from detectron2_patches import (  # noqa: E402
    FALLBACK_FINGERPRINT,
    SDIST_SHA256,
    patch_checkout,
    patch_source,
)

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
    try:
        ms_rcnn.merge_config_file(cfg, path)  # adds PointRend's keys where the config uses it
    except ImportError as e:
        # PointRend is optional: a Detectron2 without detectron2.projects (a non-editable build of
        # main) runs everything else; its configs say how to get it when they are used.
        if "uses PointRend" not in str(e):
            raise
        print("SMOKE-WARNING", path, "skipped:", e, flush=True)
from ms_rcnn.model_zoo.upstream import UpstreamConfigUnavailable
for path in sorted(glob.glob(os.path.join(root, "configs", "lazy", "*.py"))):
    step("project-lazy", path)
    try:
        LazyConfig.load(path)
    except UpstreamConfigUnavailable as e:
        # A config on a Detectron2 recipe this build lacks (ViTDet on v0.6) or cannot find (a
        # project's config without $DETECTRON2_SRC) says so when it is used; the rest runs.
        print("SMOKE-WARNING", path, "skipped:", e, flush=True)

print("detectron2", detectron2.__version__, "at", detectron2.__file__)
"""

# Run in the target interpreter: is the importable Detectron2 our fallback build (its `_C.py`
# stand-in installed by the pb1-detectron2 distribution), and which fingerprint does it carry?
# A Detectron2 installed any other way (an upstream checkout, a wheel) is never "ours". Reads
# the files without importing Detectron2 (and torch): a second at most.
FALLBACK_PROBE = f"""
import importlib.metadata, importlib.util, json, os, re
out = {{"fallback": False, "fingerprint": None}}
spec = importlib.util.find_spec("detectron2")
stand_in = os.path.join(list(spec.submodule_search_locations or [""])[0], "_C.py") if spec else ""
try:
    dist = importlib.metadata.distribution({SDIST_NAME!r})
except importlib.metadata.PackageNotFoundError:
    dist = None
if dist is not None and os.path.isfile(stand_in):
    text = open(stand_in).read()
    if re.search(r"^PURE_PYTHON_STANDIN = True", text, re.M):
        ours = os.path.realpath(str(dist.locate_file("detectron2/_C.py")))
        out["fallback"] = ours == os.path.realpath(stand_in)
        found = re.search(r"^FALLBACK_FINGERPRINT = '(\\w+)'", text, re.M)
        out["fingerprint"] = found and found.group(1)
print(json.dumps(out))
"""

# Detectron2 imports these lazily, where it needs them, and does not declare them. Module name
# -> the package installed (with its constraints.txt pin) when the module does not import. A
# user's own OpenCV build (opencv-python, opencv-contrib-python) is kept: a second OpenCV
# package would overwrite its cv2.
OPTIONAL_DEPENDENCIES = {"cv2": "opencv-python-headless", "shapely": "shapely"}

# Detectron2 features that need the dependencies above; checked after installing.
FEATURES_TEST = """
import numpy as np
from detectron2.utils.visualizer import Visualizer
import detectron2.projects.point_rend
from detectron2.data.transforms import CropTransform
# A U whose two arms the crop separates: a multi-part intersection (fvcore + shapely 2).
u_shape = np.array([[0, 0], [6, 0], [6, 6], [4, 6], [4, 2], [2, 2], [2, 6], [0, 6]], float)
assert len(CropTransform(0, 3, 6, 3).apply_polygons([u_shape])) == 2
"""


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


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


def stale_fallback():
    """True if the installed Detectron2 is a fallback built with other fixes than this script's."""
    proc = run_python(FALLBACK_PROBE)
    if proc.returncode != 0:
        raise SystemExit("could not inspect the installed Detectron2:\n" + proc.stderr[-2000:])
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    if probe["fallback"] and probe["fingerprint"] != FALLBACK_FINGERPRINT:
        log(
            f"the installed {SDIST_NAME} fallback was built by an older version of this script "
            f"(fingerprint {probe['fingerprint']}, now {FALLBACK_FINGERPRINT}); rebuilding it"
        )
        return True
    return False


def install_dependencies():
    missing = [
        package
        for module, package in OPTIONAL_DEPENDENCIES.items()
        if run_python(f"import {module}").returncode != 0
    ]
    # fvcore too: a kept Detectron2 may sit beside an fvcore older than constraints.txt allows.
    pip("install", "-c", str(CONSTRAINTS), "fvcore", *missing)


def check_features():
    """Visualizer, PointRend and polygon crops work; a failure is fatal only for our build."""
    proc = run_python(FEATURES_TEST)
    if proc.returncode == 0:
        return
    msg = "Detectron2's Visualizer, PointRend or polygon crop fails:\n" + proc.stderr[-2000:]
    if json.loads(run_python(FALLBACK_PROBE).stdout)["fallback"]:
        raise SystemExit(msg)
    log("warning (your own Detectron2 build is kept as it is): " + msg)


def pinned_version():
    for line in CONSTRAINTS.read_text().splitlines():
        if line.startswith(SDIST_NAME + "=="):
            return line.split("==", 1)[1].strip()
    raise SystemExit(f"{CONSTRAINTS} has no '{SDIST_NAME}==' pin")


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


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
        log("patched checkout: " + ", ".join(patch_checkout(src)))
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
        log("patched: " + ", ".join(patch_source(src)))
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
    install_dependencies()
    if args.source:
        install_checkout(args.source)
    elif args.force or stale_fallback() or not working_detectron2():
        build_and_install()
    working_detectron2(just_installed=True)
    check_features()


if __name__ == "__main__":
    main()
