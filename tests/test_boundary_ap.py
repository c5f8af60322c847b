"""Boundary AP (task "boundary") against an independent Boundary IoU and hand-counted AP."""

import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import test_evaluation
from numpy.lib.stride_tricks import sliding_window_view
from test_evaluation import ms, ranking_dets, run

dataset = test_evaluation.dataset  # the evaluator tests' registered dataset, reused here

pytest.importorskip("faster_coco_eval")

H = W = 100  # diagonal 141.4: d = round(0.02 * 141.4) = 3 pixels
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def boundary(mask, ratio):
    """Mask minus its erosion by a (2d+1)^2 square; outside the image counts as background."""
    d = max(1, round(ratio * math.hypot(*mask.shape)))
    windows = sliding_window_view(np.pad(mask, d), (2 * d + 1, 2 * d + 1))
    return mask & ~windows.all(axis=(-1, -2))


def reference_iou(det, gt, crowd, ratio):
    """Boundary IoU evaluation's criterion: min(mask IoU, boundary IoU); crowd: mask IoU over
    the detection's area, as COCO does."""
    inter = (det & gt).sum()
    if crowd:
        return inter / det.sum()
    bd, bg = boundary(det, ratio), boundary(gt, ratio)
    return min(inter / (det | gt).sum(), (bd & bg).sum() / (bd | bg).sum())


def disc(r, cy=50, cx=50):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")
    return r


# (category, ground truths [(mask, iscrowd)], detections [(mask, score)]), one image each.
CASES = {
    # A ring; the detection's hole is too small: mask IoU 0.92, but the inner contours miss.
    "ring": ([(disc(30) & ~disc(12), 0)], [(disc(30) & ~disc(9), 0.9)]),
    # 4 pixels wide, narrower than the 7-pixel erosion window: the boundary is the whole shape.
    "thin": ([(box(40, 44, 10, 90), 0)], [(box(41, 45, 10, 88), 0.9)]),
    # A square and a crowd region; the top-scoring detection lies inside the crowd region, far
    # from its contour: matched to the crowd (ignored), not a false positive.
    "crowd": (
        [(box(10, 40, 10, 40), 0), (box(50, 95, 5, 95), 1)],
        [(box(60, 80, 20, 60), 0.95), (box(12, 40, 10, 40), 0.8)],
    ),
}


def gt_dataset(cases):
    images, anns, cats = [], [], []
    for img_id, (name, (gts, _)) in enumerate(cases.items(), 1):
        images.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.png"})
        cats.append({"id": 10 + img_id, "name": name})
        for mask, crowd in gts:
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": 10 + img_id,
                    "segmentation": rle(mask),
                    "area": float(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": crowd,
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}


def detections(cases):
    return [
        {"image_id": i, "category_id": 10 + i, "segmentation": rle(m), "score": s}
        for i, (_, dets) in enumerate(cases.values(), 1)
        for m, s in dets
    ]


def expected_ap(name, ratio):
    """One non-crowd GT per image, so AP at a threshold is 1 if the detection matching it is
    not preceded by a false positive, else computed by hand: here every non-crowd detection
    overlaps its GT and the crowd detection is ignored, so AP at t is 1 when IoU >= t."""
    gts, dets = CASES[name]
    gt = next(m for m, crowd in gts if not crowd)
    det = dets[-1][0]
    iou = reference_iou(det, gt, False, ratio)
    assert np.abs(THRESHOLDS - iou).min() > 1e-6, "case too close to a threshold"
    return 100 * float(np.mean(iou >= THRESHOLDS)), iou


@pytest.mark.parametrize("ratio", [0.02, 0.05])
def test_boundary_ap_matches_reference_on_hand_built_cases(ratio):
    from ms_rcnn.evaluation.boundary import evaluate_boundary

    res = evaluate_boundary(gt_dataset(CASES), detections(CASES), dilation_ratio=ratio)
    for name in CASES:
        assert res[f"AP-{name}"] == pytest.approx(expected_ap(name, ratio)[0]), name
    assert res["AP"] == pytest.approx(np.mean([res[f"AP-{n}"] for n in CASES]))


