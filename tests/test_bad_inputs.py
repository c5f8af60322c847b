"""Bad input gives a clear error naming the config key or the file, or correct finite results.

Config and checkpoint errors are raised when the model is built or the weights are loaded;
data errors when the dataset is loaded or mapped (where Detectron2 users look), never deep
inside torch. docs/RELIABILITY.md lists every case with the test here that pins it.
"""

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, get_detection_dataset_dicts
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from ms_rcnn import ROI_MASKIOU_HEAD_REGISTRY, MaskIoUHead, mask_iou_targets
from ms_rcnn.checkpoint import MSRCNNCheckpointer
from ms_rcnn.modeling.maskiou_head import mask_iou_loss


def train_step(model, batch):
    model.train()
    with EventStorage(0) as storage:
        losses = {k: float(v) for k, v in model(batch).items()}
    assert all(math.isfinite(v) for v in losses.values()), losses
    return losses, storage


# ---------------------------------------------------------------------------- config


def test_mask_on_false_is_named():
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL.MASK_ON = False
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        build_model(cfg)


def test_unknown_maskiou_head_is_named():
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL.ROI_MASKIOU_HEAD.NAME = "NoSuchHead"
    with pytest.raises(KeyError, match="MODEL.ROI_MASKIOU_HEAD.NAME='NoSuchHead'.*MaskIoUHead"):
        build_model(cfg)


class SameSizeMaskHead(MaskRCNNConvUpsampleHead):
    """A custom mask head that predicts at the pooler's resolution (no 2x upsampling)."""

    def layers(self, x):
        for layer in self:
            if layer is not self.deconv and not isinstance(layer, torch.nn.ReLU):
                x = layer(x)
        return x


class WrongInputMaskIoUHead(MaskIoUHead):
    """A custom MaskIoU head that ignores the input shape it is given (expects 99 channels)."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["input_shape"] = ShapeSpec(channels=99, height=input_shape.height,
                                       width=input_shape.width)  # fmt: skip
        return ret


class OneExtraColumnMaskIoUHead(MaskIoUHead):
    """A custom MaskIoU head with a background column too (K + 1 outputs)."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            **super().from_config(cfg, input_shape),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
        }


for registry, cls in ((ROI_MASK_HEAD_REGISTRY, SameSizeMaskHead),
                      (ROI_MASKIOU_HEAD_REGISTRY, WrongInputMaskIoUHead),
                      (ROI_MASKIOU_HEAD_REGISTRY, OneExtraColumnMaskIoUHead)):  # fmt: skip
    if cls.__name__ not in registry:
        registry.register(cls)


@pytest.mark.parametrize(
    "key, name, message",
    [
        ("ROI_MASK_HEAD", "SameSizeMaskHead",
         r"ROI_MASK_HEAD.NAME='SameSizeMaskHead'.*14x14.*POOLER_RESOLUTION=14"),
        ("ROI_MASKIOU_HEAD", "WrongInputMaskIoUHead",
         r"ROI_MASKIOU_HEAD.NAME='WrongInputMaskIoUHead'.*\(R, 8, 14, 14\).*FPN.OUT_CHANNELS"),
        ("ROI_MASKIOU_HEAD", "OneExtraColumnMaskIoUHead",
         r"returns shape \(1, 4\).*\(R, 3\).*NUM_CLASSES"),
    ],
)  # fmt: skip
def test_heads_whose_shapes_do_not_chain_are_refused_at_build(key, name, message):
    """A mask head whose masks are not twice the pooler resolution, a MaskIoU head that does not
    take the pooled features, or one without one output per class: refused by name at build."""
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.MODEL[key].NAME = name
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_build_time_check_leaves_the_random_stream_alone(monkeypatch):
    """The check runs the model's heads once; the model's initial weights and the random
    stream after building must be what they are without it (the baseline and MS R-CNN share
    their initial weights for a seed, and the demo's comparison relies on it)."""
    import ms_rcnn.modeling.mask_scoring as ms

    def build():
        torch.manual_seed(0)
        model = build_model(tiny_cfg("MaskScoringROIHeads"))
        return model.state_dict(), torch.rand(3)

    weights, after = build()
    monkeypatch.setattr(ms, "check_head_shapes", lambda *args: None)
    weights_unchecked, after_unchecked = build()
    assert torch.equal(after, after_unchecked)
    assert all(torch.equal(v, weights_unchecked[k]) for k, v in weights.items())


