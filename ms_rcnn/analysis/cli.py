"""Command line of `ms-rcnn-compare` (tools/compare_runs.py): compare runs, or run the same-weights
ablation."""

import argparse
import json
import sys
from typing import List, Optional

from ..env import add_version_argument
from ..evaluation.boundary import BOUNDARY_TASK, boundary_eval_available
from ..evaluation.calibration import SCORE_FIELDS
from ..evaluation.results_file import json_safe
from .ablation import (
    ABLATION_TASKS,
    ablation_table,
    load_coco_gt,
    load_predictions,
    score_field_ablation,
)
from .compare import comparison_table, load_arms, per_run_table, plot_comparison

__all__ = ["build_parser", "main"]

EXAMPLES = """examples:
  # one run per arm (labels are the folder names); the first is the baseline
  %(prog)s output/mask_rcnn output/ms_rcnn
  # several seeds per arm: mean ± std and n per arm, deltas of means
  %(prog)s --run baseline=out/base_s1,out/base_s2 --run msrcnn=out/ms_s1,out/ms_s2
  # same MS R-CNN weights, masks ranked by scores vs mask_scores vs pred_maskiou
  %(prog)s ablate --predictions out/ms_s1/inference --dataset coco_2017_val
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare finished ms-rcnn runs (markdown table + PNG bar chart), or re-rank "
        "one run's saved masks by another score field ('ablate'). Options: "
        "'%(prog)s compare --help', '%(prog)s ablate --help'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command")

    cmp = sub.add_parser("compare", help="compare runs (the default command)")
    cmp.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="an output folder, eval_results.json or metrics.json; or LABEL=PATH[,PATH...]",
    )
    cmp.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="LABEL=PATH[,PATH...]",
        help="an arm of one or more runs (e.g. seeds); repeatable, given after positional RUNs",
    )
    cmp.add_argument("--baseline", help="label of the baseline arm (default: the first arm)")
    cmp.add_argument("--dataset", help="dataset to read when runs evaluated several")
    cmp.add_argument(
        "--png", default="compare_runs.png", help="bar chart to write (default: %(default)s)"
    )
    cmp.add_argument("--per-run", action="store_true", help="also list every run's AP")

    abl = sub.add_parser(
        "ablate", help="segm and Boundary AP of one run's saved masks ranked by each score field"
    )
    abl.add_argument(
        "--predictions",
        required=True,
        help="coco_instances_results.json, instances_predictions.pth, or their folder",
    )
    gt = abl.add_mutually_exclusive_group(required=True)
    gt.add_argument("--dataset", help="registered Detectron2 dataset (e.g. coco_2017_val)")
    gt.add_argument("--gt-json", help="COCO-format ground-truth annotation file")
    abl.add_argument(
        "--fields",
        nargs="+",
        choices=SCORE_FIELDS,
        help="score fields to rank by (default: all the predictions carry)",
    )
    abl.add_argument(
        "--tasks",
        nargs="+",
        choices=ABLATION_TASKS,
        default=list(ABLATION_TASKS),
        help="AP to report: segm, boundary (Boundary AP, needs faster-coco-eval); default both",
    )
    abl.add_argument("--max-dets", type=int, default=100, help="COCOeval maxDets (default 100)")
    abl.add_argument("--output", help="also write the results to this JSON file")
    return parser


def _run_compare(args) -> int:
    specs = list(args.runs) + list(args.run)
    if len(specs) == 0:
        raise SystemExit("compare_runs.py: give at least one run (see --help)")
    arms = load_arms(specs, dataset=args.dataset)
    table, base = comparison_table(arms, baseline=args.baseline)
    print(f"Baseline: {base.label}. Cells are mean ± sample std over n runs; Δ = mean - baseline.")
    print()
    print(table)
    if args.per_run:
        print()
        print(per_run_table(arms))
    png = plot_comparison(arms, args.png)
    print()
    print(f"Bar chart written to {png}")
    return 0


def _ground_truth(args):
    """(COCO ground truth, dataset id -> contiguous id map or None) for the ablate command."""
    if args.gt_json:
        return load_coco_gt(args.gt_json), None
    import detectron2.data  # noqa: F401  (registers Detectron2's builtin datasets)
    from detectron2.data import MetadataCatalog

    from ..data import SYNTHETIC_DATASETS, prepare_synthetic_dataset

    if args.dataset in SYNTHETIC_DATASETS:
        prepare_synthetic_dataset(args.dataset)  # generated lazily: make sure the JSON exists

    meta = MetadataCatalog.get(args.dataset)
    json_file = meta.get("json_file")
    if json_file is None:
        raise SystemExit(
            f"compare_runs.py: dataset {args.dataset!r} is not registered with a json_file in "
            "this process; pass its annotation file with --gt-json instead"
        )
    return load_coco_gt(json_file), meta.get("thing_dataset_id_to_contiguous_id")


def _run_ablate(args) -> int:
    coco_gt, id_map = _ground_truth(args)
    predictions = load_predictions(args.predictions, coco_gt=coco_gt, dataset_id_map=id_map)
    tasks = list(dict.fromkeys(args.tasks))
    if BOUNDARY_TASK in tasks and not boundary_eval_available():
        print(
            "compare_runs.py: warning: Boundary AP skipped, it needs faster-coco-eval "
            "(pip install faster-coco-eval)",
            file=sys.stderr,
        )
        tasks.remove(BOUNDARY_TASK)
    if not tasks:
        raise SystemExit("compare_runs.py: no task left to evaluate")
    results = {
        task: score_field_ablation(
            predictions, coco_gt, args.fields, max_dets_per_image=args.max_dets, task=task
        )
        for task in tasks
    }
    if not results[tasks[0]]:
        fields = ", ".join(SCORE_FIELDS)
        raise SystemExit(f"compare_runs.py: the predictions carry none of {fields}")
    print(f"AP of {len(predictions)} detections from {args.predictions}, re-ranked:")
    for task in tasks:
        print()
        print(ablation_table(results[task], task=task))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(json_safe(results), f, indent=2)
        print()
        print(f"Results written to {args.output}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; `compare` is the default command when the first argument is not one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("compare", "ablate", "-h", "--help", "--version"):
        argv.insert(0, "compare")
    args = build_parser().parse_args(argv)
    return _run_ablate(args) if args.command == "ablate" else _run_compare(args)
