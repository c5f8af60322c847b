"""Property-based checks against independent brute force: MaskIoU targets for random boxes and
random masks (several RoIs and classes per image) vs the full-resolution IoU, and Soft-NMS vs a
plain reference (and its hard mode vs torchvision's NMS)."""

import math

import numpy as np
import torch
import torchvision
from detectron2.structures import BitMasks, Boxes, Instances
from hypothesis import given, settings
from hypothesis import strategies as st
from test_soft_nms import reference_soft_nms

from ms_rcnn import batched_soft_nms, mask_iou_targets

# ------------------------------------------------------------------ MaskIoU targets


def random_mask(rng, h, w, kind):
    m = np.zeros((h, w), bool)
    if kind == "pixel":
        m[rng.integers(h), rng.integers(w)] = True
    elif kind == "blobs":
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(-4, h), rng.integers(-4, w)
            m[max(y0, 0) : y0 + rng.integers(1, 16), max(x0, 0) : x0 + rng.integers(1, 16)] = True
    elif kind == "noise":
        m = rng.random((h, w)) < rng.uniform(0.05, 0.6)
    return m  # "empty": no pixel


@st.composite
def roi_cases(draw):
    """One image: 1-4 GT masks of random kinds, 1-5 RoIs with integer boxes of size
    (kx * M) x (ky * M) inside the image, each matched to a random GT (and mostly placed over
    one of its pixels, so that most targets are not 0), K classes."""
    m = draw(st.sampled_from([2, 4, 7]))
    h, w = draw(st.integers(16, 40)), draw(st.integers(16, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = st.sampled_from(["blobs", "noise", "blobs", "pixel", "empty"])
    gts = np.stack(
        [random_mask(rng, h, w, k) for k in draw(st.lists(kinds, min_size=1, max_size=4))]
    )
    num_classes = draw(st.integers(1, 3))
    rois = []
    for _ in range(draw(st.integers(1, 5))):
        bw, bh = m * draw(st.integers(1, w // m)), m * draw(st.integers(1, h // m))
        g = draw(st.integers(0, len(gts) - 1))
        ys, xs = np.nonzero(gts[g])
        if len(ys) and draw(st.booleans()) or draw(st.booleans()):
            k = rng.integers(len(ys)) if len(ys) else 0
            py, px = (ys[k], xs[k]) if len(ys) else (h // 2, w // 2)
            x0 = rng.integers(max(0, px - bw + 1), min(px, w - bw) + 1)
            y0 = rng.integers(max(0, py - bh + 1), min(py, h - bh) + 1)
        else:
            x0, y0 = rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1)
        rois.append((int(x0), int(y0), int(x0) + bw, int(y0) + bh, g))
    logits = rng.integers(-3, 4, (len(rois), num_classes, m, m)).astype(np.float32)
    classes = rng.integers(0, num_classes, len(rois))
    return gts, rois, logits, classes


def full_resolution_iou(cells, box, gt):
    """IoU over the image of the prediction (each cell filling its block of the box) and the
    whole GT mask, with its error bound from blocks that mix GT and background.

    An integer box of (kx*M) x (ky*M) makes each M x M cell exactly a kx x ky pixel block, and
    the crop the target uses marks a cell as GT iff at least half its block is GT, so each mixed
    block moves G_in and I by at most A/2 pixels (A = kx*ky). With delta = (#mixed blocks) A/2:
    |dI| <= delta, |dG_full| <= delta * G / G_in (the ratio rescales the in-box count), and
    |I'/U' - I/U| = |dI - t dU| / U' <= (delta + t |dU|) / (U - |dU|)."""
    x0, y0, x1, y1 = box
    m = cells.shape[0]
    ky, kx = (y1 - y0) // m, (x1 - x0) // m
    pasted = np.zeros_like(gt)
    pasted[y0:y1, x0:x1] = np.kron(cells, np.ones((ky, kx), bool))
    inter, union = (pasted & gt).sum(), (pasted | gt).sum()
    t = inter / union if union else 0.0
    blocks = gt[y0:y1, x0:x1].reshape(m, ky, m, kx).sum((1, 3))
    delta = np.count_nonzero((blocks > 0) & (blocks < kx * ky)) * kx * ky / 2
    if delta == 0:
        return t, 1e-5  # float32 rounding only
    g_in = blocks.sum()
    d_union = delta * (1 + gt.sum() / g_in)
    return t, (delta + t * d_union) / (union - d_union) if union > d_union else 1.0


@settings(max_examples=80, deadline=None)
@given(roi_cases())
def test_targets_match_full_resolution_iou(case):
    gts, rois, logits, classes = case
    h, w = gts.shape[1:]
    inst = Instances((h, w))
    inst.proposal_boxes = Boxes(torch.tensor([r[:4] for r in rois], dtype=torch.float32))
    inst.gt_masks = BitMasks(torch.from_numpy(gts[[r[4] for r in rois]]))
    inst.gt_classes = torch.from_numpy(classes)
    targets = mask_iou_targets(torch.from_numpy(logits), [inst], 0.0).tolist()
    for k, (roi, t) in enumerate(zip(rois, targets)):
        assert math.isfinite(t) and 0.0 <= t <= 1.0
        channel = classes[k] if logits.shape[1] > 1 else 0
        expected, tol = full_resolution_iou(logits[k, channel] > 0, roi[:4], gts[roi[4]])
        assert abs(t - expected) <= tol + 1e-6, (k, t, expected, tol)
        if not gts[roi[4]][roi[1] : roi[3], roi[0] : roi[2]].any():
            assert t == 0.0  # no GT inside the box: target 0, left out of the loss


# ------------------------------------------------------------------ Soft-NMS
# Against the one plain-loop reference of tests/test_soft_nms.py (the paper's pseudo-code over
# Python lists in float64), on hypothesis-drawn box sets with empty boxes and several labels.


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centres = rng.uniform(0, 100, (n, 2))
    sizes = rng.uniform(0.5, 40, (n, 2)) * (rng.random((n, 1)) > 0.05)  # a few empty boxes
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)
    scores = rng.permutation(n) / max(n, 1) * 0.9 + rng.uniform(0.01, 0.09)  # distinct
    labels = rng.integers(0, draw(st.integers(1, 3)), n)
    return boxes, scores, labels


@settings(max_examples=60, deadline=None)
@given(
    box_sets(),
    st.sampled_from(["gaussian", "linear", "hard"]),
    st.floats(0.05, 2.0),
    st.floats(0.05, 0.95),
    st.sampled_from([0.0, 0.001, 0.05]),
)
def test_soft_nms_matches_plain_reference(data, method, sigma, threshold, min_score):
    boxes, scores, labels = data
    keep, new = batched_soft_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
        method, sigma, threshold, min_score,
    )  # fmt: skip
    ref_keep, ref_scores = reference_soft_nms(
        boxes, scores, labels, method, sigma, threshold, min_score
    )
    assert keep.tolist() == ref_keep
    np.testing.assert_allclose(new.numpy(), ref_scores, rtol=1e-12, atol=0)
    assert np.all(new.numpy() <= scores[keep.numpy()])  # decay only lowers scores


@settings(max_examples=60, deadline=None)
@given(box_sets(), st.floats(0.05, 0.95))
def test_hard_mode_is_torchvision_nms(data, threshold):
    boxes, scores, labels = data
    b, s, lab = (torch.from_numpy(x) for x in (boxes, scores, labels))
    keep, new = batched_soft_nms(b, s, lab, "hard", 0.5, threshold, 0.0)
    assert keep.tolist() == torchvision.ops.batched_nms(b, s, lab, threshold).tolist()
    assert torch.equal(new, s[keep])
