"""Tests for ms_rcnn.modeling.maskiou_targets.

Expectations come from independent computations, not from the code under test:
- a brute-force IoU at image resolution: the binarized M x M prediction is pasted back into its
  box (nearest neighbour: an image pixel whose centre lies in the box takes the value of the cell
  containing that centre) and compared with the whole GT mask with numpy;
- supersampled pixel coverage for the bitmask area ratio with fractional boxes;
- Sutherland-Hodgman clipping + shoelace for the polygon area ratio;
- numbers worked out by hand.
"""

import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from hypothesis import given, settings
from hypothesis import strategies as st

import ms_rcnn.modeling.maskiou_targets as mt
from ms_rcnn.modeling.maskiou_targets import mask_iou_targets

# ----------------------------------------------------------------------------- helpers


def make_instances(image_hw, boxes, masks, classes=None):
    """Instances for one image; `masks` is an (R, H, W) bool array or a list of polygon lists."""
    inst = Instances(tuple(image_hw))
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    if isinstance(masks, np.ndarray):
        inst.gt_masks = BitMasks(torch.from_numpy(masks))
    else:
        inst.gt_masks = PolygonMasks(masks)
    inst.gt_classes = torch.as_tensor(classes if classes is not None else [0] * len(boxes))
    return inst


def raster(polys, h, w):
    """pycocotools rasterization of one instance's polygon parts (union), at image resolution."""
    rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in polys], h, w))
    return mask_util.decode(rle).astype(bool)


def paste(pred_cells, box, h, w):
    """Nearest-neighbour paste of an (M, M) bool mask into box on an (h, w) canvas."""
    m = pred_cells.shape[0]
    x1, y1, x2, y2 = box
    cx, cy = np.arange(w) + 0.5, np.arange(h) + 0.5
    in_x, in_y = (cx >= x1) & (cx < x2), (cy >= y1) & (cy < y2)
    col = np.clip(np.floor((cx - x1) * m / (x2 - x1)).astype(int), 0, m - 1)
    row = np.clip(np.floor((cy - y1) * m / (y2 - y1)).astype(int), 0, m - 1)
    out = pred_cells[row[:, None], col[None, :]]
    return out & in_y[:, None] & in_x[None, :]


def brute_iou(pred_cells, box, gt):
    """IoU of the pasted prediction and the whole GT mask, over the whole image."""
    pasted = paste(pred_cells, box, *gt.shape)
    union = (pasted | gt).sum()
    return (pasted & gt).sum() / union if union else 0.0


def block_bound(pred_cells, box, gt):
    """Brute-force IoU and a bound on |area-ratio target - brute-force IoU| for integer boxes of
    side k*M inside the image. The crop cell is on iff its k x k block has >= k^2/2 GT pixels
    (aligned RoIAlign samples pixel centres exactly), so each block mixing GT and background
    shifts I and G_in by at most k^2/2 pixels: with delta = (#mixed blocks) * k^2/2, |dI| <= delta,
    |dG_full| <= delta * G/A_in, and |I'/U' - I/U| <= (|dI| + t |dU|) / (U - |dU|)."""
    m = pred_cells.shape[0]
    x1, y1, x2, y2 = (int(v) for v in box)
    k = (x2 - x1) // m
    blocks = gt[y1:y2, x1:x2].reshape(m, k, m, k).sum((1, 3))
    delta = np.count_nonzero((blocks > 0) & (blocks < k * k)) * k * k / 2
    t = brute_iou(pred_cells, box, gt)
    pasted = paste(pred_cells, box, *gt.shape)
    union, a_in = (pasted | gt).sum(), blocks.sum()
    if delta == 0:
        return t, 1e-5  # float32 rounding only
    d_union = delta * (1 + gt.sum() / max(a_in, 1))
    return t, (delta + t * d_union) / max(union - d_union, 1e-9)


