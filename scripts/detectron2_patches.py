"""How ms-rcnn's installer changes a Detectron2 source tree before building it.

Data and pure functions only (no pip, no subprocess): the `_C` stand-in written in place of
the compiled extension, the setup.py edits that drop the extension, and COMPAT_FIXES, the v0.6
lines that fail on today's Python, NumPy, Pillow, setuptools and torch, each fixed the way
upstream main fixed it (or, where main has not, said so). `scripts/install_detectron2.py`
applies them: `patch_source` to the pinned v0.6 sdist, `patch_checkout` to an upstream
checkout (v0.6 or main, with its compiled ops or the stand-in). The fingerprint of all of it
is written into the built `_C.py` (sdist) or `_ms_rcnn_build.py` (checkout), so a build made
with other patches can be told apart and rebuilt.
"""

import dataclasses
import hashlib
import re
from typing import Optional

# sha256 of pb1-detectron2-0.6.tar.gz: the patches below were written against these bytes.
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

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
    # The sdist has the model-zoo configs under detectron2/model_zoo/configs/, but its setup.py
    # collects them from a top-level configs/ it lacks (a packaging gap of this sdist only).
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


@dataclasses.dataclass(frozen=True)
class Fix:
    """Replace `old` by `new` in one file of the sdist, exactly `count` times."""

    path: str
    old: str
    new: str
    count: int = 1
    # A checkout needs the fix while this text (default: `old`) is in the file. Not part of the
    # repr, so the sdist fallback's fingerprint does not change with it.
    needed_if: Optional[str] = dataclasses.field(default=None, repr=False, compare=False)

    def apply(self, src):
        replace_exactly(src / self.path, self.old, self.new, self.count)

    def needed(self, src):
        path = src / self.path
        return path.is_file() and (self.needed_if or self.old) in path.read_text()


@dataclasses.dataclass(frozen=True)
class RegexFix:
    """Substitute `pattern` by `repl` in every file matching `glob`; at least `min_count` hits."""

    glob: str
    pattern: re.Pattern
    repl: str
    min_count: int

    def apply(self, src):
        found = 0
        for path in sorted(src.glob(self.glob)):
            text, n = self.pattern.subn(self.repl, path.read_text())
            if n:
                path.write_text(text)
                found += n
        if found < self.min_count:  # fewer means the source is not what the fix was written for
            raise SystemExit(
                f"patch failed: {self.pattern.pattern!r} found {found}x in {self.glob}, "
                f"expected at least {self.min_count}"
            )

    def needed(self, src):
        return any(self.pattern.search(path.read_text()) for path in src.glob(self.glob))


# pkg_resources is gone with setuptools >= 81. Upstream main has NOT fixed this (it still
# imports pkg_resources; open PRs only): find the configs next to the module instead. Needed by
# the v0.6 sdist and by a main checkout alike (see patch_checkout).
MODEL_ZOO_FIXES = (
    Fix("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", ""),
    Fix("detectron2/model_zoo/model_zoo.py", MODEL_ZOO_OLD, MODEL_ZOO_NEW),
)

# v0.6 lines that break on today's libraries. Each comment names what breaks and the upstream
# change the fix mirrors (commit on facebookresearch/detectron2 main), or says main has none.
COMPAT_FIXES = (
    # setup.py pins black==21.4b2 (dev extra), which no longer imports with current click.
    # Upstream: 45b3fcea "upgrade to black 22.3".
    Fix("setup.py", '"black==21.4b2"', '"black"'),
    # Image.LINEAR was removed in Pillow 10 (a default argument: fails at import).
    # Upstream: ff53992b "fix PIL.LINEAR warning".
    Fix("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR"),
    # np.bool/np.int/np.float/np.str/np.object were removed in NumPy 1.24 (every polygon-mask
    # rasterization). Upstream: 857d5de2 "np.bool -> bool", 027099d3, 54dd614e, 654570a2.
    RegexFix("detectron2/**/*.py", NUMPY_ALIAS, r"\1", min_count=10),
    # detectron2.export imports Caffe2 (gone from torch 2) on import, which TracingAdapter and
    # FlopCountAnalysis need. Upstream: d29378aa "deprecate some more caffe2 stuff" (optional).
    Fix(
        "detectron2/export/__init__.py",
        "from .api import *\n",
        EXPORT_OPTIONAL_CAFFE2,
        needed_if="\nfrom .api import *\n",  # at the top level: main imports it in a try/else
    ),
    *MODEL_ZOO_FIXES,
    # Python >= 3.11: random.sample no longer accepts a set, so MapDataset crashes as soon as a
    # mapper returns None (a skipped sample). Upstream: 400a49c1 "random sample from set".
    Fix(
        "detectron2/data/common.py",
        "self._rng.sample(self._fallback_candidates, k=1)",
        "self._rng.sample(list(self._fallback_candidates), k=1)",
    ),
    # torch >= 2: StepLR and the other torch schedulers derive from LRScheduler, no longer from
    # _LRScheduler, so hooks.LRScheduler neither saved nor restored their state and a resumed
    # run restarted the schedule. Upstream: 21080971 "update to use
    # torch.optim.lr_scheduler.LRScheduler" (PR #4709); here the base class is looked up in
    # hooks.py itself rather than re-exported from detectron2.solver.
    Fix(
        "detectron2/engine/hooks.py",
        "from detectron2.solver import LRMultiplier\n",
        "from detectron2.solver import LRMultiplier\n\n"
        "# torch < 2.0 has only the private name\n"
        "_TORCH_LR_SCHEDULER = getattr(\n"
        '    torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler\n'
        ")\n",
        # main keeps this import line and checks the scheduler its own way (the fix below)
        needed_if="isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
    ),
    Fix(
        "detectron2/engine/hooks.py",
        "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
        "isinstance(self.scheduler, _TORCH_LR_SCHEDULER)",
        count=2,
    ),
    # Not patched here: v0.6 relies on fvcore for CropTransform.apply_polygons, which iterated a
    # multi-part shapely geometry directly (an error on shapely 2) until fvcore
    # 0.1.5.post20221213; constraints.txt requires that fvcore. Upstream only changed its test's
    # polygon comparison (adc99638 "compare polygons correctly in unittests").
)


