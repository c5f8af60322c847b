"""Tests of Soft-NMS (ms_rcnn.modeling.soft_nms) and its Detectron2 box predictor
(ms_rcnn.modeling.box_predictor).

Expectations come from `reference_soft_nms`, a plain one-box-at-a-time loop over Python lists
in float64 written from the paper (Bodla et al. 2017, Algorithm 1), from torchvision's NMS, and
from hand computation. benchmarks/bench_soft_nms.py times the same reference.
"""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, nms

from ms_rcnn.modeling.box_predictor import (
    SoftNMSFastRCNNOutputLayers,
    fast_rcnn_inference_soft_nms,
)
from ms_rcnn.modeling.soft_nms import batched_soft_nms, soft_nms


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Everything here is small: one thread skips OpenMP hand-offs, which cost seconds per
    # tiny-model forward when the two cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0  # two empty boxes do not overlap


def reference_soft_nms(
    boxes, scores, idxs=None, method="gaussian", sigma=0.5, iou_threshold=0.3, score_threshold=0.001
):
    """Textbook Soft-NMS, one category at a time, over Python lists in float64.

    Returns (keep, scores) lists sorted by decreasing decayed score (Python's stable sort over
    the categories in increasing order, each in selection order).
    """
    boxes = [[float(v) for v in b] for b in torch.as_tensor(boxes).tolist()]
    scores = [float(s) for s in torch.as_tensor(scores).tolist()]
    idxs = [0] * len(scores) if idxs is None else torch.as_tensor(idxs).tolist()
    out = []
    for category in sorted(set(idxs)):
        # [index, current score] of the boxes still in play, in input order
        remaining = [[i, s] for i, s in enumerate(scores) if idxs[i] == category]
        remaining = [r for r in remaining if r[1] > score_threshold]
        while remaining:
            pos = max(range(len(remaining)), key=lambda k: remaining[k][1])  # first max wins
            m, score_m = remaining.pop(pos)
            out.append((m, score_m))
            for r in remaining:
                iou = _iou(boxes[m], boxes[r[0]])
                if method == "gaussian":
                    r[1] *= math.exp(-(iou * iou) / sigma)
                elif method == "linear":
                    r[1] *= (1.0 - iou) if iou > iou_threshold else 1.0
                else:
                    r[1] *= 0.0 if iou > iou_threshold else 1.0
            remaining = [r for r in remaining if r[1] > score_threshold]
    out.sort(key=lambda x: -x[1])
    return [i for i, _ in out], [s for _, s in out]


