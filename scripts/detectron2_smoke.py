"""The installer's checks: does this Detectron2 run ms-rcnn (and if not, what to do), and who
built it.

Run in a fresh interpreter (`run_smoke_test`), on the Detectron2 the installer just built or on
one already installed (the user's own): Detectron2's core, its compiled ops when it has them,
its model zoo, COCO evaluation, then ms-rcnn's configs and evaluator from this checkout. A
failure names the step; `what_to_do` turns it into advice, and never changes the user's install.
FALLBACK_PROBE and INSTALLED_PROBE read, without importing it, whether the installed Detectron2
is one the installer built.
"""

import re
import subprocess
import sys

# Imports and calls that must work for ms-rcnn, in steps: Detectron2's core (models, data
# pipeline, polygon masks), its compiled ops, its model zoo, COCO evaluation, then ms-rcnn's own
# configs and evaluator, imported from this checkout (the script runs before `make setup`
# installs ms-rcnn). Each step prints a "SMOKE-STEP" line first, so a failure can be told apart
# and explained.
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

step("ops")  # a compiled _C must really work: one rotated-box IoU, a compiled-only op
try:
    from detectron2 import _C
except ImportError:
    _C = None  # main imports it optionally; then the stand-in questions do not arise
if _C is not None and not getattr(_C, "PURE_PYTHON_STANDIN", False):
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated
    rbox = RotatedBoxes(torch.tensor([[8.0, 8.0, 4.0, 6.0, 30.0]]))
    iou = pairwise_iou_rotated(rbox, rbox).item()
    assert abs(iou - 1.0) < 1e-4, iou

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

from ms_rcnn.env import detectron2_line
print(detectron2_line())
"""

# Detectron2 features that need the optional dependencies the installer adds (OpenCV, shapely);
# checked after installing.
FEATURES_TEST = """
import numpy as np
from detectron2.utils.visualizer import Visualizer
import detectron2.projects.point_rend
from detectron2.data.transforms import CropTransform
# A U whose two arms the crop separates: a multi-part intersection (fvcore + shapely 2).
u_shape = np.array([[0, 0], [6, 0], [6, 6], [4, 6], [4, 2], [2, 2], [2, 6], [0, 6]], float)
assert len(CropTransform(0, 3, 6, 3).apply_polygons([u_shape])) == 2
"""

# Run in the target interpreter: is the importable Detectron2 our fallback build (its `_C.py`
# stand-in installed by the pb1-detectron2 distribution), and which fingerprint does it carry?
# Reads the files without importing Detectron2 (and torch): a second at most.
FALLBACK_PROBE = """
import importlib.metadata, importlib.util, json, os, re
out = {"fallback": False, "fingerprint": None}
spec = importlib.util.find_spec("detectron2")
stand_in = os.path.join(list(spec.submodule_search_locations or [""])[0], "_C.py") if spec else ""
try:
    dist = importlib.metadata.distribution('pb1-detectron2')
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

# Run in the target interpreter: is there a Detectron2, and did this script build it (its
# `_ms_rcnn_build.py` marker, or the `_C.py` stand-in only this script writes)? A Detectron2
# installed any other way (your checkout, a wheel) is never "ours" and is never replaced
# without --force. Also lists the installed distributions that a new build must replace.
INSTALLED_PROBE = """
import importlib.metadata, importlib.util, json, os, re
spec = importlib.util.find_spec("detectron2")
pkg = list(spec.submodule_search_locations or [""])[0] if spec else ""
stand_in = os.path.join(pkg, "_C.py")
marker = os.path.join(pkg, "_ms_rcnn_build.py")
build = {}
if os.path.isfile(marker):  # a dict literal: read without importing Detectron2
    import ast
    build = ast.literal_eval(open(marker).read().split("BUILD = ", 1)[1])
ours = bool(build) or (
    os.path.isfile(stand_in)
    and re.search(r"^PURE_PYTHON_STANDIN = True", open(stand_in).read(), re.M) is not None)
dists = []
for name in ['detectron2', 'pb1-detectron2']:
    try:
        importlib.metadata.distribution(name)
        dists.append(name)
    except importlib.metadata.PackageNotFoundError:
        pass
print(json.dumps({"present": spec is not None, "path": pkg, "ours": bool(ours), "dists": dists,
                  "build": build}))
"""

TRACEBACK_FRAME = re.compile(
    r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in .*\n(?:    (?P<code>.*))?', re.M
)


def run_smoke_test(root, env=None):
    """Run SMOKE_TEST in a fresh interpreter, with ms-rcnn's checkout `root`: (None, build
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


def failing_line(error, module=None):
    """(file, line number, source) of the innermost frame of a Python traceback, or None; with
    `module`, of the innermost `import`/`from` line that names it (import hooks add frames)."""
    frames = list(TRACEBACK_FRAME.finditer(error))
    if module:
        imports = [
            f
            for f in frames
            if re.match(rf"(import|from)\s+{re.escape(module)}\b", (f["code"] or "").strip())
        ]
        frames = imports or frames
    if not frames:
        return None
    last = frames[-1]
    return last["file"], int(last["line"]), (last["code"] or "").strip()


def pkg_resources_advice(error):
    """Detectron2 (main as of 02b5c4e2, or an unpatched v0.6) imports pkg_resources in its
    model_zoo; setuptools >= 81 no longer ships it. Name the line, give both fixes."""
    where = failing_line(error, module="pkg_resources")
    if where:
        file, line, code = where
        at = f"{file}, line {line}" + (f" (`{code}`)" if code else "")
    else:
        file, at = "detectron2/model_zoo/model_zoo.py", "detectron2/model_zoo/model_zoo.py"
    return (
        f"your Detectron2 fails at {at}: it imports pkg_resources, which setuptools >= 81 no "
        "longer ships (upstream main still imports it as of commit 02b5c4e2). Your install was "
        "left as it is. Two fixes:\n"
        "  1. `pip install 'setuptools<81'` in this environment; or\n"
        f"  2. the patch ms-rcnn's own build applies (MODEL_ZOO_FIXES in "
        f"scripts/detectron2_patches.py): in {file} delete `import pkg_resources` and compute "
        "the config path with `cfg_file = os.path.join(os.path.dirname(__file__), "
        '"configs", config_path)` in place of the `pkg_resources.resource_filename(...)` '
        "call; `python scripts/install_detectron2.py --source PATH --force` builds your "
        "checkout with it (a patched copy; the checkout is not changed)."
    )


def what_to_do(step, detail, error):
    """What the user can do about a failed smoke-test step (printed with the error)."""
    if "No module named 'pkg_resources'" in error:
        return pkg_resources_advice(error)
    if step == "ops":
        return (
            "Detectron2's compiled ops (detectron2._C) import but do not work (a rotated-box "
            "IoU failed): the extension was probably built against another torch. Rebuild it "
            "(`make setup DETECTRON2_SRC=path/to/detectron2` or "
            "`python scripts/install_detectron2.py --source PATH --force`), or build without "
            "compiled ops (`--no-ops`)."
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
        "`python scripts/install_detectron2.py --force` (v0.6 without compiled ops, or compiled "
        "from a pinned upstream clone where git and a compiler are there) or `--source PATH` "
        "(a checkout or source tarball, e.g. upstream main)."
    )
