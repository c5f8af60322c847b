"""Boundary IoU targets at RoI resolution against brute force at image resolution; the quality
combinations; MaskIoU training on background RoIs."""

import math

import numpy as np
import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from numpy.lib.stride_tricks import sliding_window_view

from ms_rcnn.modeling.maskiou_targets import gt_mask_crops
from ms_rcnn.modeling.quality_targets import boundary_iou_targets, combine_quality, mask_band

H = W = 96
M, K = 16, 3  # 16 x 16 mask grid on 48-pixel boxes: a cell is a 3 x 3 pixel block


def band(mask, width, outside_is_background=True):
    """Reference band: mask pixels with a non-mask pixel within `width` (Chebyshev)."""
    padded = np.pad(mask, width, constant_values=not outside_is_background)
    return mask & ~sliding_window_view(padded, (2 * width + 1,) * 2).all(axis=(-1, -2))


def brute_boundary_iou(pred_cells, box, gt, width_cells):
    """Boundary IoU at image resolution: the M x M prediction pasted as K x K blocks into the
    (integer, K * M pixel) box, bands of width_cells * K pixels, outside the image background."""
    x0, y0 = int(box[0]), int(box[1])
    pasted = np.zeros_like(gt)
    pasted[y0 : y0 + M * K, x0 : x0 + M * K] = np.kron(pred_cells, np.ones((K, K), bool))
    bp, bg = band(pasted, width_cells * K), band(gt, width_cells * K)
    union = (bp | bg).sum()
    return (bp & bg).sum() / union if union else 0.0


def blobs(rng, size, count, radius):
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((size, size), bool)
    for _ in range(count):
        cy, cx = rng.integers(size // 5, size - size // 5, 2)
        r = rng.integers(*radius)
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def one_roi(gt, box):
    inst = Instances((H, W))
    inst.proposal_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
    inst.gt_masks = BitMasks(torch.from_numpy(gt[None]))
    return inst


def noisy_prediction(rng, inst):
    pred = gt_mask_crops([inst], M)[0]
    if rng.random() < 0.5:
        pred = torch.roll(pred, int(rng.integers(-2, 3)), dims=1)
    return pred ^ torch.from_numpy(rng.random((1, M, M)) < 0.05)


def test_mask_band_matches_reference():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 12, 15)) < 0.6
    for width in (1, 2):
        for outside in (True, False):
            ours = mask_band(torch.from_numpy(masks), width, outside).numpy()
            for m, o in zip(masks, ours):
                np.testing.assert_array_equal(o, band(m, width, outside))
    with pytest.raises(ValueError, match="width"):
        mask_band(torch.from_numpy(masks), 0, True)


