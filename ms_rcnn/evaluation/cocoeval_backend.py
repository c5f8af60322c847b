"""Which COCOeval runs: Detectron2's compiled one, faster-coco-eval's, or pycocotools'.

Detectron2's `COCOEvaluator(use_fast_impl=True)` uses `COCOeval_opt`, which needs Detectron2's
compiled ops; a build with them (`make setup DETECTRON2_SRC=...`) uses it. The pure-Python
stand-in build has none, so the stock evaluator would fall back to pycocotools' pure-Python
`COCOeval` (3-6x slower, see docs/BENCHMARKS.md). `choose_coco_backend` says which and why. When the
`faster-coco-eval` package (C++ wheels on PyPI, `pip install faster-coco-eval`) is installed,
`MaskScoringCOCOEvaluator` uses it instead, on Detectron2 v0.6 and main alike (main's
`COCOEvaluator` would turn `use_fast_impl` off when `COCOeval_opt` fails to import; the
evaluator keeps that decision to itself). Its results equal pycocotools' (tests compare the
twelve summary numbers and the whole precision array).
"""

import contextlib
import importlib.util
from typing import Tuple

__all__ = [
    "choose_coco_backend",
    "compiled_coco_eval_available",
    "faster_coco_eval_available",
    "fast_coco_eval_backend",
]


def compiled_coco_eval_available() -> bool:
    """Whether Detectron2's compiled ops (and so `COCOeval_opt`) are really there.

    ms-rcnn's pure-Python Detectron2 build installs a stand-in `detectron2._C` that imports
    fine but marks itself with `PURE_PYTHON_STANDIN = True`; its ops raise when called.
    """
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "PURE_PYTHON_STANDIN", False)


def faster_coco_eval_available() -> bool:
    return importlib.util.find_spec("faster_coco_eval") is not None


def choose_coco_backend(use_fast_impl: bool = True) -> Tuple[str, str]:
    """Which COCOeval evaluates, and why: ("detectron2" | "faster-coco-eval" | "pycocotools",
    a sentence for the log). All three give the same numbers; they differ in speed only."""
    if not use_fast_impl:
        return "pycocotools", "use_fast_impl=False asks for pycocotools' official COCOeval"
    if compiled_coco_eval_available():
        return "detectron2", "Detectron2 has compiled ops: its C++ COCOeval_opt"
    if faster_coco_eval_available():
        return "faster-coco-eval", (
            "Detectron2 has no compiled ops (so no COCOeval_opt) and faster-coco-eval is "
            "installed: the same numbers as pycocotools' COCOeval, faster"
        )
    return "pycocotools", (
        "Detectron2 has no compiled ops (so no COCOeval_opt) and faster-coco-eval is not "
        "installed: pycocotools' official COCOeval (use_fast_impl=False); the same numbers, only "
        "slower (`pip install faster-coco-eval` for a faster one)"
    )


def faster_cocoeval_class():
    """A COCOeval-compatible class on faster-coco-eval that takes pycocotools COCO objects.

    Detectron2 calls `cls(coco_gt, coco_dt, iou_type)` with pycocotools objects (coco_dt made
    by `coco_gt.loadRes`, so its annotations already carry areas, ids and RLE masks); the
    faster-coco-eval indexes are built from the same dataset dicts.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    class FasterCOCOeval(COCOeval_faster):
        def __init__(self, coco_gt=None, coco_dt=None, iou_type="segm"):
            super().__init__(COCO(coco_gt.dataset), COCO(coco_dt.dataset), iou_type)

    return FasterCOCOeval


@contextlib.contextmanager
def fast_coco_eval_backend():
    """While active, Detectron2's `use_fast_impl=True` evaluation runs faster-coco-eval.

    Detectron2's `_evaluate_predictions_on_coco` picks the module-level `COCOeval_opt`; there is
    no other hook, so this swaps that name for the duration of one evaluation and restores it.
    """
    from detectron2.evaluation import coco_evaluation

    saved = coco_evaluation.COCOeval_opt
    coco_evaluation.COCOeval_opt = faster_cocoeval_class()
    try:
        yield
    finally:
        coco_evaluation.COCOeval_opt = saved
