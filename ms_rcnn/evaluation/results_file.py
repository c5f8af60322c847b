"""`eval_results.json`: one evaluation's results dict, written after the evaluator ran.

The file is what `tools/compare_runs.py` (`ms_rcnn.analysis`) reads back; it lives here because
writing it is the last step of an evaluation, in a trainer that has no use for the analysis
tools.
"""

import json
import math
import os
from collections.abc import Mapping
from typing import Optional

__all__ = ["EVAL_RESULTS_FILE", "FORMAT_TAG", "json_safe", "save_eval_results"]

EVAL_RESULTS_FILE = "eval_results.json"
FORMAT_TAG = "ms_rcnn.eval_results"


def json_safe(value):
    """Nested dicts of plain floats; NaN/inf become None so the file is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def save_eval_results(
    results: Mapping, output_dir: str, filename: str = EVAL_RESULTS_FILE
) -> Optional[str]:
    """Write an evaluation's results dict to `<output_dir>/eval_results.json`.

    Call it with what `DefaultTrainer.test` (or `inference_on_dataset`) returned. Only the main
    process writes, since other ranks receive empty results.

    Args:
        results: task -> metric -> value, or dataset name -> task -> metric -> value.
        output_dir: the run's output folder (created if needed).
        filename: file name inside `output_dir`.

    Returns:
        The path written, or None on non-main processes.
    """
    from detectron2.utils import comm

    if not comm.is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, filename)
    payload = {"format": FORMAT_TAG, "version": 1, "results": json_safe(results)}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path