def test_boundary_target_on_gt_the_grid_resolves():
    """GT made of whole cells (K x K blocks aligned with the box grid): the M x M crop is exact,
    so only r_b's approximation (the contour's share of the 1-pixel contour for its share of
    the band) separates the target from brute force. Measured: max 0.025 over 300 cases."""
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(60):
        coarse = blobs(rng, H // K, int(rng.integers(1, 3)), (3, 10))
        gt = np.kron(coarse, np.ones((K, K), bool))
        cy, cx = rng.integers(0, H // K - M + 1, 2)
        box = [cx * K, cy * K, (cx + M) * K, (cy + M) * K]
        inst = one_roi(gt, box)
        pred = noisy_prediction(rng, inst)
        ours = float(boundary_iou_targets(pred, [inst], 1)[0])
        errors.append(abs(ours - brute_boundary_iou(pred[0].numpy(), box, gt, 1)))
    assert max(errors) <= 0.03 and np.mean(errors) <= 0.01, (max(errors), np.mean(errors))


def test_boundary_target_on_any_gt_within_stated_tolerance():
    """GT at pixel resolution: the target sees it at M x M, as the mask loss does, and a
    one-cell band is sensitive to that. Measured over 200 cases: mean |error| 0.028, max 0.17."""
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(60):
        gt = blobs(rng, H, int(rng.integers(1, 3)), (8, 30))
        y0, x0 = rng.integers(0, H - M * K, 2)
        box = [x0, y0, x0 + M * K, y0 + M * K]
        inst = one_roi(gt, box)
        pred = noisy_prediction(rng, inst)
        ours = float(boundary_iou_targets(pred, [inst], 1)[0])
        errors.append(abs(ours - brute_boundary_iou(pred[0].numpy(), box, gt, 1)))
    assert max(errors) <= 0.2 and np.mean(errors) <= 0.04, (max(errors), np.mean(errors))


def test_boundary_target_hand_cases():
    gt = np.zeros((H, W), bool)
    gt[30:60, 24:51] = True  # a 30 x 27 rectangle, whole cells of the box below
    box = [12, 12, 60, 60]
    inst = one_roi(gt, box)
    exact = gt_mask_crops([inst], M)[0]
    assert float(boundary_iou_targets(exact, [inst], 1)[0]) == pytest.approx(1.0)
    # The GT's contour is 3/4 outside a box that holds its top-left quarter: r_b rescales.
    part = [0, 0, 48, 48]
    inst_part = one_roi(gt, part)
    crop = gt_mask_crops([inst_part], M)[0]
    ours = float(boundary_iou_targets(crop, [inst_part], 1)[0])
    assert ours == pytest.approx(brute_boundary_iou(crop[0].numpy(), part, gt, 1), abs=0.03)
    # A box deep inside a large GT sees no contour: no boundary to match, target 0.
    big = np.zeros((H, W), bool)
    big[0:90, 0:90] = True
    inner = one_roi(big, [21, 21, 69, 69])
    full = torch.ones(1, M, M, dtype=torch.bool)
    assert float(boundary_iou_targets(full, [inner], 1)[0]) == 0.0


def test_polygon_and_bitmask_gt_agree():
    square = [[24.0, 30.0, 51.0, 30.0, 51.0, 60.0, 24.0, 60.0]]
    gt = np.zeros((H, W), bool)
    gt[30:60, 24:51] = True
    box = [12, 12, 60, 60]
    bit, poly = one_roi(gt, box), one_roi(gt, box)
    poly.gt_masks = PolygonMasks([square])
    pred = gt_mask_crops([bit], M)[0]
    pred[0, :, 3] = False
    a = boundary_iou_targets(pred, [bit], 1)
    b = boundary_iou_targets(pred, [poly], 1)
    assert float(a[0]) == pytest.approx(float(b[0]), abs=0.02)


def test_combine_quality():
    m, b = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.6])
    assert torch.equal(combine_quality(m, None, "mask_iou"), m)
    assert torch.equal(combine_quality(m, b, "boundary_iou"), b)
    assert combine_quality(m, b, "min").tolist() == pytest.approx([0.5, 0.2])
    assert combine_quality(m, b, "mean").tolist() == pytest.approx([0.65, 0.4])
    assert combine_quality(m, b, "product").tolist() == pytest.approx([0.4, 0.12])
    with pytest.raises(ValueError, match="one of"):
        combine_quality(m, b, "max")


# ----------------------------------------------------------------------------- negatives


def test_mask_iou_loss_counts_flagged_zero_targets():
    from ms_rcnn.modeling.maskiou_head import mask_iou_loss

    pred = torch.tensor([[0.9, 0.1], [0.4, 0.3], [0.2, 0.8]])
    classes = torch.tensor([0, 1, 1])
    targets = torch.tensor([0.5, 0.0, 0.0])
    assert float(mask_iou_loss(pred, classes, targets)) == pytest.approx(0.5 * 0.4**2)
    counted = torch.tensor([True, True, False])
    expected = 0.5 * (0.4**2 + 0.3**2) / 2
    assert float(mask_iou_loss(pred, classes, targets, counted)) == pytest.approx(expected)


