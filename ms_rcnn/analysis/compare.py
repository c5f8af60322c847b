"""Compare finished runs: AP and calibration per arm (mean ± std over seeds), deltas, bar chart.

A *run* is one evaluation's results dict, read from:

- `eval_results.json`, written by `ms_rcnn.evaluation.save_eval_results` after evaluation;
- Detectron2's `metrics.json` (JSON lines from training; its last record with eval metrics);
- a run's output folder holding either (eval_results.json preferred).

An *arm* is a labelled group of runs (e.g. seeds of one config). The first arm is the
baseline unless another is named; deltas are differences of arm means.
"""

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..evaluation.results_file import EVAL_RESULTS_FILE, FORMAT_TAG, json_safe

__all__ = [
    "EVAL_RESULTS_FILE",
    "Arm",
    "load_eval_results",
    "parse_run_spec",
    "load_arms",
    "arm_stats",
    "comparison_table",
    "per_run_table",
    "plot_comparison",
]

#: Tasks a results dict may hold (the keys of Detectron2's metrics.json are task/metric).
EVAL_TASKS = ("bbox", "segm", "boundary", "keypoints", "calibration")

#: (row label, task, metric, decimals) of the comparison table, in order.
AP_ROWS = (
    ("box AP", "bbox", "AP", 2),
    ("mask AP", "segm", "AP", 2),
    ("mask AP50", "segm", "AP50", 2),
    ("mask AP75", "segm", "AP75", 2),
    ("mask APs", "segm", "APs", 2),
    ("mask APm", "segm", "APm", 2),
    ("mask APl", "segm", "APl", 2),
    ("Boundary AP", "boundary", "AP", 2),
    ("Boundary AP50", "boundary", "AP50", 2),
    ("Boundary AP75", "boundary", "AP75", 2),
)
CALIBRATION_ROWS = (
    ("matched detections", "calibration", "num_matched", 1),
    ("mean true mask IoU", "calibration", "mean_true_iou", 3),
    ("Pearson(scores, IoU)", "calibration", "pearson_scores", 3),
    ("Spearman(scores, IoU)", "calibration", "spearman_scores", 3),
    ("Pearson(mask_scores, IoU)", "calibration", "pearson_mask_scores", 3),
    ("Spearman(mask_scores, IoU)", "calibration", "spearman_mask_scores", 3),
    ("Pearson(pred_maskiou, IoU)", "calibration", "pearson_pred_maskiou", 3),
    ("Spearman(pred_maskiou, IoU)", "calibration", "spearman_pred_maskiou", 3),
    ("MAE(pred_maskiou) matched", "calibration", "mae_pred_maskiou", 3),
    ("MAE(pred_maskiou) all", "calibration", "mae_pred_maskiou_all", 3),
)
ROWS = AP_ROWS + CALIBRATION_ROWS


def _is_task_level(results: Mapping) -> bool:
    """True for task -> metric -> number; False for dataset -> task -> metric -> number."""
    return any(
        isinstance(v, Mapping) and not any(isinstance(x, Mapping) for x in v.values())
        for v in results.values()
    )


def _pick_dataset(results: Mapping, dataset: Optional[str], path: str) -> Dict:
    if not results or _is_task_level(results):
        return dict(results)
    if dataset is not None:
        if dataset not in results:
            raise KeyError(f"{path}: no dataset {dataset!r}; it has {sorted(results)}")
        return dict(results[dataset])
    if len(results) != 1:
        raise ValueError(f"{path} holds several datasets {sorted(results)}; choose one")
    return dict(next(iter(results.values())))