def clustered_boxes(n, seed, num_classes=1, num_clusters=8, dtype=torch.float64):
    """n boxes around a few objects (so they overlap a lot), distinct scores in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_clusters, 2, generator=g) * 200
    sizes = torch.rand(num_clusters, 2, generator=g) * 60 + 10
    which = torch.randint(0, num_clusters, (n,), generator=g)
    ctr = centers[which] + torch.randn(n, 2, generator=g) * 0.2 * sizes[which]
    wh = sizes[which] * (1 + 0.25 * torch.randn(n, 2, generator=g)).clamp(min=0.2)
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    scores = (torch.randperm(n, generator=g) + 1.0) / (n + 1)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes.to(dtype), scores.to(dtype), idxs


# ---------------------------------------------------------------- pure function vs reference
@pytest.mark.parametrize(
    "method,sigma,iou_threshold",
    [("gaussian", 0.5, 0.3), ("gaussian", 0.1, 0.3), ("linear", 0.5, 0.3), ("linear", 0.5, 0.6)]
    + [("hard", 0.5, 0.3), ("hard", 0.5, 0.7)],
)
@pytest.mark.parametrize("num_classes", [1, 6])
def test_matches_reference(method, sigma, iou_threshold, num_classes):
    boxes, scores, idxs = clustered_boxes(300, seed=num_classes, num_classes=num_classes)
    args = {"method": method, "sigma": sigma, "iou_threshold": iou_threshold}
    args["score_threshold"] = 0.01
    ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, **args)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, **args)
    assert keep.dtype == torch.int64 and new_scores.dtype == torch.float64
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(new_scores, torch.tensor(ref_scores, dtype=torch.float64))
    if num_classes == 1:
        keep1, scores1 = soft_nms(boxes, scores, **args)
        assert torch.equal(keep1, keep) and torch.equal(scores1, new_scores)


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_float32_matches_reference(method):
    # float32 rounding may swap near-equal scores, so compare per box instead of by position.
    boxes, scores, idxs = clustered_boxes(400, seed=7, num_classes=4, dtype=torch.float32)
    ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, method)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, method)
    assert new_scores.dtype == torch.float32
    assert sorted(keep.tolist()) == sorted(ref_keep)
    got = dict(zip(keep.tolist(), new_scores.tolist()))
    for i, s in zip(ref_keep, ref_scores):
        assert got[i] == pytest.approx(s, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_properties(method):
    boxes, scores, idxs = clustered_boxes(300, seed=3, num_classes=5, dtype=torch.float32)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, method, score_threshold=0.05)
    assert len(set(keep.tolist())) == len(keep)
    assert bool((new_scores <= scores[keep]).all())  # decay never increases a score
    assert bool((new_scores[1:] <= new_scores[:-1]).all())  # non-increasing
    assert bool((new_scores > 0.05).all())
    for c in range(5):  # within a category, the textbook selection order
        in_c = idxs[keep] == c
        assert bool((new_scores[in_c][1:] <= new_scores[in_c][:-1]).all())


def test_hard_equals_torchvision_nms():
    boxes, scores, idxs = clustered_boxes(500, seed=11, num_classes=7, dtype=torch.float32)
    boxes[:20, 2:] = boxes[:20, :2]  # zero-area boxes never suppress (NaN IoU in torchvision)
    for t in (0.3, 0.5, 0.7):
        keep, new_scores = soft_nms(boxes, scores, "hard", iou_threshold=t, score_threshold=0.0)
        assert torch.equal(keep, nms(boxes, scores, t))
        assert torch.equal(new_scores, scores[keep])  # hard NMS never decays a kept score
        keep, _ = batched_soft_nms(boxes, scores, idxs, "hard", iou_threshold=t, score_threshold=0)
        assert torch.equal(keep, batched_nms(boxes, scores, idxs, t))


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_box_without_overlap_keeps_its_score_exactly(method):
    boxes, scores, _ = clustered_boxes(100, seed=5, dtype=torch.float32)
    boxes = torch.cat([boxes, torch.tensor([[1000.0, 1000.0, 1010.0, 1013.0]])])
    scores = torch.cat([scores, torch.tensor([0.123456789])])
    keep, new_scores = soft_nms(boxes, scores, method)
    assert new_scores[keep == 100].item() == scores[100].item()


def test_categories_never_affect_each_other():
    boxes, scores, idxs = clustered_boxes(300, seed=2, num_classes=4)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs)
    for c in range(4):
        members = (idxs == c).nonzero().squeeze(1)
        keep_c, scores_c = soft_nms(boxes[members], scores[members])
        in_c = idxs[keep] == c
        assert torch.equal(keep[in_c], members[keep_c])
        assert torch.equal(new_scores[in_c], scores_c)
    # The same box in two categories: both kept, undecayed.
    keep, new_scores = batched_soft_nms(
        torch.tensor([[0.0, 0, 10, 10]] * 2), torch.tensor([0.9, 0.8]), torch.tensor([3, -1])
    )
    assert keep.tolist() == [0, 1] and new_scores.tolist() == pytest.approx([0.9, 0.8])


def test_by_hand_boundaries_and_ties():
    # IoU exactly at the threshold does not decay ("iou > threshold", like torchvision's nms).
    boxes, scores = torch.tensor([[0.0, 0, 2, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8])
    for method in ("linear", "hard"):
        assert torch.equal(soft_nms(boxes, scores, method, iou_threshold=0.5)[1], scores)
    # Equal current scores: the lower input index is selected first.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    keep, _ = soft_nms(boxes, torch.tensor([0.5, 0.5, 0.9]), "linear")
    assert keep.tolist() == [2, 0] == reference_soft_nms(boxes, [0.5, 0.5, 0.9], method="linear")[0]
    # Equal decayed scores in different categories: the lower category first.
    keep, _ = batched_soft_nms(boxes, torch.tensor([0.5, 0.5, 0.9]), torch.tensor([3, 1, 2]))
    assert keep.tolist() == [2, 1, 0]


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_scale_invariant_down_to_tiny_boxes(method):
    boxes, scores, idxs = clustered_boxes(200, seed=8, num_classes=3)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, method)
    keep_tiny, scores_tiny = batched_soft_nms(boxes * 1e-5, scores, idxs, method)
    assert torch.equal(keep_tiny, keep)
    torch.testing.assert_close(scores_tiny, new_scores)


def test_topk_equals_truncated_full_result():
    boxes, scores, idxs = clustered_boxes(400, seed=4, num_classes=10, dtype=torch.float32)
    for method in ("gaussian", "linear", "hard"):
        keep, new_scores = batched_soft_nms(boxes, scores, idxs, method)
        for k in (0, 1, 7, 50, 1000):
            keep_k, scores_k = batched_soft_nms(boxes, scores, idxs, method, topk=k)
            assert torch.equal(keep_k, keep[:k]) and torch.equal(scores_k, new_scores[:k])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_empty_input_and_dtypes(dtype):
    for n, value in ((0, 0.5), (3, 0.001)):  # empty, and nothing above the score threshold
        boxes = torch.tensor([[0.0, 0, 1, 1]] * n, dtype=dtype).reshape(-1, 4)
        keep, new_scores = soft_nms(boxes, torch.full((n,), value, dtype=dtype))
        assert keep.shape == (0,) and keep.dtype == torch.int64
        assert new_scores.shape == (0,) and new_scores.dtype == dtype
    boxes, scores, idxs = clustered_boxes(100, seed=9, num_classes=3, dtype=dtype)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs)
    assert len(keep) > 0 and keep.dtype == torch.int64 and new_scores.dtype == dtype


_BOX = torch.tensor([[0.0, 0, 1, 1]])
_ONE = torch.tensor([0.5])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"method": "box"}, "method must be one of gaussian, linear, hard; got 'box'"),
        ({"sigma": -1.0}, "sigma must be > 0"),
        ({"sigma": float("inf")}, "sigma must be > 0 and finite"),
        ({"iou_threshold": 1.5}, r"iou_threshold must be in \[0, 1\]"),
        ({"iou_threshold": float("nan")}, "iou_threshold must be in"),
        ({"score_threshold": -0.1}, r"score_threshold must be in \[0, 1\]"),
        ({"boxes": torch.zeros(1, 5)}, r"boxes must be an \(N, 4\) tensor"),
        ({"scores": torch.ones(1, 1)}, r"scores must be an \(N,\) tensor"),
        ({"scores": torch.ones(2)}, "same length"),
        ({"idxs": torch.zeros(2, dtype=torch.int64)}, "same length"),
        ({"idxs": torch.zeros(1)}, "idxs must be an integer tensor"),
        ({"scores": torch.ones(1, dtype=torch.int64)}, "must be floating point"),
        ({"boxes": torch.tensor([[0.0, 0, float("nan"), 1]])}, "boxes contain NaN"),
        ({"scores": torch.tensor([float("inf")])}, "scores contain NaN"),
        ({"topk": -1}, "topk must be None or an int >= 0"),
    ],
)
def test_argument_validation(kwargs, message):
    args = {"boxes": _BOX, "scores": _ONE, "idxs": torch.zeros(1, dtype=torch.int64)} | kwargs
    with pytest.raises(ValueError, match=message):
        batched_soft_nms(**args)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 15), st.integers(0, 15)),
        max_size=25,
    ),
    score_ranks=st.randoms(use_true_random=False),
    num_classes=st.integers(1, 3),
    method=st.sampled_from(["gaussian", "linear", "hard"]),
    sigma=st.floats(0.05, 2.0),
    iou_threshold=st.floats(0.0, 1.0),
    score_threshold=st.sampled_from([0.0, 0.001, 0.1]),
)
def test_hypothesis_matches_reference(
    data, score_ranks, num_classes, method, sigma, iou_threshold, score_threshold
):
    # Integer boxes (some empty, many identical) with distinct scores (ties are ambiguous).
    n = len(data)
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in data], dtype=torch.float64)
    ranks = list(range(1, n + 1))
    score_ranks.shuffle(ranks)
    scores = torch.tensor(ranks, dtype=torch.float64) / (n + 1)
    idxs = torch.tensor([score_ranks.randrange(num_classes) for _ in range(n)], dtype=torch.int64)
    args = {"method": method, "sigma": sigma, "iou_threshold": iou_threshold}
    args["score_threshold"] = score_threshold
    ref_keep, ref_scores = reference_soft_nms(boxes.reshape(-1, 4), scores, idxs, **args)
    keep, new_scores = batched_soft_nms(boxes.reshape(-1, 4), scores, idxs, **args)
    assert keep.tolist() == ref_keep
    torch.testing.assert_close(new_scores, torch.tensor(ref_scores, dtype=torch.float64))


# ---------------------------------------------------------------- Detectron2 integration
def expected_detections(boxes, scores, shape, score_thresh, topk, soft_nms_score_threshold, sigma):
    """Plain-Python expectation of one image's (rows, classes, scores, boxes) detections.

    As Detectron2: skip rows with non-finite values, clip boxes to the image, take every
    (row, class) with score > score_thresh; then reference Soft-NMS (gaussian, `sigma`) per
    class and the top `topk` by decayed score.
    """
    num_classes = scores.shape[1] - 1
    cand, cand_boxes, cand_scores = [], [], []
    for r in range(len(boxes)):
        if not (torch.isfinite(boxes[r]).all() and torch.isfinite(scores[r]).all()):
            continue
        for c in range(num_classes):
            if scores[r, c] > score_thresh:
                b = boxes[r, (4 * c if boxes.shape[1] > 4 else 0) :][:4].tolist()
                cand.append((r, c))
                cand_boxes.append([min(max(v, 0.0), shape[1 - k % 2]) for k, v in enumerate(b)])
                cand_scores.append(scores[r, c].item())
    keep, new_scores = reference_soft_nms(
        cand_boxes,
        cand_scores,
        [c for _, c in cand],
        sigma=sigma,
        score_threshold=soft_nms_score_threshold,
    )
    keep = keep[:topk]
    return (
        [cand[k][0] for k in keep],
        [cand[k][1] for k in keep],
        torch.tensor(new_scores[:topk]),
        torch.tensor(cand_boxes).reshape(-1, 4)[keep],
    )


@pytest.mark.parametrize(
    "method,expected", [("gaussian", 0.8 * math.exp(-(1 / 9) / 0.6)), ("linear", 0.8 * 2 / 3)]
)
def test_predictor_two_boxes_by_hand(method, expected):
    # IoU([0,0,10,10], [5,0,15,10]) = 50 / 150 = 1/3; class probabilities 0.9 and 0.8; the
    # predictor's default Gaussian sigma is the paper's 0.6.
    proposals = Instances((20, 30))
    proposals.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]]))
    predictions = (torch.tensor([[math.log(9.0), 0.0], [math.log(4.0), 0.0]]), torch.zeros(2, 4))
    for method_, scores in ((method, [0.9, expected]), ("hard", [0.9])):
        predictor = SoftNMSFastRCNNOutputLayers(
            ShapeSpec(channels=4),
            box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
            num_classes=1,
            soft_nms_enabled=True,
            soft_nms_method=method_,
        )
        (result,), (rows,) = predictor.inference(predictions, [proposals])
        assert result.scores.tolist() == pytest.approx(scores, rel=1e-6)
        assert rows.tolist() == [0, 1][: len(scores)] and set(result.pred_classes.tolist()) == {0}
        boxes = proposals.proposal_boxes.tensor[: len(scores)]
        torch.testing.assert_close(result.pred_boxes.tensor, boxes)


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_fast_rcnn_inference_soft_nms_matches_reference(class_agnostic):
    g = torch.Generator().manual_seed(0)
    num_rows, num_classes, shape = 60, 4, (100, 120)
    base = clustered_boxes(num_rows, seed=1, dtype=torch.float32)[0] * 0.6
    boxes = base.repeat(1, 1 if class_agnostic else num_classes)
    boxes += torch.randn(boxes.shape, generator=g) * 2
    scores = torch.randn(num_rows, num_classes + 1, generator=g).mul(2).softmax(-1)
    boxes[5, 0] = float("nan")  # dropped, and kept indices still refer to input rows
    (result,), (rows,) = fast_rcnn_inference_soft_nms(
        [boxes], [scores], [shape], 0.05, "gaussian", 0.5, 0.3, 0.01, 20
    )
    exp_rows, exp_classes, exp_scores, exp_boxes = expected_detections(
        boxes, scores, shape, 0.05, 20, 0.01, sigma=0.5
    )
    assert len(exp_rows) == 20 and rows.tolist() == exp_rows
    assert result.pred_classes.tolist() == exp_classes
    torch.testing.assert_close(result.scores, exp_scores)
    torch.testing.assert_close(result.pred_boxes.tensor, exp_boxes)


def _tiny_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def _swap_in_soft_nms_predictor(model, cfg):
    """Replace the box predictor like the ROI heads will, keeping its weights."""
    state = model.roi_heads.box_predictor.state_dict()
    shape = model.roi_heads.box_head.output_shape
    model.roi_heads.box_predictor = SoftNMSFastRCNNOutputLayers(cfg, shape)
    model.roi_heads.box_predictor.load_state_dict(state)
    return model


def test_disabled_predictor_is_exactly_detectron2():
    from conftest import make_batch, tiny_cfg

    cfg = tiny_cfg()
    assert cfg.TEST.SOFT_NMS.ENABLED is False
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in make_batch()]
    model = _tiny_model(cfg).eval()
    outputs = []
    for _ in range(2):
        with torch.no_grad():
            outputs.append([o["instances"] for o in model(batch)])
        _swap_in_soft_nms_predictor(model, cfg)
    for parent, ours in zip(*outputs):
        assert len(parent) > 0
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            a, b = parent.get(field), ours.get(field)
            a, b = (a.tensor, b.tensor) if isinstance(a, Boxes) else (a, b)
            assert torch.equal(a, b), field


def test_enabled_predictor_in_a_model():
    from conftest import make_batch, tiny_cfg

    cfg = tiny_cfg()
    cfg.TEST.SOFT_NMS.ENABLED = True
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    model = _swap_in_soft_nms_predictor(_tiny_model(cfg), cfg).eval()
    predictor = model.roi_heads.box_predictor
    calls = []
    inference = predictor.inference

    def spy(predictions, proposals):
        calls.append((predictions, proposals, inference(predictions, proposals)))
        return calls[-1][2]

    predictor.inference = spy
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in make_batch()]
    with torch.no_grad():
        outputs = [o["instances"] for o in model(batch)]
    (predictions, proposals, (results, _)) = calls[0]
    all_boxes = predictor.predict_boxes(predictions, proposals)
    all_scores = predictor.predict_probs(predictions, proposals)
    for out, res, boxes, scores, props in zip(outputs, results, all_boxes, all_scores, proposals):
        assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(out.get_fields())
        assert 0 < len(out) <= 7 and torch.equal(out.scores, res.scores)
        assert bool((out.scores[1:] <= out.scores[:-1]).all())
        # The decayed scores of Soft-NMS over the candidates (scores > SCORE_THRESH_TEST), with
        # the paper's setting as the default: Gaussian, sigma 0.6, score threshold 0.001.
        _, classes, exp_scores, _ = expected_detections(
            boxes, scores, props.image_size, 0.05, 7, 0.001, sigma=0.6
        )
        assert res.pred_classes.tolist() == classes
        torch.testing.assert_close(res.scores, exp_scores)


def test_training_is_unchanged():
    from conftest import make_batch, tiny_cfg

    cfg = tiny_cfg()
    cfg.TEST.SOFT_NMS.ENABLED = True
    model = _tiny_model(cfg).train()
    losses = []
    for _ in range(2):
        torch.manual_seed(1)  # the same proposal sampling
        with EventStorage():
            losses.append({k: v.item() for k, v in model(make_batch()).items()})
        _swap_in_soft_nms_predictor(model, cfg)
    assert isinstance(model.roi_heads.box_predictor, SoftNMSFastRCNNOutputLayers)
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("SIGMA", -1.0, "TEST.SOFT_NMS.SIGMA must be > 0 and finite, got -1"),
        ("METHOD", "soft", "TEST.SOFT_NMS.METHOD must be one of gaussian, linear, hard"),
        ("IOU_THRESHOLD", 1.5, r"TEST.SOFT_NMS.IOU_THRESHOLD must be in \[0, 1\], got 1.5"),
        ("SCORE_THRESHOLD", -0.5, r"TEST.SOFT_NMS.SCORE_THRESHOLD must be in \[0, 1\]"),
        ("ENABLED", "yes", "TEST.SOFT_NMS.ENABLED must be a bool"),
    ],
)
def test_config_validation(key, value, message):
    from conftest import tiny_cfg

    cfg = tiny_cfg()
    cfg.TEST.SOFT_NMS[key] = value
    with pytest.raises(ValueError, match=message):
        SoftNMSFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