def test_sample_negative_proposals():
    from ms_rcnn.modeling.negative_rois import sample_negative_proposals

    inst = Instances((H, W))
    inst.proposal_boxes = Boxes(torch.arange(40, dtype=torch.float32).view(10, 4))
    inst.gt_classes = torch.tensor([3, 0, 3, 3, 1, 3, 3, 2, 3, 3])  # 3 = background
    empty = inst[torch.tensor([1, 4])]  # no background at all
    torch.manual_seed(0)
    picked, none = sample_negative_proposals([inst, empty], num_classes=3, per_image=4)
    assert len(picked) == 4 and bool((picked.gt_classes == 3).all()) and len(none) == 0
    starts = picked.proposal_boxes.tensor[:, 0].tolist()
    assert starts == sorted(starts) and len(set(starts)) == 4  # distinct, in proposal order
    every = sample_negative_proposals([inst], num_classes=3, per_image=100)[0]
    assert len(every) == 7


def tiny_heads(**keys):
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask")
    for key, value in keys.items():
        cfg.MODEL.ROI_MASKIOU_HEAD[key] = value
    torch.manual_seed(0)
    return build_model(cfg).roi_heads


def test_predicted_foreground_classes_skip_background():
    from ms_rcnn.modeling.negative_rois import predicted_foreground_classes

    heads = tiny_heads()
    features = {f: torch.zeros(1, 8, 16, 16) for f in heads.box_in_features}
    scores = torch.tensor([[0.1, 0.5, 0.2, 9.0], [3.0, 0.5, 0.2, 9.0]])
    heads.box_predictor.forward = lambda x: (scores, torch.zeros(2, 12))
    boxes = [Boxes(torch.tensor([[0.0, 0, 8, 8], [4.0, 4, 20, 20]]))]
    assert predicted_foreground_classes(heads, features, boxes).tolist() == [1, 0]


def test_negative_targets_by_hand():
    """Background RoIs: their predicted-class mask against the GT they overlap most, when that
    GT has the predicted class; 0 for another class, and in an image without GT."""
    from test_maskiou_targets import brute_iou

    heads = tiny_heads(NEGATIVE_ROIS_PER_IMAGE=2)
    gt = np.zeros((64, 64), bool)
    gt[8:40, 8:40] = True
    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[24.0, 24, 56, 56], [24.0, 24, 56, 56]]))
    inst.gt_masks = BitMasks(torch.from_numpy(np.stack([gt, gt])))
    inst.gt_index = torch.tensor([0, 0])
    inst.gt_instance_classes = torch.tensor([2, 2])
    no_gt = Instances((64, 64), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]])))
    cells = np.zeros((28, 28), bool)
    cells[:14, :14] = True  # the box's top-left quarter, the part that overlaps the GT
    logits = torch.full((3, 3, 28, 28), -4.0)
    logits[0, 2] = torch.from_numpy(cells * 8.0 - 4)  # RoI 0 predicted class 2: its mask
    logits[1, 1] = torch.from_numpy(cells * 8.0 - 4)  # RoI 1 predicted class 1 (GT is 2)
    logits[2, 0] = 4.0
    classes = torch.tensor([2, 1, 0])
    targets = heads._negative_targets(logits, [inst, no_gt], classes)
    expected = brute_iou(cells, [24, 24, 56, 56], gt)
    assert targets.tolist() == pytest.approx([expected, 0.0, 0.0], abs=1e-5)
    assert expected == pytest.approx(256 / 1024)


@pytest.mark.device
@pytest.mark.parametrize("target,fmt", [("mask_iou", "bitmask"), ("min", "polygon")])
def test_training_step_with_negatives(target, fmt, device):
    from conftest import make_batch, tiny_cfg
    from detectron2.modeling import build_model

    cfg = tiny_cfg("MaskScoringROIHeads", mask_format=fmt, device=device)
    cfg.MODEL.ROI_MASKIOU_HEAD.NEGATIVE_ROIS_PER_IMAGE = 3
    cfg.MODEL.ROI_MASKIOU_HEAD.TARGET = target
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch(fmt))
        sum(losses.values()).backward()
        logged = storage.latest()
    assert math.isfinite(float(losses["loss_maskiou"]))
    assert logged["maskiou/num_neg"][0] == 6  # 3 per image, 16 RoIs each, few positives
    head = model.roi_heads.maskiou_head
    assert all(p.grad is not None for p in head.parameters())