def _from_metrics_json(lines: Sequence[str], path: str) -> Dict:
    """Unflatten the last record of Detectron2's metrics.json that has eval metrics."""
    last = None
    for line in lines:
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        if any(k.endswith(("bbox/AP", "segm/AP")) for k in record):
            last = record
    if last is None:
        raise ValueError(f"{path} has no evaluation metrics (no '.../segm/AP' or 'bbox/AP')")
    nested: Dict = {}
    for key, value in last.items():
        parts = key.split("/")
        # eval keys are task/metric or dataset/task/metric; skip training scalars
        if len(parts) < 2 or parts[-2] not in (
            "bbox",
            "segm",
            "boundary",
            "keypoints",
            "calibration",
        ):
            continue
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_eval_results(path: str, dataset: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Read one run's results as task -> metric -> value (missing or NaN values are None).

    Args:
        path: an eval_results.json, a metrics.json, or an output folder with either.
        dataset: which dataset to take when the run evaluated several.
    """
    if os.path.isdir(path):
        for name in (EVAL_RESULTS_FILE, "metrics.json"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"No {EVAL_RESULTS_FILE} or metrics.json in {path}")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # JSON lines: Detectron2's metrics.json
        data = _from_metrics_json(text.splitlines(), path)
    else:
        if isinstance(data, Mapping) and data.get("format") == FORMAT_TAG:
            data = data["results"]
        elif isinstance(data, Mapping) and not _is_task_level(data) and any("/" in k for k in data):
            # a one-line metrics.json parses as a plain JSON object
            data = _from_metrics_json([text], path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} is not a results dict")
    return json_safe(_pick_dataset(data, dataset, path))


@dataclass
class Arm:
    """A labelled group of runs (e.g. the seeds of one configuration)."""

    label: str
    paths: List[str] = field(default_factory=list)
    runs: List[Dict[str, Dict[str, float]]] = field(default_factory=list)

    def values(self, task: str, metric: str) -> List[float]:
        """The metric of every run that reports it."""
        out = []
        for run in self.runs:
            v = run.get(task, {}).get(metric)
            if v is not None and math.isfinite(v):
                out.append(float(v))
        return out


def _default_label(path: str) -> str:
    path = os.path.normpath(path)
    if os.path.isfile(path) and os.path.basename(path) in (EVAL_RESULTS_FILE, "metrics.json"):
        path = os.path.dirname(path)
    return os.path.basename(os.path.abspath(path))


def parse_run_spec(spec: str) -> Tuple[str, List[str]]:
    """ "LABEL=PATH[,PATH...]" -> (LABEL, [PATH, ...]); a bare PATH is labelled by its folder."""
    if "=" in spec:
        label, _, paths = spec.partition("=")
        paths = [p for p in paths.split(",") if p]
        if not label or not paths:
            raise ValueError(f"Bad run spec {spec!r}; expected LABEL=PATH[,PATH...]")
        return label, paths
    return _default_label(spec), [spec]


def load_arms(specs: Sequence[str], dataset: Optional[str] = None) -> List[Arm]:
    """Parse run specs (see `parse_run_spec`) and load every run; specs sharing a label merge."""
    arms: Dict[str, Arm] = {}
    for spec in specs:
        label, paths = parse_run_spec(spec)
        arm = arms.setdefault(label, Arm(label))
        for path in paths:
            arm.paths.append(path)
            arm.runs.append(load_eval_results(path, dataset=dataset))
    return list(arms.values())


def arm_stats(values: Sequence[float]) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, sample standard deviation (ddof=1), n); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None, 0
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if n > 1 else None), n


def _select_baseline(arms: Sequence[Arm], baseline: Optional[str]) -> Arm:
    if not arms:
        raise ValueError("No runs to compare")
    if baseline is None:
        return arms[0]
    for arm in arms:
        if arm.label == baseline:
            return arm
    raise KeyError(f"Baseline {baseline!r} is not one of {[a.label for a in arms]}")


def _stat_cell(mean, std, n, n_runs, decimals) -> str:
    if mean is None:
        return "n/a"
    cell = f"{mean:.{decimals}f}"
    if std is not None:
        cell += f" ± {std:.{decimals}f}"
    if n != n_runs:  # some runs lack this metric: say how many the mean covers
        cell += f" (n={n})"
    return cell


def comparison_table(
    arms: Sequence[Arm], baseline: Optional[str] = None, rows=ROWS
) -> Tuple[str, Arm]:
    """Markdown table: a row per metric, a mean ± std column per arm, a Δ column per other arm.

    Rows that no arm reports are left out (e.g. calibration for runs evaluated without it).

    Returns:
        (table, baseline arm).
    """
    base = _select_baseline(arms, baseline)
    others = [a for a in arms if a is not base]
    ordered = [base, *others]
    header = ["metric", *(f"{a.label} (n={len(a.runs)})" for a in ordered)]
    header += [f"Δ {a.label}" for a in others]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, task, metric, decimals in rows:
        stats = [arm_stats(a.values(task, metric)) for a in ordered]
        if all(s[2] == 0 for s in stats):
            continue
        cells = [label]
        cells += [_stat_cell(*s, len(a.runs), decimals) for s, a in zip(stats, ordered)]
        base_mean = stats[0][0]
        for s in stats[1:]:
            cells.append(
                "n/a" if s[0] is None or base_mean is None else f"{s[0] - base_mean:+.{decimals}f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), base


def per_run_table(arms: Sequence[Arm]) -> str:
    """Markdown table of box, mask and Boundary AP of every single run (to spot an outlier)."""
    lines = ["| arm | run | box AP | mask AP | Boundary AP |", "|---|---|---:|---:|---:|"]
    for arm in arms:
        for path, run in zip(arm.paths, arm.runs):
            values = [run.get(task, {}).get("AP") for task in ("bbox", "segm", "boundary")]
            cells = ["n/a" if v is None else f"{v:.2f}" for v in values]
            lines.append(f"| {arm.label} | {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(arms: Sequence[Arm], path: str, rows=AP_ROWS) -> str:
    """Grouped bar chart of the AP rows per arm (error bars: std over runs); returns `path`."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if any(a.values(r[1], r[2]) for a in arms)]
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(arms), 1)
    x = np.arange(len(rows))
    for i, arm in enumerate(arms):
        stats = [arm_stats(arm.values(task, metric)) for _, task, metric, _ in rows]
        means = [np.nan if s[0] is None else s[0] for s in stats]
        errs = [0.0 if s[1] is None else s[1] for s in stats]
        ax.bar(
            x + (i - (len(arms) - 1) / 2) * width,
            means,
            width,
            yerr=errs,
            capsize=3,
            label=f"{arm.label} (n={len(arm.runs)})",
        )
    ax.set_xticks(x, [r[0] for r in rows])
    ax.set_ylabel("AP (%)")
    ax.set_title("COCO AP per arm (mean ± std over runs)")
    ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
