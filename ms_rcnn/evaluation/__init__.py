"""Evaluation for Mask Scoring R-CNN: COCO AP with masks ranked by their predicted quality,
the mask-quality calibration report, and tools to compare runs.

Typical use in a trainer::

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator, save_eval_results

    evaluator = build_ms_rcnn_evaluator(cfg, dataset_name, output_dir)
    results = inference_on_dataset(model, data_loader, evaluator)
    save_eval_results(results, cfg.OUTPUT_DIR)
"""

from .ablation import evaluate_with_score_field, load_predictions, score_field_ablation
from .calibration import (
    CalibrationData,
    collect_calibration_data,
    pearson,
    plot_calibration,
    spearman,
    summarize_calibration,
    true_mask_ious,
)
from .coco_evaluation import (
    MaskScoringCOCOEvaluator,
    build_ms_rcnn_evaluator,
    compiled_coco_eval_available,
)
from .compare import comparison_table, load_arms, load_eval_results, save_eval_results

__all__ = [
    "MaskScoringCOCOEvaluator",
    "build_ms_rcnn_evaluator",
    "compiled_coco_eval_available",
    "save_eval_results",
    "load_eval_results",
    "load_arms",
    "comparison_table",
    "evaluate_with_score_field",
    "score_field_ablation",
    "load_predictions",
    "CalibrationData",
    "collect_calibration_data",
    "summarize_calibration",
    "true_mask_ious",
    "pearson",
    "spearman",
    "plot_calibration",
]