def test_cases_exercise_what_they_claim():
    ring_gt, ring_det = CASES["ring"][0][0][0], CASES["ring"][1][0][0]
    ring_mask_iou = (ring_gt & ring_det).sum() / (ring_gt | ring_det).sum()
    assert ring_mask_iou > 0.9 and expected_ap("ring", 0.02)[1] < 0.75  # boundary decides
    thin = CASES["thin"][0][0][0]
    assert np.array_equal(boundary(thin, 0.02), thin)
    crowd_gt, crowd_det = CASES["crowd"][0][1][0], CASES["crowd"][1][0][0]
    assert reference_iou(crowd_det, crowd_gt, True, 0.02) == 1.0
    assert (boundary(crowd_det, 0.02) & boundary(crowd_gt, 0.02)).sum() == 0
    # Were the crowd region judged by boundary IoU, the top detection would be a false positive
    # ahead of the true one and halve the precision: the crowd AP really tests the crowd rule.
    assert expected_ap("crowd", 0.02)[0] > 0


def test_the_crowd_detection_alone_is_ignored_not_false():
    from ms_rcnn.evaluation.boundary import evaluate_boundary

    only_crowd = {"crowd": (CASES["crowd"][0], CASES["crowd"][1][:1])}
    res = evaluate_boundary(gt_dataset(only_crowd), detections(only_crowd))
    assert res["AP"] == 0.0  # the square is missed; no detection counts against it


def test_no_detections_gives_nan():
    from ms_rcnn.evaluation.boundary import evaluate_boundary

    res = evaluate_boundary(gt_dataset(CASES), [])
    assert set(res) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-ring", "AP-thin"} | {
        "AP-crowd"
    }
    assert all(math.isnan(v) for v in res.values())


def test_evaluator_ranks_boundary_like_segm(dataset):
    name, _ = dataset
    ours = run(ms(name), ranking_dets())
    by_score = run(ms(name, segm_score_field="scores"), ranking_dets())
    # Rectangles exactly on their GT have boundary IoU 1 and the bad one overlaps too little
    # for either criterion, so Boundary AP equals segm AP under each ranking.
    assert ours["boundary"]["AP"] == pytest.approx(100.0)
    assert by_score["boundary"]["AP"] == pytest.approx(by_score["segm"]["AP"])
    assert by_score["boundary"]["AP"] < 100.0
    for key in ("AP50", "AP75", "AP-a", "AP-b"):
        assert key in ours["boundary"]


def test_evaluator_without_faster_coco_eval_skips_with_a_warning(dataset, monkeypatch, caplog):
    import ms_rcnn.evaluation.coco_evaluation as coco_evaluation

    name, _ = dataset
    monkeypatch.setattr(coco_evaluation, "boundary_eval_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="ms_rcnn.evaluation.coco_evaluation"):
        res = run(ms(name), ranking_dets())
    assert "boundary" not in res and res["segm"]["AP"] == pytest.approx(100.0)
    assert "Boundary AP is skipped: it needs faster-coco-eval" in caplog.text


def test_config_key_turns_it_off(dataset):
    from conftest import tiny_cfg

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator

    name, _ = dataset
    cfg = tiny_cfg()
    assert cfg.TEST.BOUNDARY_EVAL.ENABLED and cfg.TEST.BOUNDARY_EVAL.DILATION_RATIO == 0.02
    assert "boundary" in run(build_ms_rcnn_evaluator(cfg, name), ranking_dets())
    cfg.TEST.BOUNDARY_EVAL.ENABLED = False
    assert "boundary" not in run(build_ms_rcnn_evaluator(cfg, name), ranking_dets())