def test_soft_nms_out_of_range_is_named_at_build():
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.TEST.SOFT_NMS.SIGMA = 0.0
    with pytest.raises(ValueError, match="TEST.SOFT_NMS.SIGMA"):
        build_model(cfg)


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture
def three_class_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MaskScoringROIHeads", num_classes=3))
    MSRCNNCheckpointer(model, str(tmp_path)).save("three_classes")
    return tmp_path / "three_classes.pth", model


CLASS_LAYERS = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                "roi_heads.mask_head.predictor", "roi_heads.maskiou_head.predictor")  # fmt: skip


def test_class_count_mismatch_refused_for_evaluation(three_class_checkpoint, tmp_path):
    path, _ = three_class_checkpoint
    model = build_model(tiny_cfg("MaskScoringROIHeads", num_classes=5))
    with pytest.raises(ValueError) as err:
        MSRCNNCheckpointer(model, str(tmp_path), strict=True).load(str(path))
    msg = str(err.value)
    assert str(path) in msg and "3 classes" in msg and "NUM_CLASSES=5" in msg
    assert all(layer in msg for layer in CLASS_LAYERS), msg


def test_class_count_mismatch_refused_by_eval_only_main(three_class_checkpoint, tmp_path):
    from ms_rcnn.engine import main

    path, _ = three_class_checkpoint
    cfg = tiny_cfg("MaskScoringROIHeads", num_classes=5)
    cfg.MODEL.WEIGHTS = str(path)
    cfg.OUTPUT_DIR = str(tmp_path / "eval")
    config = tmp_path / "five.yaml"
    config.write_text(cfg.dump())
    args = SimpleNamespace(config_file=str(config), opts=[], eval_only=True, resume=False)
    with pytest.raises(ValueError, match=r"three_classes.pth.*3 classes.*NUM_CLASSES=5"):
        main(args)


def test_eval_only_without_weights_is_refused(tmp_path):
    from ms_rcnn.engine import main

    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.OUTPUT_DIR = str(tmp_path / "eval")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.dump())
    args = SimpleNamespace(config_file=str(config), opts=[], eval_only=True, resume=True)
    with pytest.raises(ValueError, match="--eval-only needs trained weights: set MODEL.WEIGHTS"):
        main(args)


