"""Evaluation for Mask Scoring R-CNN: COCO AP with masks ranked by their predicted quality, and
the mask-quality calibration report. Comparing runs is `ms_rcnn.analysis`'s job.

Typical use in a trainer::

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator, save_eval_results

    evaluator = build_ms_rcnn_evaluator(cfg, dataset_name, output_dir)
    results = inference_on_dataset(model, data_loader, evaluator)
    save_eval_results(results, cfg.OUTPUT_DIR)
"""

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
from .results_file import save_eval_results

__all__ = [
    "MaskScoringCOCOEvaluator",
    "build_ms_rcnn_evaluator",
    "compiled_coco_eval_available",
    "save_eval_results",
    "CalibrationData",
    "collect_calibration_data",
    "summarize_calibration",
    "true_mask_ious",
    "pearson",
    "spearman",
    "plot_calibration",
]
