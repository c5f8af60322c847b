"""INPUT.RESIZE_STYLE (ms_rcnn/data/resize.py): each peer's size rule and image resize, and that
every place ms-rcnn resizes an image (the Trainer's loaders, BatchPredictor, MSRCNNPredictor)
uses it. Expectations are computed here by hand or with cv2 / PIL directly."""

import sys

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances
from PIL import Image

from ms_rcnn.config import RESIZE_STYLES, check_resize_style
from ms_rcnn.data.resize import (
    CV2ResizeTransform,
    StyledResizeShortestEdge,
    build_augmentations,
    build_dataset_mapper,
    build_resize_augmentation,
    detectron2_output_shape,
    maskrcnn_benchmark_output_shape,
    mmdet_output_shape,
)

cv2 = pytest.importorskip("cv2")


def noise_image(h, w, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def pil_bilinear(img, h, w):
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def cv2_bilinear(img, h, w):
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


# ---- the size rules, on hand-computed cases -------------------------------------------------


def test_short_edge_case_rounds_in_detectron2_and_mmdet_and_truncates_in_maskrcnn_benchmark():
    # 640 * 800 / 480 = 1066.67: rounded to 1067, truncated to 1066; either orientation.
    for rule, long in ((detectron2_output_shape, 1067), (mmdet_output_shape, 1067),
                       (maskrcnn_benchmark_output_shape, 1066)):  # fmt: skip
        assert rule(480, 640, 800, 1333) == (800, long)
        assert rule(640, 480, 800, 1333) == (long, 800)


def test_capped_case_maskrcnn_benchmark_rounds_half_to_even_then_derives_the_long_edge():
    # 500 x 1000: the long edge would be 1600 > 1333, so 1333 * 500 / 1000 = 666.5 for the short
    # edge. Detectron2 and mmdet round it up (667 x 1333); maskrcnn-benchmark's Python 3
    # round() gives 666, and its long edge is then int(666 * 1000 / 500) = 1332.
    assert detectron2_output_shape(500, 1000, 800, 1333) == (667, 1333)
    assert mmdet_output_shape(500, 1000, 800, 1333) == (667, 1333)
    assert maskrcnn_benchmark_output_shape(500, 1000, 800, 1333) == (666, 1332)


def test_maskrcnn_benchmark_keeps_an_image_whose_short_edge_already_fits():
    assert maskrcnn_benchmark_output_shape(800, 1000, 800, 1333) == (800, 1000)
    assert maskrcnn_benchmark_output_shape(1000, 800, 800, 1333) == (1000, 800)


def test_mmdet_and_detectron2_rules_differ_at_floating_point_ties():
    # Found by a brute-force search over all h <= w <= 2000 at 800 / 1333: the two rules are
    # equal in exact arithmetic and disagree on 276 of those 2 million sizes, where the exact
    # short edge is a tie (265 * 1333 / 530 = 666.5) or next to one, and the two sequences of
    # float operations land on different sides of it. The direction is not always the same.
    assert mmdet_output_shape(265, 530, 800, 1333) == (667, 1333)
    assert detectron2_output_shape(265, 530, 800, 1333) == (666, 1333)
    assert mmdet_output_shape(231, 1302, 800, 1333) == (236, 1333)
    assert detectron2_output_shape(231, 1302, 800, 1333) == (237, 1333)


def test_mmdet_rule_takes_the_larger_limit_for_the_long_edge():
    # mmcv reads scale=(1333, 800) as (long limit, short limit) whatever their order.
    assert mmdet_output_shape(100, 200, 1333, 800) == mmdet_output_shape(100, 200, 800, 1333)
    assert mmdet_output_shape(100, 200, 800, 1333) == (667, 1333)  # factor 1333 / 200


# ---- the cv2 transform ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(60, 90, 3), (60, 90), (60, 90, 1)])
def test_cv2_transform_is_cv2_bilinear_and_not_pil_when_shrinking(shape):
    img = noise_image(60, 90).reshape(60, 90, 3)[..., : (shape[2] if len(shape) == 3 else 1)]
    img = img.reshape(shape)
    out = CV2ResizeTransform(60, 90, 23, 34).apply_image(img)
    expected = cv2_bilinear(img, 23, 34).reshape((23, 34) + shape[2:])
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    pil = T.ResizeTransform(60, 90, 23, 34).apply_image(img)  # Detectron2's PIL resize
    assert pil.shape == out.shape
    assert np.abs(pil.astype(int) - out.astype(int)).max() > 10  # PIL antialiases, cv2 not


def test_cv2_transform_takes_a_reversed_bgr_view():
    rgb = noise_image(40, 50)
    bgr = rgb[:, :, ::-1]  # negative stride, as Detectron2's BGR reads
    out = CV2ResizeTransform(40, 50, 21, 26).apply_image(bgr)
    np.testing.assert_array_equal(out, cv2_bilinear(np.ascontiguousarray(bgr), 21, 26))


def test_cv2_transform_segmentation_is_nearest():
    seg = np.random.default_rng(1).integers(0, 5, (40, 50)).astype(np.uint8)
    tfm = CV2ResizeTransform(40, 50, 17, 23)
    out = tfm.apply_segmentation(seg)
    np.testing.assert_array_equal(out, cv2.resize(seg, (23, 17), interpolation=cv2.INTER_NEAREST))
    mask = seg > 2
    out_mask = tfm.apply_segmentation(mask)
    assert out_mask.dtype == bool
    np.testing.assert_array_equal(out_mask, out > 2)


@pytest.mark.parametrize("style", ["mmdet", "maskrcnn-benchmark"])
def test_boxes_and_polygons_scale_with_the_image(style):
    # A bright rectangle on a dark image: after the resize its box, mapped by the transform,
    # must frame the bright pixels of the resized image (within a pixel of blur).
    img = np.zeros((300, 500, 3), dtype=np.uint8)
    x0, y0, x1, y1 = 100, 60, 340, 210
    img[y0:y1, x0:x1] = 255
    tfm = StyledResizeShortestEdge(130, 1333, "choice", style=style).get_transform(img)
    out = tfm.apply_image(img)
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    box = tfm.apply_box(np.array([[x0, y0, x1, y1]], dtype=float))[0]
    np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)
    polygon = np.array([x0, y0, x1, y0, x1, y1, x0, y1], dtype=float).reshape(-1, 2)
    mapped = tfm.apply_polygons([polygon.copy()])[0]  # apply_coords works in place
    np.testing.assert_allclose(mapped[[0, 2]].ravel(), box, atol=1e-9)
    sx, sy = out.shape[1] / 500, out.shape[0] / 300
    np.testing.assert_allclose(mapped, polygon * [sx, sy])
    np.testing.assert_allclose(tfm.inverse().apply_coords(mapped.copy()), polygon)