def test_class_count_mismatch_refused_when_resuming(three_class_checkpoint, tmp_path):
    path, _ = three_class_checkpoint
    (tmp_path / "last_checkpoint").write_text(path.name)
    model = build_model(tiny_cfg("MaskScoringROIHeads", num_classes=5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpointer = MSRCNNCheckpointer(model, str(tmp_path), optimizer=optimizer)
    with pytest.raises(ValueError, match=r"three_classes.pth.*resuming.*3 classes.*NUM_CLASSES=5"):
        checkpointer.resume_or_load("", resume=True)


def test_evaluating_a_checkpoint_without_the_maskiou_head_is_refused(tmp_path):
    """A baseline Mask R-CNN checkpoint evaluated with an MS R-CNN config would rank masks by a
    random head: refused, naming the file and the absent layers."""
    baseline = build_model(tiny_cfg("StandardROIHeads"))
    MSRCNNCheckpointer(baseline, str(tmp_path)).save("baseline")
    model = build_model(tiny_cfg("MaskScoringROIHeads"))
    with pytest.raises(ValueError, match=r"baseline.pth.*absent from it: roi_heads.maskiou_head"):
        MSRCNNCheckpointer(model, strict=True).load(str(tmp_path / "baseline.pth"))


def test_class_count_mismatch_when_fine_tuning_warns_once(three_class_checkpoint, caplog):
    path, source = three_class_checkpoint
    model = build_model(tiny_cfg("MaskScoringROIHeads", num_classes=5))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        MSRCNNCheckpointer(model).resume_or_load(str(path), resume=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "3 classes" in warnings[0] and "NUM_CLASSES=5" in warnings[0]
    assert all(layer in warnings[0] for layer in CLASS_LAYERS)
    loaded, original = model.state_dict(), source.state_dict()
    for k, v in loaded.items():
        if k.rsplit(".", 1)[0] in CLASS_LAYERS:
            assert torch.equal(v, fresh[k]), k  # re-initialized, not loaded
        else:
            assert torch.equal(v, original[k]), k


# ---------------------------------------------------------------------------- data: model


def test_images_without_annotations_train_with_zero_mask_losses():
    """FILTER_EMPTY_ANNOTATIONS False: the mapper turns an empty annotation list into empty
    Instances; the model trains on them with zero mask and MaskIoU losses."""
    cfg = tiny_cfg("MaskScoringROIHeads")
    mapper = DatasetMapper(cfg, is_train=True)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mapper_input = {"height": 64, "width": 64, "image": image, "annotations": []}
    dicts = [mapper_with_image(mapper, mapper_input) for _ in range(2)]
    assert all(len(d["instances"]) == 0 for d in dicts)
    torch.manual_seed(0)
    losses, storage = train_step(build_model(cfg), dicts)
    assert losses["loss_mask"] == 0.0 and losses["loss_maskiou"] == 0.0
    assert losses["loss_cls"] > 0.0
    assert storage.history("maskiou/num_pos").latest() == 0.0


def mapper_with_image(mapper, record):
    """Run Detectron2's DatasetMapper on an in-memory image (it reads `file_name` otherwise)."""
    import detectron2.data.dataset_mapper as dm

    record = dict(record)
    image = record.pop("image")
    original = dm.utils.read_image
    dm.utils.read_image = lambda *a, **k: image
    try:
        return mapper({**record, "file_name": "in-memory"})
    finally:
        dm.utils.read_image = original


def test_crowd_annotations_never_become_targets(tmp_path):
    cfg = tiny_cfg("MaskScoringROIHeads")
    mapper = DatasetMapper(cfg, is_train=True)
    square = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    ann = {"bbox": [10, 10, 20, 20], "bbox_mode": 1, "segmentation": square}
    image = np.zeros((64, 64, 3), np.uint8)
    anns = [{**ann, "category_id": 2, "iscrowd": 0}, {**ann, "category_id": 1, "iscrowd": 1}]
    record = {"height": 64, "width": 64, "image": image, "annotations": anns}
    inst = mapper_with_image(mapper, record)["instances"]
    assert inst.gt_classes.tolist() == [2]
    # An image whose only annotations are crowd is dropped by the default filter.
    DatasetCatalog.register("bad_inputs_crowd", lambda: [
        {"file_name": "a", "image_id": 0, "annotations": [{**ann, "category_id": 0, "iscrowd": 1}]},
        {"file_name": "b", "image_id": 1, "annotations": [{**ann, "category_id": 0, "iscrowd": 0}]},
    ])  # fmt: skip
    try:
        kept = get_detection_dataset_dicts(["bad_inputs_crowd"], filter_empty=True)
        assert [d["file_name"] for d in kept] == ["b"]
    finally:
        DatasetCatalog.remove("bad_inputs_crowd")


@pytest.mark.parametrize("mask_format", ["bitmask", "polygon"])
def test_one_pixel_and_empty_masks_give_finite_losses(mask_format):
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format=mask_format)
    batch = make_batch(mask_format, num_instances=(2, 2))
    one = torch.zeros(64, 64, dtype=torch.bool)
    one[10, 10] = True
    boxes = torch.tensor([[10.0, 10.0, 11.0, 11.0], [20.0, 20.0, 40.0, 40.0]])
    for d in batch:
        d["instances"].gt_boxes = Boxes(boxes)
        if mask_format == "bitmask":  # one pixel, and an empty mask under a non-empty box
            d["instances"].gt_masks = BitMasks(torch.stack([one, torch.zeros_like(one)]))
        else:  # a one-pixel square, and a zero-area (collinear) polygon
            d["instances"].gt_masks = PolygonMasks(
                [[[10, 10, 11, 10, 11, 11, 10, 11]], [[20, 20, 30, 30, 40, 40]]]
            )
    torch.manual_seed(0)
    losses, _ = train_step(build_model(cfg), batch)
    assert losses["loss_mask"] > 0.0


def test_gt_outside_the_proposal_has_target_zero_and_no_loss():
    h = w = 32
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 20:30, 20:30] = True  # entirely outside the box [0, 0, 8, 8]
    masks[1, 0:8, 0:4] = True  # the left half of the box
    inst = Instances((h, w))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2))
    inst.gt_masks = BitMasks(masks)
    inst.gt_classes = torch.tensor([0, 1])
    logits = torch.full((2, 2, 4, 4), 5.0)  # predicts the whole box
    targets = mask_iou_targets(logits, [inst], 0.0)
    assert targets.tolist() == [0.0, 0.5]  # 0 outside; half the box is the GT: 32 / 64
    pred = torch.tensor([[0.9, 0.1], [0.3, 0.7]], requires_grad=True)
    loss = mask_iou_loss(pred, inst.gt_classes, targets)
    assert loss.item() == pytest.approx(0.5 * (0.7 - 0.5) ** 2)  # only the second RoI
    loss.backward()
    assert pred.grad[0].tolist() == [0.0, 0.0]
