"""COCO evaluation that ranks masks by their predicted quality (Mask Scoring R-CNN convention).

`MaskScoringCOCOEvaluator` is Detectron2's `COCOEvaluator` with three changes:

- segm AP ranks detections by `mask_scores` (= scores * pred_maskiou) while bbox AP keeps
  `scores`, as the official code does; a model without `mask_scores` (plain
  Mask R-CNN) is evaluated exactly like the stock evaluator;
- it picks the COCOeval itself and logs which and why: Detectron2's compiled `COCOeval_opt`
  when the build has compiled ops, else faster-coco-eval if installed, else pycocotools'
  COCOeval, instead of failing on `COCOeval_opt` (same numbers either way; see
  `cocoeval_backend.py`);
- it adds a `boundary` task, Boundary AP ranked like segm (see `boundary.py`), when `segm` is
  evaluated and faster-coco-eval is installed;
- it adds a mask-quality calibration report (see `calibration.py`) under
  `results["calibration"]`, in `<output_dir>/calibration.json` and as a scatter plot in
  `<output_dir>/maskiou_calibration.png`.
"""

import contextlib
import itertools
import logging
import os

from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import create_small_table

from ..data.coco_checks import drop_unusable_polygons_from_coco
from .boundary import BOUNDARY_TASK, boundary_eval_available, evaluate_boundary, ranked_detections
from .calibration import (
    CALIBRATION_PNG,
    JSON_SCORE_KEYS,
    calibration_for_results,
    collect_calibration_data,
    plot_calibration,
    save_calibration,
    summarize_calibration,
)
from .cocoeval_backend import (
    choose_coco_backend,
    compiled_coco_eval_available,
    fast_coco_eval_backend,
)

__all__ = ["MaskScoringCOCOEvaluator", "build_ms_rcnn_evaluator", "compiled_coco_eval_available"]

logger = logging.getLogger(__name__)


def add_score_fields(coco_dets, instances) -> None:
    """Copy `mask_scores` / `pred_maskiou` of `instances` into their COCO-format dicts.

    Args:
        coco_dets (list[dict]): `instances_to_coco_json(instances, ...)`, one dict per instance
            in the same order; updated in place under the keys of `JSON_SCORE_KEYS`.
        instances (Instances): the model's output for one image.
    """
    for name in ("mask_scores", "pred_maskiou"):
        if not instances.has(name):
            continue
        values = instances.get(name).detach().to("cpu").reshape(-1).tolist()
        if len(values) != len(coco_dets):
            raise ValueError(f"{name} has {len(values)} values for {len(coco_dets)} detections")
        for det, value in zip(coco_dets, values):
            det[JSON_SCORE_KEYS[name]] = float(value)