# ---- the augmentation -----------------------------------------------------------------------


@pytest.mark.parametrize("short,sample_style", [((40, 90), "range"), ((32, 48, 96), "choice")])
def test_detectron2_style_is_resize_shortest_edge_bit_for_bit(short, sample_style):
    images = [noise_image(h, w, seed=h) for h, w in ((61, 97), (120, 45), (80, 80), (33, 200))]
    ours = StyledResizeShortestEdge(short, 150, sample_style, style="detectron2")
    theirs = T.ResizeShortestEdge(short, 150, sample_style)
    for i, img in enumerate(images * 3):
        np.random.seed(i)
        a = ours.get_transform(img)
        state = np.random.get_state()[1].copy()
        np.random.seed(i)
        b = theirs.get_transform(img)
        np.testing.assert_array_equal(state, np.random.get_state()[1])  # the same draws
        assert type(a) is type(b) is T.ResizeTransform
        assert (a.new_h, a.new_w) == (b.new_h, b.new_w)
        np.testing.assert_array_equal(a.apply_image(img), b.apply_image(img))


@pytest.mark.parametrize("style", ["mmdet", "maskrcnn-benchmark"])
def test_other_styles_draw_the_same_short_edge_as_detectron2(style):
    img = noise_image(100, 100)  # square: every rule gives short x short
    ours = StyledResizeShortestEdge((20, 90), 1000, "range", style=style)
    theirs = T.ResizeShortestEdge((20, 90), 1000, "range")
    for seed in range(10):
        np.random.seed(seed)
        a = ours.get_transform(img)
        np.random.seed(seed)
        b = theirs.get_transform(img)
        assert (a.new_h, a.new_w) == (b.new_h, b.new_w)


# A 480 x 640 image at short edge 80: the size and backend of each style (maskrcnn-benchmark's is
# torchvision's F.resize of a PIL image, PIL bilinear).
EXPECTED_80 = {
    "detectron2": lambda img: pil_bilinear(img, 80, 107),
    "mmdet": lambda img: cv2_bilinear(img, 80, 107),
    "maskrcnn-benchmark": lambda img: pil_bilinear(img, 80, 106),
}