def disk(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def run(pred_cells_list, inst_list, num_classes=1, device="cpu", **kw):
    """Class-agnostic logits (+4 / -4) from a list of (M, M) bool cells, on `device` with the
    instances (as in training, where Detectron2 moves them there); the targets on the CPU."""
    cells = torch.from_numpy(np.stack(pred_cells_list)).float()
    logits = (cells * 8 - 4)[:, None].repeat(1, num_classes, 1, 1).to(device)
    out = mask_iou_targets(logits, [inst.to(device) for inst in inst_list], **kw)
    assert out.device == logits.device
    return out.cpu()


# ----------------------------------------------------------------------------- brute force


@pytest.mark.device
@pytest.mark.parametrize("fmt", ["bitmask", "polygon"])
def test_matches_brute_force_k1(fmt, device):
    """Integer boxes of side M (one pixel per cell): every quantity is exact -> tolerance 1e-5."""
    h, w, m = 100, 80, 28
    rng = np.random.default_rng(0)
    # Rectilinear integer polygons rasterize exactly with pycocotools, so both formats agree.
    polys = [
        [[10, 20, 50, 20, 50, 40, 30, 40, 30, 70, 10, 70]],  # L shape, partly outside box 0
        [[40, 5, 75, 5, 75, 30, 40, 30], [60, 50, 70, 50, 70, 95, 60, 95]],  # two parts
        [[0, 0, 12, 0, 12, 12, 0, 12]],  # touches the image corner
    ]
    boxes = [[5, 30, 33, 58], [45, 10, 73, 38], [0, 0, 28, 28], [60, 40, 88, 68]]
    gts = [polys[0], polys[1], polys[2], polys[1]]
    # The last box leaves the image on the right; the GT does not touch that border (RoIAlign
    # replicates the border pixel one sample beyond the image, see the module report).
    dense = np.stack([raster(p, h, w) for p in gts])
    masks = dense if fmt == "bitmask" else gts
    pred = [rng.random((m, m)) < p for p in (0.3, 0.6, 0.9, 0.5)]
    out = run(pred, [make_instances((h, w), boxes, masks)], device=device)
    pad = 30  # brute force on a zero-padded canvas so the out-of-image part of a box counts
    for i, (box, gt) in enumerate(zip(boxes, dense)):
        gt_pad = np.pad(gt, pad)
        expected = brute_iou(pred[i], [v + pad for v in box], gt_pad)
        assert out[i].item() == pytest.approx(expected, abs=1e-5), i


@pytest.mark.device
@pytest.mark.parametrize("fmt", ["bitmask", "polygon"])
def test_matches_brute_force_k2(fmt, device):
    """Boxes of side 2M: a GT edge crossing a 2x2 block rounds that cell; block_bound() turns
    the number of such blocks into the tolerance. Block-aligned shapes must match exactly."""
    h, w, m = 64, 96, 28
    rng = np.random.default_rng(1)
    polys = [
        [[4, 4, 40, 4, 40, 60, 4, 60]],  # block-aligned in box 0, extends beyond it
        [[33, 9, 90, 9, 90, 21, 57, 21, 57, 50, 33, 50]],  # odd offsets -> mixed blocks
    ]
    boxes = [[0, 0, 56, 56], [30, 6, 86, 62]]
    dense = np.stack([raster(p, h, w) for p in polys])
    pred = [rng.random((m, m)) < 0.6, rng.random((m, m)) < 0.4]
    masks = dense if fmt == "bitmask" else polys
    out = run(pred, [make_instances((h, w), boxes, masks)], device=device)
    for i in range(2):
        expected, tol = block_bound(pred[i], boxes[i], dense[i])
        assert tol < 0.15  # the bound is informative, not vacuous
        assert abs(out[i].item() - expected) <= tol, (i, out[i].item(), expected, tol)
    assert out[0].item() == pytest.approx(brute_iou(pred[0], boxes[0], dense[0]), abs=1e-5)


def test_polygon_non_rectilinear_brute_force():
    """Slanted polygons: the target uses the analytic area ratio while the brute force uses the
    pycocotools raster, which differs along slanted edges by a fraction of a pixel per unit of
    perimeter. For these shapes (area >= ~400 px, perimeter <= ~120 px) that bounds the ratio
    error by a few percent; 0.03 absolute on the IoU covers it."""
    h, w, m = 80, 80, 28
    rng = np.random.default_rng(2)
    ang = np.linspace(0, 2 * np.pi, 9)[:-1]
    octagon = np.stack([40 + 18 * np.cos(ang), 35 + 14 * np.sin(ang)], 1).ravel()
    polys = [[octagon.tolist()], [[10, 50, 60, 58, 20, 78]]]
    boxes = [[20, 10, 48, 38], [14, 52, 42, 80]]
    pred = [disk(m, m, 16, 16, 12), rng.random((m, m)) < 0.5]
    out = run(pred, [make_instances((h, w), boxes, polys)])
    for i in range(2):
        expected = brute_iou(pred[i], boxes[i], raster(polys[i], h, w))
        assert out[i].item() == pytest.approx(expected, abs=0.03), i


@pytest.mark.device
def test_hand_computed(device):
    """M = 4, image 8x8, box [0, 0, 4, 4] (one pixel per cell).
    GT: rows 1-2, cols 2-5 -> whole area 8; inside the box cols 2-3 -> 4, so r = 4/8 = 0.5.
    Pred: rows 1-2, cols 1-3 -> P = 6.  Crop: rows 1-2, cols 2-3 -> G_in = 4.  I = 4.
    G_full = G_in / r = 8; union = P + G_full - I = 6 + 8 - 4 = 10; t = 4/10 = 0.4.
    (Without the ratio: 4 / (6 + 4 - 4) = 0.667, the overestimate the trick corrects.)"""
    gt = np.zeros((1, 8, 8), bool)
    gt[0, 1:3, 2:6] = True
    logits = torch.full((1, 1, 4, 4), -3.0)
    logits[0, 0, 1:3, 1:4] = 3.0
    logits = logits.to(device)
    out = mask_iou_targets(logits, [make_instances((8, 8), [[0, 0, 4, 4]], gt).to(device)])
    assert out.device == logits.device and out.tolist() == pytest.approx([0.4])
    polys = [[[2, 1, 6, 1, 6, 3, 2, 3]]]
    inst = make_instances((8, 8), [[0, 0, 4, 4]], polys).to(device)
    assert mask_iou_targets(logits, [inst]).tolist() == pytest.approx([0.4])


# ----------------------------------------------------------------------------- area ratios


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("chunk", [1 << 24, 2 * 12 * 10])
def test_bitmask_ratio_fractional_boxes_supersampled(shared, chunk, monkeypatch):
    """Fractional box coverage equals counting sub-pixel samples: with s x s sub-samples per
    pixel and box coordinates on the 1/s grid, the count is exact. Includes boxes leaving the
    image, a box inside a single pixel column, and an inverted box. With one mask per RoI or RoIs
    sharing masks through an index, with and without chunking (two masks per chunk)."""
    monkeypatch.setattr(mt, "_BITMASK_CHUNK_ELEMS", chunk)
    s, h, w = 4, 12, 10
    rng = np.random.default_rng(3)
    boxes = np.array(
        [[0.25, 0.5, 3.75, 7.0], [2.5, 1.25, 9.75, 11.5], [-2.0, -1.5, 4.25, 3.0],
         [7.5, 9.0, 13.0, 15.25], [0, 0, 10, 12], [5.0, 5.0, 4.0, 8.0], [3.25, 2.0, 3.75, 9.5]]
    )  # fmt: skip
    distinct = rng.random((3 if shared else 7, h, w)) < 0.5
    index = np.array([2, 0, 1, 0, 2, 1, 2]) if shared else np.arange(7)
    c = (np.arange(h * s) + 0.5) / s, (np.arange(w * s) + 0.5) / s
    expected = []
    for k, (x1, y1, x2, y2) in zip(index, boxes):
        fine = distinct[k].repeat(s, 0).repeat(s, 1)
        sel = ((c[0] > y1) & (c[0] < y2))[:, None] & ((c[1] > x1) & (c[1] < x2))[None, :]
        expected.append((fine & sel).sum() / fine.sum())
    got = mt._bitmask_area_ratio(
        torch.from_numpy(distinct),
        torch.from_numpy(index),
        torch.tensor(boxes, dtype=torch.float32),
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("with_index", [False, True])
def test_shared_crop_is_detectron2_crop(with_index, monkeypatch):
    """gt_mask_crops gives Detectron2's crop bit for bit, also when RoIs share GT masks through
    gt_index (each distinct mask converted once) and across chunk boundaries; targets from the
    shared crops equal targets computed from scratch."""
    monkeypatch.setattr(mt, "_BITMASK_CHUNK_ELEMS", 2 * 30 * 40)  # two masks per chunk
    rng = np.random.default_rng(6)
    gts = torch.from_numpy(rng.random((5, 30, 40)) < 0.4)
    gt_index = torch.tensor([3, 0, 4, 3, 1, 0, 4, 4, 2])
    boxes = torch.tensor(rng.uniform(-5, 45, (9, 4)), dtype=torch.float32)
    boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], 1)
    inst = Instances((30, 40), proposal_boxes=Boxes(boxes), gt_masks=BitMasks(gts[gt_index]))
    if with_index:
        inst.gt_index = gt_index
    expected = BitMasks(gts[gt_index]).crop_and_resize(boxes, 7)
    (got,) = mt.gt_mask_crops([inst], 7)
    assert torch.equal(got, expected)
    logits = torch.randn(9, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    shared = mask_iou_targets(logits, [inst], gt_crops=got)
    assert torch.equal(shared, mask_iou_targets(logits, [inst]))
    with pytest.raises(ValueError, match="gt_crops"):
        mask_iou_targets(logits, [inst], gt_crops=got[:, :6])


def shoelace(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_area(pts, box):
    """Sutherland-Hodgman clip of a simple polygon to an axis-aligned box, then shoelace."""
    x1, y1, x2, y2 = box
    for axis, bound, keep_ge in ((0, x1, True), (0, x2, False), (1, y1, True), (1, y2, False)):
        inside = lambda p, a=axis, b=bound, g=keep_ge: p[a] >= b if g else p[a] <= b  # noqa: E731
        out = []
        for i in range(len(pts)):
            p, q = pts[i - 1], pts[i]
            if inside(q) != inside(p):
                f = (bound - p[axis]) / (q[axis] - p[axis])
                out.append((p[0] + f * (q[0] - p[0]), p[1] + f * (q[1] - p[1])))
            if inside(q):
                out.append(q)
        pts = out
        if not pts:
            return 0.0
    return shoelace(np.array(pts))


def test_polygon_ratio_matches_clipping():
    """Analytic per-edge integral vs Sutherland-Hodgman, for random simple polygons (star-shaped,
    both orientations, several parts per instance, boxes cutting them anywhere)."""
    rng = np.random.default_rng(4)
    polygons, boxes, expected = [], [], []
    for _ in range(150):
        parts, inside, whole = [], 0.0, 0.0
        bx, by = np.sort(rng.uniform(0, 60, 2)), np.sort(rng.uniform(0, 60, 2))
        box = (bx[0], by[0], bx[1], by[1])
        for _ in range(rng.integers(1, 3)):
            n = rng.integers(3, 12)
            ang = (np.arange(n) + rng.uniform(0, 0.9, n)) * 2 * np.pi / n  # gaps < pi: simple
            rad = rng.uniform(3, 15, n)
            c = rng.uniform(5, 55, 2)
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
            pts = pts[::-1] if rng.random() < 0.5 else pts
            parts.append(pts.ravel())
            inside += clip_area([tuple(p) for p in pts], box)
            whole += shoelace(pts)
        polygons.append(parts)
        boxes.append(box)
        expected.append(min(inside / whole, 1.0))
    got = mt._polygon_area_ratio(polygons, torch.tensor(boxes))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


# ----------------------------------------------------------------------------- semantics


def test_threshold_semantics():
    """Logit exactly 0 is background at threshold 0 (strict >). Logits in (0, 0.5], i.e.
    probabilities in (0.5, 0.622], count at threshold 0 but not at 0.5 (mmdetection's rule)."""
    gt = np.zeros((1, 8, 8), bool)
    gt[0, :4, :4] = True  # exactly the box, r = 1, G_in = 16
    inst = [make_instances((8, 8), [[0, 0, 4, 4]], gt)]
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[0, 0, :2] = 0.3  # 8 cells with p = 0.574
    logits[0, 0, 2, :] = 0.0  # 4 cells with p = 0.5 exactly
    assert mask_iou_targets(logits, inst).item() == pytest.approx(8 / 16)
    assert mask_iou_targets(logits, inst, mask_threshold=0.5).item() == 0.0
    logits[0, 0, 3] = 0.6
    assert mask_iou_targets(logits, inst, mask_threshold=0.5).item() == pytest.approx(4 / 16)
    assert mask_iou_targets(logits, inst, mask_threshold=-0.1).item() == pytest.approx(1.0)


def test_class_channel_selection():
    gt = np.zeros((2, 8, 8), bool)
    gt[:, :4, :4] = True
    inst = [make_instances((8, 8), [[0, 0, 4, 4]] * 2, gt, classes=[2, 0])]
    logits = torch.full((2, 3, 4, 4), 9.0)  # garbage: everything foreground
    logits[0, 2] = -9.0
    logits[0, 2, :2] = 9.0  # class 2 of RoI 0: half the box
    logits[1, 0] = -9.0  # class 0 of RoI 1: nothing
    assert mask_iou_targets(logits, inst).tolist() == [0.5, 0.0]
    # Class-agnostic: channel 0, and gt_classes are neither needed nor range-checked.
    agnostic = logits[:, 2:3].clone()
    inst[0].remove("gt_classes")
    assert mask_iou_targets(agnostic, inst).tolist() == [0.5, 1.0]


@pytest.mark.device
def test_multiple_images_and_empty(device):
    h, w, m = 40, 50, 8
    rng = np.random.default_rng(5)
    imgs = []
    for n in (3, 0, 1, 2):
        gt = np.zeros((n, h, w), bool)
        for j in range(n):
            gt[j] = disk(h, w, *rng.uniform(10, 35, 2), 8)
        xy = rng.integers(0, 30, (n, 2))
        boxes = np.concatenate([xy, xy + rng.integers(5, 20, (n, 2))], 1).tolist()
        inst = make_instances((h, w), boxes, gt, classes=rng.integers(0, 4, n).tolist())
        imgs.append(inst.to(device))
    logits = torch.randn(6, 4, m, m, device=device)
    out = mask_iou_targets(logits, imgs)
    per_image = [mask_iou_targets(logits[:3], imgs[:1]), mask_iou_targets(logits[3:4], imgs[2:3])]
    per_image.append(mask_iou_targets(logits[4:], imgs[3:]))
    assert torch.equal(out, torch.cat(per_image))
    assert out.dtype == torch.float32 and out.shape == (6,)
    # Empty: no images, only empty images, zero-RoI logits.
    empty = torch.zeros(0, 4, m, m, device=device)
    assert mask_iou_targets(empty, []).shape == (0,)
    assert mask_iou_targets(empty, [imgs[1], imgs[1]]).device == empty.device


@pytest.mark.parametrize("fmt", ["bitmask", "polygon"])
def test_degenerate_gt_gives_zero(fmt):
    h = w = 32
    polys = [
        [[20, 20, 30, 20, 30, 30, 20, 30]],  # entirely outside box [0, 0, 8, 8]
        [[2, 2, 6, 6, 4, 4]],  # collinear: zero area
        [[8, 0, 16, 0, 16, 8, 8, 8]],  # touches the box edge x = 8 from outside
    ]
    dense = np.stack([raster(p, h, w) for p in polys])
    assert dense[1].sum() == 0
    masks = dense if fmt == "bitmask" else polys
    inst = make_instances((h, w), [[0, 0, 8, 8]] * 3, masks)
    for fill in (5.0, -5.0, 0.0):
        out = mask_iou_targets(torch.full((3, 1, 4, 4), fill), [inst])
        assert out.tolist() == [0.0, 0.0, 0.0], (fill, out)


def test_zero_targets_without_nan():
    """(a) A one-pixel GT inside the box that the crop misses (G_in = 0, r > 0) with an empty
    prediction: P + G_full - I = 0, so only the union floor avoids 0/0.
    (b) A box beyond the image's right edge, GT touching that edge: RoIAlign replicates the
    border column into the crop (G_in > 0) although no GT lies in the box (r = 0). Without the
    explicit rule the target would be I / (P + G_in / 1e-10 - I) ~ 1e-10, not 0."""
    gt = np.zeros((2, 8, 8), bool)
    gt[0, 3, 3] = True
    gt[1, :, 7] = True
    inst = make_instances((8, 8), [[0, 0, 8, 8], [8, 0, 12, 4]], gt)
    assert inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, 4).flatten(1).sum(
        1
    ).tolist() == [0, 4]
    logits = torch.stack([torch.full((1, 4, 4), -5.0), torch.full((1, 4, 4), 5.0)])
    assert mask_iou_targets(logits, [inst]).tolist() == [0.0, 0.0]


@pytest.mark.device
@pytest.mark.parametrize("fmt", ["bitmask", "polygon"])
def test_no_grad_device_dtype(fmt, device):
    gt = np.zeros((1, 8, 8), bool)
    gt[0, 2:6, 2:6] = True
    masks = gt if fmt == "bitmask" else [[[2, 2, 6, 2, 6, 6, 2, 6]]]
    logits = torch.randn(1, 1, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = mask_iou_targets(logits, [make_instances((8, 8), [[0, 0, 8, 8]], masks).to(device)])
    assert not out.requires_grad and out.dtype == torch.float32 and out.device == logits.device


def test_validation_errors():
    gt = np.zeros((2, 8, 8), bool)
    inst = [make_instances((8, 8), [[0, 0, 4, 4]] * 2, gt, classes=[0, 3])]
    with pytest.raises(ValueError, match="shape"):
        mask_iou_targets(torch.zeros(2, 4, 4), inst)
    with pytest.raises(ValueError, match="shape"):
        mask_iou_targets(torch.zeros(2, 4, 4, 5), inst)
    with pytest.raises(ValueError, match="3 RoIs but the instances hold 2"):
        mask_iou_targets(torch.zeros(3, 4, 4, 4), inst)
    with pytest.raises(ValueError, match=r"gt_classes must lie in \[0, 3\)"):
        mask_iou_targets(torch.zeros(2, 3, 4, 4), inst)
    with pytest.raises(ValueError, match="mask_threshold"):
        mask_iou_targets(torch.zeros(2, 4, 4, 4), inst, mask_threshold=math.nan)
    inst[0].remove("gt_masks")
    with pytest.raises(ValueError, match="lacks field.*gt_masks"):
        mask_iou_targets(torch.zeros(2, 4, 4, 4), inst)
    inst[0].gt_masks = torch.zeros(2, 8, 8)
    with pytest.raises(TypeError, match="BitMasks or PolygonMasks"):
        mask_iou_targets(torch.zeros(2, 4, 4, 4), inst)


# ----------------------------------------------------------------------------- property


@st.composite
def blob_case(draw):
    """Image with a union of 1-3 disks (the GT), an integer box of side k*M inside the image,
    and random logits (some exactly 0)."""
    m = draw(st.sampled_from([4, 7, 8]))
    k = draw(st.integers(1, 3))
    side = k * m
    h, w = draw(st.integers(side, 48)), draw(st.integers(side, 48))
    x1, y1 = draw(st.integers(0, w - side)), draw(st.integers(0, h - side))
    gt = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 3))):
        cx, cy = draw(st.floats(-5, w + 5)), draw(st.floats(-5, h + 5))
        gt |= disk(h, w, cx, cy, draw(st.floats(0, 20)))
    seed = draw(st.integers(0, 2**31 - 1))
    logits = torch.from_numpy(np.random.default_rng(seed).integers(-2, 3, (m, m))).float()
    return gt, [x1, y1, x1 + side, y1 + side], logits