class MaskScoringCOCOEvaluator(COCOEvaluator):
    """COCOEvaluator that ranks segm results by a mask-quality score and reports calibration.

    Each COCO-format detection additionally carries "mask_score" and "pred_maskiou" when the
    model produced them, so `coco_instances_results.json` and `instances_predictions.pth` hold
    every score needed to re-rank offline (see `evaluate_with_score_field`).
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        segm_score_field="mask_scores",
        calibration=True,
        boundary=True,
        boundary_dilation_ratio=0.02,
        use_fast_impl=True,
        **kwargs,
    ):
        """
        Args:
            dataset_name, tasks, distributed, output_dir: as for `COCOEvaluator`.
            segm_score_field (str): `Instances` field that ranks masks for segm AP: "mask_scores"
                (MS R-CNN), "scores" (the stock ranking: the same-weights ablation) or
                "pred_maskiou". Detections without it fall back to "scores".
            calibration (bool): compute the mask-quality calibration report.
            boundary (bool): also report Boundary AP (task "boundary") when segm is evaluated;
                needs faster-coco-eval (skipped with a warning without it).
            boundary_dilation_ratio (float): boundary width as a fraction of the image diagonal.
            use_fast_impl (bool): as for `COCOEvaluator`: True picks the fastest COCOeval there
                is (Detectron2's compiled one, else faster-coco-eval, else pycocotools'); False
                always runs pycocotools' official COCOeval.
            kwargs: passed to `COCOEvaluator` (`max_dets_per_image`, `kpt_oks_sigmas`, ...).
        """
        if segm_score_field not in JSON_SCORE_KEYS:
            raise ValueError(
                f"segm_score_field must be one of {sorted(JSON_SCORE_KEYS)}, "
                f"got {segm_score_field!r}"
            )
        backend, why = choose_coco_backend(use_fast_impl)
        logger.info(f"COCO evaluation backend: {backend} ({why}).")
        self._coco_backend = backend
        self._faster_coco_eval = backend == "faster-coco-eval"
        use_fast_impl = backend != "pycocotools"
        # With faster-coco-eval chosen here, the parent must not decide: Detectron2 main turns
        # use_fast_impl off (and logs a fallback) when its compiled COCOeval is missing. Both
        # versions read `_use_fast_impl` only when evaluating, inside fast_coco_eval_backend.
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            use_fast_impl=use_fast_impl and not self._faster_coco_eval,
            **kwargs,
        )
        if self._faster_coco_eval:
            self._use_fast_impl = True
        # The ground truth without the annotations no mask can be made of, as training loads it
        # (pycocotools fails on a polygon of fewer than 3 points).
        drop_unusable_polygons_from_coco(
            self._coco_api, self._metadata.get("json_file", None) or dataset_name
        )
        self._segm_score_key = JSON_SCORE_KEYS[segm_score_field]
        self._calibration = calibration
        self._boundary = boundary
        self._boundary_dilation_ratio = boundary_dilation_ratio
        if boundary and not boundary_eval_available():
            logger.warning(
                "Boundary AP is skipped: it needs faster-coco-eval (`pip install "
                "faster-coco-eval`); set TEST.BOUNDARY_EVAL.ENABLED False to silence this."
            )
            self._boundary = False

    def process(self, inputs, outputs):
        start = len(self._predictions)
        super().process(inputs, outputs)
        # Attach the extra scores to the dicts the parent just built; match by image id rather
        # than by position, so this does not depend on which outputs the parent skips.
        instances_by_id = {
            inp["image_id"]: out["instances"]
            for inp, out in zip(inputs, outputs)
            if "instances" in out
        }
        for prediction in self._predictions[start:]:
            if "instances" in prediction:
                add_score_fields(prediction["instances"], instances_by_id[prediction["image_id"]])

    @contextlib.contextmanager
    def _attributes(self, **values):
        """Temporarily set attributes the parent's `_eval_predictions` reads."""
        saved = {name: getattr(self, name) for name in values}
        try:
            for name, value in values.items():
                setattr(self, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    def _eval_predictions(self, predictions, img_ids=None):
        backend = fast_coco_eval_backend() if self._faster_coco_eval else contextlib.nullcontext()
        with backend:
            self._eval_ranked_predictions(predictions, img_ids)

    def _eval_ranked_predictions(self, predictions, img_ids=None):
        """Run the parent's evaluation, with segm ranked by the mask score, then calibration.

        The parent's `_evaluate_predictions_on_coco` changed signature between Detectron2
        versions, so instead of calling it, this calls the parent's `_eval_predictions` twice:
        once for the non-segm tasks on the original detections (this pass also writes
        `coco_instances_results.json` with `scores`), and once for segm on
        copies whose "score" is the mask score, with writing switched off.
        """
        coco_results = list(itertools.chain(*[p["instances"] for p in predictions]))
        tasks = tuple(sorted(self._tasks or self._tasks_from_predictions(coco_results)))
        # The parent unmaps category ids in place; keep copies with dataset ids for calibration.
        calibration_dets = self._with_dataset_category_ids(coco_results)

        key = self._segm_score_key
        num_with_key = sum(key in d for d in coco_results)
        if "segm" not in tasks or key == "score" or num_with_key == 0 or not self._do_evaluation:
            if "segm" in tasks and key != "score" and coco_results and num_with_key == 0:
                self._logger.info(f"No detection has '{key}': segm AP ranks by 'score'.")
            super()._eval_predictions(predictions, img_ids=img_ids)
        else:
            if num_with_key < len(coco_results):
                self._logger.warning(
                    f"Only {num_with_key} of {len(coco_results)} detections have '{key}' "
                    "(Detectron2's stock TTA drops it); the others are ranked by 'score'."
                )
            segm_predictions = [
                {**p, "instances": [{**d, "score": d.get(key, d["score"])} for d in p["instances"]]}
                for p in predictions
            ]
            other_tasks = tuple(t for t in tasks if t != "segm")
            # With segm as the only task, the first pass only writes the results file.
            with self._attributes(
                _tasks=other_tasks or ("segm",), _do_evaluation=bool(other_tasks)
            ):
                super()._eval_predictions(predictions, img_ids=img_ids)
            self._logger.info(f"segm AP ranks masks by '{key}'.")
            with self._attributes(_tasks=("segm",), _output_dir=None):
                super()._eval_predictions(segm_predictions, img_ids=img_ids)

        if self._boundary and self._do_evaluation and "segm" in tasks:
            self._eval_boundary(calibration_dets, img_ids)

        # Zero detections infer no segm task, but a calibration entry (with zero counts) still
        # tells the reader that nothing was matched rather than that nothing was measured.
        if self._calibration and self._do_evaluation and ("segm" in tasks or not coco_results):
            self._eval_calibration(calibration_dets, img_ids)

    def _with_dataset_category_ids(self, coco_results):
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if not mapping:
            return [dict(d) for d in coco_results]
        reverse = {v: k for k, v in mapping.items()}
        return [{**d, "category_id": reverse[d["category_id"]]} for d in coco_results]

    def _eval_boundary(self, detections, img_ids=None):
        """Fill `self._results["boundary"]`: Boundary AP with masks ranked like segm."""
        results = evaluate_boundary(
            self._coco_api.dataset,
            ranked_detections(detections, self._segm_score_key),
            img_ids=img_ids,
            max_dets_per_image=self._max_dets_per_image,
            dilation_ratio=self._boundary_dilation_ratio,
        )
        self._logger.info(
            f"Evaluation results for boundary (ranked by '{self._segm_score_key}'):\n"
            + create_small_table({k: v for k, v in results.items() if "-" not in k})
        )
        self._results[BOUNDARY_TASK] = results

    def _eval_calibration(self, detections, img_ids=None):
        """Fill `self._results["calibration"]` and write the JSON and PNG reports."""
        data = collect_calibration_data(detections, self._coco_api, img_ids=img_ids)
        summary = summarize_calibration(data)
        shown = {k: ("n/a" if v is None else v) for k, v in summary.items()}
        self._logger.info("Mask-quality calibration:\n" + create_small_table(shown))
        self._results["calibration"] = calibration_for_results(summary)
        if not self._output_dir:
            return
        path = save_calibration(summary, self._output_dir)
        self._logger.info(f"Saved calibration figures to {path}")
        try:
            png = plot_calibration(data, os.path.join(self._output_dir, CALIBRATION_PNG), summary)
            self._logger.info(f"Saved calibration plot to {png}")
        except Exception:  # a plotting problem must not cost the AP numbers of a long evaluation
            self._logger.exception("Could not draw the calibration plot")


def build_ms_rcnn_evaluator(
    cfg,
    dataset_name,
    output_dir=None,
    *,
    segm_score_field="mask_scores",
    distributed=True,
    max_dets_per_image=None,
):
    """A `MaskScoringCOCOEvaluator` set up from a Detectron2 config.

    AP is COCO's standard one, at maxDets [1, 10, 100] whatever `cfg.TEST.DETECTIONS_PER_IMAGE`
    is (as Detectron2's `tools/train_net.py` evaluates), so figures compare with published ones:
    a model keeping more than 100 detections per image is scored on its 100 best, as on the COCO
    leaderboard. The tasks are named from the config so that a model that detects nothing still
    gets (NaN) segm results.

    Args:
        cfg (CfgNode): the model config.
        dataset_name (str): a registered test dataset.
        output_dir (str): where predictions, calibration.json and the plot go (or None).
        segm_score_field (str): see `MaskScoringCOCOEvaluator`.
        distributed (bool): gather predictions from all ranks before evaluating.
        max_dets_per_image (int): evaluate at maxDets [1, 10, this] instead (e.g. for dense
            datasets); COCOeval's printed summary then says maxDets=this on every line, and
            the numbers are not comparable with standard COCO AP. Detectron2 then evaluates
            with its pure-Python `COCOevalMaxDets`, never a fast COCOeval. None: the standard
            100.
    """
    tasks = ("bbox",)
    if cfg.MODEL.MASK_ON:
        tasks += ("segm",)
    if cfg.MODEL.KEYPOINT_ON:
        tasks += ("keypoints",)
    if max_dets_per_image is None and cfg.TEST.DETECTIONS_PER_IMAGE > 100:
        logger.info(
            f"TEST.DETECTIONS_PER_IMAGE={cfg.TEST.DETECTIONS_PER_IMAGE}, but COCO AP counts the "
            "100 best detections of each image (maxDets 100, comparable with published AP)."
        )
    elif max_dets_per_image is not None and max_dets_per_image != 100:
        logger.warning(
            f"Evaluating at maxDets {max_dets_per_image}, not COCO's standard 100: these AP "
            "figures are not comparable with published COCO AP."
        )
    boundary = cfg.TEST.get("BOUNDARY_EVAL", None)
    return MaskScoringCOCOEvaluator(
        dataset_name,
        tasks=tasks,
        distributed=distributed,
        output_dir=output_dir,
        segm_score_field=segm_score_field,
        max_dets_per_image=max_dets_per_image,
        boundary=bool(cfg.MODEL.MASK_ON and (boundary is None or boundary.ENABLED)),
        boundary_dilation_ratio=0.02 if boundary is None else boundary.DILATION_RATIO,
        kpt_oks_sigmas=list(cfg.TEST.KEYPOINT_OKS_SIGMAS),
    )