def test_styles_resize_with_their_backend():
    img = noise_image(480, 640)
    for style, expected in EXPECTED_80.items():
        out = StyledResizeShortestEdge(80, 1333, "choice", style=style).get_transform(img)
        np.testing.assert_array_equal(out.apply_image(img), expected(img), err_msg=style)


def test_zero_short_edge_turns_the_resize_off_in_every_style():
    for style in RESIZE_STYLES:
        tfm = StyledResizeShortestEdge(0, 1333, "choice", style=style).get_transform(
            noise_image(9, 9)
        )
        assert isinstance(tfm, T.NoOpTransform)


def test_lazyconfig_builds_the_augmentation():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    aug = instantiate(L(StyledResizeShortestEdge)(short_edge_length=40, max_size=60, style="mmdet"))
    assert isinstance(aug.get_transform(noise_image(80, 100)), CV2ResizeTransform)
    assert "style='mmdet'" in repr(aug)


def style_cfg(style, **overrides):
    cfg = tiny_cfg("MaskScoringROIHeads")
    cfg.INPUT.RESIZE_STYLE = style
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 80, 1333
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def test_detectron2_style_builds_detectron2s_own_augmentations():
    for is_train in (True, False):
        cfg = style_cfg("detectron2", **{"INPUT.MIN_SIZE_TRAIN": (48, 64)})
        ours, theirs = build_augmentations(cfg, is_train), utils.build_augmentation(cfg, is_train)
        assert [type(a) for a in ours] == [type(a) for a in theirs]
        assert repr(ours) == repr(theirs)
        assert type(build_resize_augmentation(cfg, is_train)) is T.ResizeShortestEdge


def test_training_augmentations_keep_detectron2s_sampling_and_flip():
    cfg = style_cfg("mmdet", **{"INPUT.MIN_SIZE_TRAIN": (48, 64),
                                "INPUT.MIN_SIZE_TRAIN_SAMPLING": "range"})  # fmt: skip
    resize, flip = build_augmentations(cfg, is_train=True)
    assert isinstance(resize, StyledResizeShortestEdge) and resize.style == "mmdet"
    assert resize.is_range and tuple(resize.short_edge_length) == (48, 64)
    assert resize.max_size == cfg.INPUT.MAX_SIZE_TRAIN
    assert isinstance(flip, T.RandomFlip)


# ---- every place ms-rcnn resizes ------------------------------------------------------------


def chw(array):
    return torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)))


@pytest.fixture
def image_file(tmp_path):
    rgb = noise_image(480, 640, seed=3)
    path = tmp_path / "image.png"  # lossless: the loader reads back exactly these pixels
    Image.fromarray(rgb).save(path)
    return path, rgb


@pytest.mark.parametrize("style", RESIZE_STYLES)
def test_trainer_test_loader_resizes_in_the_style(style, image_file):
    from ms_rcnn.engine import Trainer

    path, rgb = image_file
    name = f"resize_style_test_{style}"
    DatasetCatalog.register(name, lambda: [{"file_name": str(path), "image_id": 0,
                                             "height": 480, "width": 640}])  # fmt: skip
    try:
        batch = next(iter(Trainer.build_test_loader(style_cfg(style), name)))
    finally:
        DatasetCatalog.remove(name)
    torch.testing.assert_close(batch[0]["image"], chw(EXPECTED_80[style](rgb[:, :, ::-1])))


@pytest.mark.parametrize("style", RESIZE_STYLES)
def test_training_mapper_resizes_image_masks_and_boxes_in_the_style(style, image_file):
    path, rgb = image_file
    cfg = style_cfg(style, **{"INPUT.MIN_SIZE_TRAIN": (80,), "INPUT.MAX_SIZE_TRAIN": 1333,
                              "INPUT.RANDOM_FLIP": "none"})  # fmt: skip
    polygon = [100.0, 60.0, 340.0, 60.0, 340.0, 210.0, 100.0, 210.0]
    box = [100.0, 60.0, 340.0, 210.0]  # floats: Detectron2 maps an int box in an int array
    record = {"file_name": str(path), "image_id": 0, "height": 480, "width": 640,
              "annotations": [{"bbox": box, "bbox_mode": 0, "category_id": 0,
                               "segmentation": [polygon], "iscrowd": 0}]}  # fmt: skip
    out = build_dataset_mapper(cfg, is_train=True)(record)
    torch.testing.assert_close(out["image"], chw(EXPECTED_80[style](rgb[:, :, ::-1])))
    w = out["image"].shape[2]
    scale = np.array([w / 640, 80 / 480] * 2)
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor[0].numpy(),
                               np.array(box) * scale, rtol=1e-6)  # fmt: skip
    poly = out["instances"].gt_masks.polygons[0][0]
    np.testing.assert_allclose(poly, np.array(polygon) * np.tile(scale[:2], 4), rtol=1e-6)


