"""Soft-NMS at test time in Detectron2's box predictor (`FastRCNNOutputLayers`).

Only `inference` changes: training, the losses and the RPN (which has its own NMS) are
untouched, and with `TEST.SOFT_NMS.ENABLED: False` the predictor is exactly Detectron2's.
"""

from typing import List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from .soft_nms import batched_soft_nms, check_soft_nms_args

__all__ = [
    "SoftNMSFastRCNNOutputLayers",
    "fast_rcnn_inference_soft_nms",
]

_CONFIG_KEYS = (
    "TEST.SOFT_NMS.METHOD",
    "TEST.SOFT_NMS.SIGMA",
    "TEST.SOFT_NMS.IOU_THRESHOLD",
    "TEST.SOFT_NMS.SCORE_THRESHOLD",
)


def fast_rcnn_inference_soft_nms(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    soft_nms_method: str,
    soft_nms_sigma: float,
    soft_nms_iou_threshold: float,
    soft_nms_score_threshold: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Detectron2's `fast_rcnn_inference` with per-class Soft-NMS instead of hard NMS.

    Per image: drop rows with non-finite boxes or scores, clip boxes to the image, take every
    (box, class) with class score > `score_thresh` as a candidate, run `batched_soft_nms` per
    class, and keep the `topk_per_image` candidates with the highest decayed score.

    Args:
        boxes: per image, (Ri, K * 4) class-specific or (Ri, 4) class-agnostic boxes (XYXY),
            as from `FastRCNNOutputLayers.predict_boxes`.
        scores: per image, (Ri, K + 1) class probabilities, the last column background, as
            from `FastRCNNOutputLayers.predict_probs`.
        image_shapes: per image, (height, width) to clip boxes to.
        score_thresh: candidates need a class score above this
            (MODEL.ROI_HEADS.SCORE_THRESH_TEST).
        soft_nms_method, soft_nms_sigma, soft_nms_iou_threshold, soft_nms_score_threshold:
            `method`, `sigma`, `iou_threshold`, `score_threshold` of `batched_soft_nms`.
        topk_per_image: number of detections to keep per image (TEST.DETECTIONS_PER_IMAGE);
            < 0 keeps all.

    Returns:
        instances: per image, Instances with `pred_boxes` (Boxes, (D, 4)), `scores` ((D,), the
            decayed scores, non-increasing) and `pred_classes` ((D,) int64).
        kept_indices: per image, (D,) int64 row of each detection in that image's input.
    """
    check_soft_nms_args(
        soft_nms_method, soft_nms_sigma, soft_nms_iou_threshold, soft_nms_score_threshold
    )
    results = [
        _inference_single_image(
            boxes_i,
            scores_i,
            shape,
            score_thresh,
            soft_nms_method,
            soft_nms_sigma,
            soft_nms_iou_threshold,
            soft_nms_score_threshold,
            topk_per_image,
        )
        for boxes_i, scores_i, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def _inference_single_image(
    boxes, scores, image_shape, score_thresh, method, sigma, iou_threshold, soft_thresh, topk
):
    # Same candidate selection as detectron2's fast_rcnn_inference_single_image.
    rows = torch.arange(len(boxes), device=boxes.device)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores, rows = boxes[valid], scores[valid], rows[valid]

    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_bbox_reg_classes, 4)

    filter_mask = scores > score_thresh  # (R, K)
    filter_inds = filter_mask.nonzero()  # (R', 2): row, class
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]

    keep, new_scores = batched_soft_nms(
        boxes,
        scores,
        filter_inds[:, 1],
        method,
        sigma,
        iou_threshold,
        soft_thresh,
        # Lets Soft-NMS stop once the top detections are final (same result as truncating).
        topk=topk if topk >= 0 else None,
    )
    filter_inds = filter_inds[keep]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = new_scores
    result.pred_classes = filter_inds[:, 1]
    # Detectron2 returns rows of the finite-only subset; map back to input rows as documented.
    return result, rows[filter_inds[:, 0]]


class SoftNMSFastRCNNOutputLayers(FastRCNNOutputLayers):
    """`FastRCNNOutputLayers` whose test-time NMS can be Soft-NMS (`cfg.TEST.SOFT_NMS`).

    Same parameters and state_dict as the parent; only `inference` differs, and only when
    `soft_nms_enabled` is True.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        soft_nms_enabled: bool = False,
        soft_nms_method: str = "gaussian",
        soft_nms_sigma: float = 0.6,
        soft_nms_iou_threshold: float = 0.3,
        soft_nms_score_threshold: float = 0.001,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as `FastRCNNOutputLayers`.
            soft_nms_enabled: TEST.SOFT_NMS.ENABLED; False (default) keeps hard NMS.
            soft_nms_method: TEST.SOFT_NMS.METHOD, "gaussian", "linear" or "hard".
            soft_nms_sigma: TEST.SOFT_NMS.SIGMA, > 0 (default: the MS R-CNN paper's 0.6).
            soft_nms_iou_threshold: TEST.SOFT_NMS.IOU_THRESHOLD, in [0, 1].
            soft_nms_score_threshold: TEST.SOFT_NMS.SCORE_THRESHOLD, in [0, 1].

        Raises:
            ValueError: naming the config key of an invalid value (checked even when
                disabled, so a typo does not wait until someone enables it).
        """
        super().__init__(input_shape, **kwargs)
        if not isinstance(soft_nms_enabled, bool):
            raise ValueError(f"TEST.SOFT_NMS.ENABLED must be a bool, got {soft_nms_enabled!r}")
        check_soft_nms_args(
            soft_nms_method,
            soft_nms_sigma,
            soft_nms_iou_threshold,
            soft_nms_score_threshold,
            names=_CONFIG_KEYS,
        )
        self.soft_nms_enabled = soft_nms_enabled
        self.soft_nms_method = soft_nms_method
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.soft_nms_iou_threshold = float(soft_nms_iou_threshold)
        self.soft_nms_score_threshold = float(soft_nms_score_threshold)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        node = cfg.TEST.SOFT_NMS
        ret.update(
            soft_nms_enabled=node.ENABLED,
            soft_nms_method=node.METHOD,
            soft_nms_sigma=node.SIGMA,
            soft_nms_iou_threshold=node.IOU_THRESHOLD,
            soft_nms_score_threshold=node.SCORE_THRESHOLD,
        )
        return ret

    def inference(self, predictions, proposals: List[Instances]):
        """Like `FastRCNNOutputLayers.inference`, with Soft-NMS when enabled.

        Args:
            predictions: (class logits (R, K + 1), box deltas (R, K * 4) or (R, 4)), the
                output of `forward`.
            proposals: per image, Instances with `proposal_boxes`.

        Returns:
            Same as `fast_rcnn_inference_soft_nms` (or the parent's when disabled).
        """
        if not self.soft_nms_enabled:
            return super().inference(predictions, proposals)
        return fast_rcnn_inference_soft_nms(
            self.predict_boxes(predictions, proposals),
            self.predict_probs(predictions, proposals),
            [x.image_size for x in proposals],
            self.test_score_thresh,
            self.soft_nms_method,
            self.soft_nms_sigma,
            self.soft_nms_iou_threshold,
            self.soft_nms_score_threshold,
            self.test_topk_per_image,
        )
