"""MaskIoUHead layers and the pure loss/inference functions, against hand computations."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Instances
from torch.nn import functional as F

from ms_rcnn import add_ms_rcnn_config, build_maskiou_head
from ms_rcnn.modeling.maskiou_head import MaskIoUHead, mask_iou_inference, mask_iou_loss


def paper_head(num_classes=80):
    cfg = add_ms_rcnn_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return build_maskiou_head(cfg, ShapeSpec(channels=256, height=14, width=14))


def test_paper_architecture():
    head = paper_head()
    convs = [head.maskiou_conv1, head.maskiou_conv2, head.maskiou_conv3, head.maskiou_conv4]
    assert convs[0].in_channels == 257  # 256 feature channels + the pooled mask
    assert [c.stride for c in convs] == [(1, 1)] * 3 + [(2, 2)]
    assert all(c.kernel_size == (3, 3) and c.out_channels == 256 for c in convs)
    assert head.maskiou_fc1.in_features == 256 * 7 * 7  # 12,544
    assert head.maskiou_fc1.out_features == head.maskiou_fc2.out_features == 1024
    assert head.predictor.out_features == 80
    assert head(torch.zeros(3, 256, 14, 14), torch.zeros(3, 1, 28, 28)).shape == (3, 80)


def test_initialization():
    torch.manual_seed(0)
    head = paper_head()
    assert head.predictor.weight.std().item() == pytest.approx(0.01, rel=0.05)
    for layer in [head.maskiou_conv1, head.maskiou_fc1, head.predictor]:
        assert torch.count_nonzero(layer.bias) == 0
    # kaiming_uniform(a=1) on fc1: bound sqrt(3 / fan_in)
    assert head.maskiou_fc1.weight.abs().max() <= (3 / 12544) ** 0.5 + 1e-6
    # kaiming_normal(fan_out, relu) on conv1: std sqrt(2 / (256 * 9))
    assert head.maskiou_conv1.weight.std().item() == pytest.approx((2 / 2304) ** 0.5, rel=0.05)


@pytest.mark.device
def test_input_is_feature_then_maxpooled_mask(device):
    torch.manual_seed(0)
    head = MaskIoUHead(ShapeSpec(channels=2, height=4, width=4), num_classes=3,
                       conv_dims=[5], fc_dims=[]).to(device)  # fmt: skip
    features = torch.randn(2, 2, 4, 4, device=device)
    masks = torch.rand(2, 1, 8, 8, device=device)
    # Independent max-pool: the max of each 2x2 block.
    pooled = masks.reshape(2, 1, 4, 2, 4, 2).amax(dim=(3, 5))
    x = torch.cat([features, pooled], 1)
    conv = head.maskiou_conv1
    x = F.relu(F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)).flatten(1)
    expected = x @ head.predictor.weight.T + head.predictor.bias
    torch.testing.assert_close(head(features, masks), expected)


def test_empty_input_and_bad_shapes():
    head = MaskIoUHead(ShapeSpec(channels=4, height=6, width=6), num_classes=2,
                       conv_dims=[4, 4], fc_dims=[8])  # fmt: skip
    assert head(torch.zeros(0, 4, 6, 6), torch.zeros(0, 1, 12, 12)).shape == (0, 2)
    with pytest.raises(ValueError, match="twice"):
        head(torch.zeros(1, 4, 6, 6), torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(R, 4, 6, 6\)"):
        head(torch.zeros(1, 3, 6, 6), torch.zeros(1, 1, 12, 12))


def test_unknown_head_name_is_named():
    cfg = add_ms_rcnn_config(get_cfg())
    cfg.MODEL.ROI_MASKIOU_HEAD.NAME = "NoSuchHead"
    with pytest.raises(KeyError, match="MODEL.ROI_MASKIOU_HEAD.NAME='NoSuchHead'"):
        build_maskiou_head(cfg, ShapeSpec(channels=8, height=14, width=14))


@pytest.mark.device
def test_loss_hand_computed(device):
    pred = torch.tensor([[0.2, 0.9], [0.5, 0.1], [0.3, 0.3]], device=device, requires_grad=True)
    classes = torch.tensor([1, 0, 1], device=device)
    targets = torch.tensor([0.8, 0.0, 0.5], device=device)  # the second RoI (target 0) is out
    # rows 0 and 2, column 1: ((0.9 - 0.8)^2 + (0.3 - 0.5)^2) / 2 * 0.5 = 0.0125
    loss = mask_iou_loss(pred, classes, targets)
    assert loss.item() == pytest.approx(0.0125)
    loss.backward()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[0, 0] == 0


def test_loss_without_positives_is_zero_and_connected():
    pred = torch.randn(4, 3, requires_grad=True)
    loss = mask_iou_loss(pred, torch.tensor([0, 1, 2, 0]), torch.zeros(4))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() == 0
    empty = torch.zeros(0, 3, requires_grad=True)
    assert mask_iou_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0)).item() == 0


def _instances(scores, classes, device="cpu"):
    inst = Instances((10, 10))
    inst.scores = torch.tensor(scores, dtype=torch.float32, device=device)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64, device=device)
    return inst


@pytest.mark.device
def test_inference_splits_per_image_and_rescores(device):
    images = [_instances([0.9, 0.6, 0.3], [0, 1, 1], device), _instances([], [], device),
              _instances([0.8], [2], device)]  # fmt: skip
    pred = torch.tensor([[0.5, 9, 9], [9, 1.4, 9], [9, -0.2, 9], [9, 9, 0.25]], device=device)
    mask_iou_inference(pred, images)
    assert images[0].mask_scores.device == pred.device
    close = lambda a, b: torch.testing.assert_close(a.cpu(), torch.tensor(b))  # noqa: E731
    close(images[0].pred_maskiou, [0.5, 1.0, 0.0])
    close(images[0].mask_scores, [0.45, 0.6, 0.0])
    assert len(images[1].mask_scores) == 0
    close(images[2].mask_scores, [0.2])
    close(images[0].scores, [0.9, 0.6, 0.3])  # untouched


def test_inference_unclamped_and_overwrite():
    inst = _instances([0.5, 0.5], [0, 0])
    mask_iou_inference(torch.tensor([[1.5], [-0.5]]), [inst], clamp=False, overwrite_scores=True)
    torch.testing.assert_close(inst.scores, torch.tensor([0.75, -0.25]))
    with pytest.raises(ValueError, match="3 predictions for 2 detections"):
        mask_iou_inference(torch.zeros(3, 1), [_instances([0.5, 0.5], [0, 0])])