class CapturingModel(torch.nn.Module):
    """Records the inputs it is given and detects nothing."""

    def forward(self, inputs):
        self.inputs = inputs
        return [{"instances": Instances((x["height"], x["width"]))} for x in inputs]


@pytest.mark.parametrize("style", RESIZE_STYLES)
def test_batch_predictor_resizes_in_the_style(style):
    from ms_rcnn.predict.pipeline import BatchPredictor

    rgb = noise_image(480, 640, seed=4)
    model = CapturingModel()
    BatchPredictor(style_cfg(style), model)([rgb])
    torch.testing.assert_close(model.inputs[0]["image"], chw(EXPECTED_80[style](rgb[:, :, ::-1])))


@pytest.mark.parametrize("style", RESIZE_STYLES)
def test_ms_rcnn_predictor_resizes_in_the_style(style, predict_setup):
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config
    from ms_rcnn.predict.predictor import MSRCNNPredictor

    cfg = add_ms_rcnn_config(get_cfg())
    cfg.merge_from_file(str(predict_setup / "ms.yaml"))
    cfg.MODEL.WEIGHTS = str(predict_setup / "ms.pth")
    cfg.INPUT.RESIZE_STYLE = style
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 80, 1333
    predictor = MSRCNNPredictor(cfg)
    predictor.model = CapturingModel()
    bgr = noise_image(480, 640, seed=5)
    predictor(bgr)
    image = predictor.model.inputs[0]["image"]
    torch.testing.assert_close(image, chw(EXPECTED_80[style](bgr)).float())


# ---- refusals -------------------------------------------------------------------------------


def test_unknown_style_is_refused_naming_key_value_and_choices():
    message = r"INPUT\.RESIZE_STYLE='pil' is not one of 'detectron2', 'mmdet', 'maskrcnn-benchmark'"
    with pytest.raises(ValueError, match=message):
        check_resize_style("pil")
    with pytest.raises(ValueError, match=message):
        build_resize_augmentation(style_cfg("pil"), is_train=False)
    with pytest.raises(ValueError, match=message):
        StyledResizeShortestEdge(800, 1333, style="pil")


def test_unknown_style_is_refused_by_train_setup_and_predict(tmp_path):
    from types import SimpleNamespace

    from ms_rcnn.engine import setup
    from ms_rcnn.predict.pipeline import InputError, predict_config

    config = tmp_path / "c.yaml"
    config.write_text("MODEL:\n  DEVICE: cpu\nINPUT:\n  RESIZE_STYLE: opencv\n")
    args = SimpleNamespace(config_file=str(config), opts=["OUTPUT_DIR", str(tmp_path / "o")],
                           eval_only=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"RESIZE_STYLE='opencv' is not one of"):
        setup(args)
    with pytest.raises(InputError, match=r"RESIZE_STYLE='opencv' is not one of"):
        predict_config(str(config), [], 0.5)


def test_mmdet_style_without_opencv_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        StyledResizeShortestEdge(800, 1333, style="mmdet")
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        build_augmentations(style_cfg("mmdet"), is_train=True)
    StyledResizeShortestEdge(800, 1333, style="maskrcnn-benchmark")  # PIL only: fine


@pytest.mark.parametrize("style", ["mmdet", "maskrcnn-benchmark"])
def test_tta_is_refused_with_a_peer_resize(style):
    from detectron2.modeling import build_model

    from ms_rcnn.engine import Trainer
    from ms_rcnn.modeling.tta import MaskScoringRCNNWithTTA

    cfg = style_cfg(style, **{"TEST.AUG.ENABLED": True})
    with pytest.raises(ValueError, match=f"INPUT.RESIZE_STYLE='{style}'"):
        Trainer.build_model(cfg)
    with pytest.raises(ValueError, match="DatasetMapperTTA"):
        MaskScoringRCNNWithTTA(cfg, build_model(cfg))
    cfg.INPUT.RESIZE_STYLE = "detectron2"
    Trainer.build_model(cfg)