def test_bad_option_values_are_refused():
    with pytest.raises(ValueError, match="TARGET must be one of"):
        tiny_heads(TARGET="dice")
    with pytest.raises(ValueError, match="NEGATIVE_ROIS_PER_IMAGE"):
        tiny_heads(NEGATIVE_ROIS_PER_IMAGE=-1)


def test_the_negatives_pass_leaves_batchnorm_statistics_alone():
    """With BatchNorm in the box and mask heads, a training step with background RoIs must
    update their running statistics exactly as the same step without them: the extra pass over
    those RoIs (the box head for their class, the mask head for their mask) must not count
    background-only batches. Its BN layers are in training mode again afterwards."""
    from conftest import make_batch, tiny_cfg
    from detectron2.modeling import build_model

    def step(negatives):
        cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask")
        cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = 1
        cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
        cfg.MODEL.ROI_BOX_HEAD.NORM = "BN"
        cfg.MODEL.ROI_MASK_HEAD.NORM = "BN"
        cfg.MODEL.ROI_MASKIOU_HEAD.NEGATIVE_ROIS_PER_IMAGE = negatives
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        with EventStorage() as storage:
            model(make_batch("bitmask"))
            logged = storage.latest()
        bns = [m for m in model.roi_heads.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(bns) == 5 and all(m.training for m in bns)  # 1 box conv + 4 mask convs
        stats = {k: v.clone() for k, v in model.roi_heads.named_buffers() if "running" in k}
        return stats, logged

    without, _ = step(0)
    with_negatives, logged = step(3)
    assert logged["maskiou/num_neg"][0] == 6
    assert without.keys() == with_negatives.keys() and len(without) == 10
    changed = [k for k in without if not torch.equal(without[k], with_negatives[k])]
    assert not changed, changed


def test_the_logged_metrics_count_the_rois_the_loss_counts(monkeypatch):
    """The loss counts RoIs whose mask overlaps the GT (mask IoU > 0); with a boundary-aware
    target some of them have target 0 (no boundary overlap): num_pos, mean_target, mean_pred
    and abs_error must be over the same RoIs as the loss."""
    from conftest import make_batch, tiny_cfg
    from detectron2.modeling import build_model

    import ms_rcnn.modeling.mask_scoring as ms

    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask")
    cfg.MODEL.ROI_MASKIOU_HEAD.TARGET = "min"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    known = {}

    def mask_iou(logits, *args, **kwargs):  # RoI i: 0 (no overlap) if i % 3 == 0, else 0.6
        i = torch.arange(len(logits))
        known["mask_iou"] = torch.where(i % 3 == 0, 0.0, 0.6)
        return known["mask_iou"]

    def boundary_iou(pred, *args):  # boundaries overlap (0.9) only where i % 3 == 1
        known["boundary"] = torch.where(torch.arange(len(pred)) % 3 == 1, 0.9, 0.0)
        return known["boundary"]

    monkeypatch.setattr(ms, "mask_iou_targets", mask_iou)
    monkeypatch.setattr(ms, "boundary_iou_targets", boundary_iou)
    # Every IoU prediction 0.25 (still connected to the head, so the loss has a graph).
    model.roi_heads.maskiou_head.register_forward_hook(lambda m, i, out: out * 0 + 0.25)
    with EventStorage() as storage:
        losses = model(make_batch("bitmask", num_instances=(3, 3)))
        logged = {k: v[0] for k, v in storage.latest().items()}
    target = np.minimum(known["mask_iou"].numpy(), known["boundary"].numpy())
    counted = known["mask_iou"].numpy() > 0
    assert counted.sum() > (target > 0).sum() > 0  # the two definitions differ here
    assert float(losses["loss_maskiou"]) == pytest.approx(
        0.5 * np.mean((0.25 - target[counted]) ** 2), rel=1e-5
    )
    assert logged["maskiou/num_pos"] == counted.sum()
    assert logged["maskiou/mean_target"] == pytest.approx(target[counted].mean(), rel=1e-5)
    assert logged["maskiou/mean_pred"] == pytest.approx(0.25)
    assert logged["maskiou/abs_error"] == pytest.approx(
        np.abs(0.25 - target[counted]).mean(), rel=1e-5
    )