@settings(max_examples=60, deadline=None)
@given(blob_case())
def test_property_bounded_and_close_to_brute_force(case):
    gt, box, logits = case
    out = mask_iou_targets(logits[None, None], [make_instances(gt.shape, [box], gt[None])])
    t = out.item()
    assert math.isfinite(t) and 0.0 <= t <= 1.0
    expected, tol = block_bound((logits > 0).numpy(), box, gt)
    assert abs(t - expected) <= tol + 1e-6, (t, expected, tol)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.floats(-6, 26, allow_nan=False, width=32), min_size=12, max_size=12),
)
def test_property_bitmask_ratio_matches_pixel_loop(seed, coords):
    """For any float boxes (inside one pixel, inverted, partly or wholly outside the image), the
    integral-image ratio equals an explicit sum over pixels of the covered fraction."""
    masks = np.random.default_rng(seed).random((3, 17, 20)) < 0.3
    boxes = np.array(coords, dtype=np.float32).reshape(3, 4).astype(np.float64)
    got = mt._bitmask_area_ratio(
        torch.from_numpy(masks), torch.arange(3), torch.tensor(boxes, dtype=torch.float32)
    )
    for m, (x1, y1, x2, y2), r in zip(masks, boxes, got.tolist()):
        k = np.arange(20)
        cx = np.clip(np.minimum(x2, k + 1) - np.maximum(x1, k), 0, None)
        k = np.arange(17)
        cy = np.clip(np.minimum(y2, k + 1) - np.maximum(y1, k), 0, None)
        expected = (m * cy[:, None] * cx[None, :]).sum() / m.sum() if m.sum() else 0.0
        assert abs(r - expected) <= 1e-9 and 0 <= r <= 1
