"""A traced MS R-CNN (ms_rcnn.modeling.export.trace_ms_rcnn) gives the eager model's outputs,
MaskIoU fields included, on the traced image and on other images, of the same size or not."""

import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model

from ms_rcnn.modeling.export import OUTPUT_FIELDS, trace_ms_rcnn


def tiny_model(roi_heads="MaskScoringROIHeads"):
    cfg = tiny_cfg(roi_heads)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # many detections, so counts vary by image
    if roi_heads.startswith("Cascade"):
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    torch.manual_seed(0)
    return build_model(cfg)


def image(seed):
    return make_batch(num_instances=(1,), seed=seed)[0]["image"]


def eager(model, img):
    with torch.no_grad():
        return model.inference([{"image": img}], do_postprocess=False)[0]


def assert_same_instances(actual, expected):
    assert tuple(int(v) for v in actual.image_size) == expected.image_size
    assert set(actual.get_fields()) == set(expected.get_fields())
    for name, value in expected.get_fields().items():
        got = actual.get(name)
        value, got = getattr(value, "tensor", value), getattr(got, "tensor", got)
        torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("roi_heads", ["MaskScoringROIHeads", "CascadeMaskScoringROIHeads"])
def test_traced_model_matches_eager_on_new_inputs(roi_heads, tmp_path):
    model = tiny_model(roi_heads).train()
    traced, schema = trace_ms_rcnn(model, image(0))
    assert model.training  # the caller's mode is restored
    model.eval()
    traced.save(str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))

    wide = torch.randint(0, 255, (3, 64, 96), generator=torch.Generator().manual_seed(1))
    counts = []
    # The traced image, another of the same size, and one of another size.
    for img in (image(0), image(5), wide.to(torch.uint8)):
        expected = eager(model, img)
        assert {"pred_maskiou", "mask_scores"} <= set(expected.get_fields())
        counts.append(len(expected))
        flat = loaded(img)
        assert len(flat) == len(OUTPUT_FIELDS) + 1  # the fields, then the image size
        assert_same_instances(schema(flat)[0]["instances"], expected)
        by_name = dict(zip(OUTPUT_FIELDS, flat))
        torch.testing.assert_close(by_name["pred_maskiou"], expected.pred_maskiou)
        torch.testing.assert_close(by_name["mask_scores"], expected.mask_scores)
        torch.testing.assert_close(by_name["pred_boxes"], expected.pred_boxes.tensor)
    assert len(set(counts)) > 1  # the trace did not freeze the number of detections


def test_soft_nms_is_refused():
    model = tiny_model()
    model.roi_heads.box_predictor.soft_nms_enabled = True
    with pytest.raises(ValueError, match="TEST.SOFT_NMS.ENABLED"):
        trace_ms_rcnn(model, image(0))


def test_batched_image_is_refused_with_its_shape():
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\)"):
        trace_ms_rcnn(tiny_model(), image(0)[None])
