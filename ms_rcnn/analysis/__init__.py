"""Analysis of finished runs: compare arms over seeds, and re-rank one run's saved masks.

The command line is `tools/compare_runs.py` (`ms_rcnn.analysis.cli`). A trainer needs none of
this: it imports the evaluator from `ms_rcnn.evaluation`, which also writes the
`eval_results.json` files read here.

    from ms_rcnn.analysis import comparison_table, load_arms

    arms = load_arms(["baseline=out/base_s1,out/base_s2", "msrcnn=out/ms_s1,out/ms_s2"])
    table, baseline = comparison_table(arms)
"""

from .ablation import evaluate_with_score_field, load_predictions, score_field_ablation
from .compare import comparison_table, load_arms, load_eval_results

__all__ = [
    "load_eval_results",
    "load_arms",
    "comparison_table",
    "evaluate_with_score_field",
    "score_field_ablation",
    "load_predictions",
]