def fallback_fingerprint():
    """Identifies what a fallback build contains: the sdist, the stand-in, every change made.

    Written into the built `detectron2/_C.py`, so that a fallback built by an older version of
    this script (other fixes, or none of this marker at all) is rebuilt instead of kept.
    """
    parts = [SDIST_SHA256, C_STANDIN, repr(SETUP_REPLACEMENTS), repr(COMPAT_FIXES)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


FALLBACK_FINGERPRINT = fallback_fingerprint()


def replace_exactly(path, old, new, count=1):
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise SystemExit(f"patch failed: expected {count}x {old!r} in {path}, found {found}")
    path.write_text(text.replace(old, new))


def patch_source(src):
    pkg = src / "detectron2"
    marker = (
        "\n\n# ms-rcnn's installer rebuilds a fallback whose fingerprint differs from its own.\n"
        f"FALLBACK_FINGERPRINT = {FALLBACK_FINGERPRINT!r}\n"
    )
    (pkg / "_C.py").write_text(C_STANDIN + marker)
    for old, new in SETUP_REPLACEMENTS:
        replace_exactly(src / "setup.py", old, new)
    for fix in COMPAT_FIXES:
        fix.apply(src)
    return ["_C stand-in", "model-zoo data", f"{len(COMPAT_FIXES)} compat fixes"]


def checkout_fingerprint():
    """Identifies the changes `patch_checkout` can make (recorded in the build's marker)."""
    parts = [C_STANDIN, repr(SETUP_NO_EXTENSION), repr(COMPAT_FIXES), BUILD_MARKER]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def patch_checkout(src, compiled=True):
    """Prepare an upstream checkout (v0.6, main or in between) for the build.

    With `compiled`, setup.py keeps its C++ extension (the real `detectron2._C`); without, the
    `_C` stand-in replaces it. Each COMPAT_FIX is applied only where the checkout still needs
    it: the v0.6 tag needs them all, main (02b5c4e2) only model_zoo without pkg_resources.
    Returns what was changed, for the log.
    """
    pkg = src / "detectron2"
    if not (pkg / "__init__.py").is_file() or not (src / "setup.py").is_file():
        raise SystemExit(f"{src} is not a Detectron2 checkout (no setup.py or detectron2/)")
    changed = []
    if not compiled:
        (pkg / "_C.py").write_text(C_STANDIN)
        for old, new in SETUP_NO_EXTENSION:
            replace_exactly(src / "setup.py", old, new)
        changed += ["_C stand-in", "no extension"]
    # Decide first, then apply: a fix may remove the text another one's check looks for.
    needed = [fix for fix in COMPAT_FIXES if fix.needed(src)]
    for fix in needed:
        fix.apply(src)
    changed += sorted({fix.path if isinstance(fix, Fix) else fix.glob for fix in needed})
    return changed


# `detectron2/_ms_rcnn_build.py`, written into every checkout the installer builds: what was
# built from what. ms_rcnn.env.detectron2_build() reads it (a tarball or a copy has no .git to
# ask for its commit), and the installer recognizes its own builds by it.
BUILD_MARKER = '''"""How this Detectron2 was built (by ms-rcnn's scripts/install_detectron2.py)."""

BUILD = {build!r}
'''


def write_build_marker(src, **build):
    build = dict(build, built_by="ms-rcnn scripts/install_detectron2.py")
    build["fingerprint"] = checkout_fingerprint()
    (src / "detectron2" / "_ms_rcnn_build.py").write_text(BUILD_MARKER.format(build=build))
    return build
