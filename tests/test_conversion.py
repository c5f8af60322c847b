"""Converting official MS R-CNN (maskrcnn-benchmark) and mmdetection checkpoints, on synthetic
checkpoints in their exact names and shapes (tests/peer_checkpoints.py): every tensor lands where
intended, the heads compute what each peer's did, and anything unexpected is an error."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from peer_checkpoints import peer_checkpoint

from ms_rcnn.conversion import ConversionError, convert_state_dict, unwrap_checkpoint
from ms_rcnn.conversion.cli import REPO, main
from ms_rcnn.conversion.verify import build_model_from_config, check_fits, check_loads_exactly
from ms_rcnn.modeling.maskiou_head import MaskIoUHead

SOURCE = {"official": "maskrcnn-benchmark", "mmdet": "mmdet"}
MMDET_META = {"mmdet_version": "2.1.0", "config": "backbone=dict(style='caffe')\nto_rgb=False"}


@pytest.fixture(scope="module")
def models():
    """Models built from the configs the converter names, once per config (R-50: ~3 s)."""
    cache = {}

    def get(config_file):
        if config_file not in cache:
            cache[config_file] = build_model_from_config(str(REPO / config_file))
        return cache[config_file]

    return get


def convert(source, peer, meta=None):
    return convert_state_dict(peer, SOURCE[source], meta if meta is not None else {})


def assert_equal_tensors(ours, expected):
    assert set(ours) == set(expected), sorted(set(ours) ^ set(expected))
    wrong = [k for k, v in expected.items() if not torch.equal(ours[k], v)]
    assert not wrong, wrong


def test_synthetic_checkpoints_have_the_documented_key_counts(models):
    official, d2 = peer_checkpoint("official")
    mmdet, d2_mmdet = peer_checkpoint("mmdet")
    assert (len(official), len(mmdet), len(d2)) == (326, 374, 321)
    model = models("configs/COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml")
    assert set(d2) == set(d2_mmdet) == set(model.state_dict())


@pytest.mark.parametrize(
    "source,wrap",
    [
        (
            "official",
            lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "iteration": 90000},
        ),
        ("official", lambda sd: sd),
        ("mmdet", lambda sd: {"meta": MMDET_META, "state_dict": sd}),
        ("mmdet", lambda sd: {"model": sd}),
    ],
    ids=["official-ddp-model", "official-bare", "mmdet-meta-state_dict", "mmdet-model"],
)
def test_ms_rcnn_r50_converts_to_the_intended_tensors(source, wrap, models):
    peer, expected = peer_checkpoint(source)
    state, meta = unwrap_checkpoint(wrap(peer))
    converted = convert(source, state, meta)
    assert_equal_tensors(converted.model, expected)
    suffix = "maskrcnn_benchmark" if source == "official" else "mmdet_caffe"
    config = f"configs/COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x_{suffix}.yaml"
    assert converted.config_file == config and converted.config_overrides() == []
    assert f"Config: {config}" in converted.report()
    check_fits(converted.model, models(config))


def test_mmdet_maskiou_output_built_for_81_classes_loses_its_unused_last_row(models):
    """Early mmdetection v2 configs had MaskIoUHead(num_classes=81); labels are 0..79, so its
    row 80 is dead and dropped; rows 0..79 are ours as they are."""
    peer, expected = peer_checkpoint("mmdet")
    for suffix in ("weight", "bias"):
        key = f"roi_head.mask_iou_head.fc_mask_iou.{suffix}"
        peer[key] = torch.cat([peer[key], torch.randn(1, *peer[key].shape[1:])])
    converted = convert("mmdet", peer)
    assert_equal_tensors(converted.model, expected)
    assert "last row dropped (fc_mask_iou built for 81 classes" in converted.report()


def test_official_background_is_moved_not_lost():
    """The class layers computed from the same features: the official's class L is ours L - 1,
    its background (index 0) is our last classifier output and nowhere else."""
    peer, _ = peer_checkpoint("official")
    ours = convert("official", peer).model

    def apply(op, x, state, name):
        return op(x, state[name + ".weight"], state[name + ".bias"])

    x = torch.randn(5, 1024)
    p_official = apply(F.linear, x, peer, "roi_heads.box.predictor.cls_score").softmax(1)
    p_ours = apply(F.linear, x, ours, "roi_heads.box_predictor.cls_score").softmax(1)
    assert torch.allclose(p_ours[:, :80], p_official[:, 1:])
    assert torch.allclose(p_ours[:, 80], p_official[:, 0])
    deltas_official = apply(F.linear, x, peer, "roi_heads.box.predictor.bbox_pred")
    deltas_ours = apply(F.linear, x, ours, "roi_heads.box_predictor.bbox_pred")
    assert torch.equal(deltas_ours.view(5, 80, 4), deltas_official.view(5, 81, 4)[:, 1:])
    feature = torch.randn(2, 256, 4, 4)
    masks_official = apply(F.conv2d, feature, peer, "roi_heads.mask.predictor.mask_fcn_logits")
    masks_ours = apply(F.conv2d, feature, ours, "roi_heads.mask_head.predictor")
    assert torch.equal(masks_ours, masks_official[:, 1:])


@pytest.mark.parametrize("source", ["official", "mmdet"])
def test_plain_mask_rcnn_converts_and_fits_the_baseline_config(source, models):
    peer, expected = peer_checkpoint(source, mask_scoring=False)
    assert len(peer) == {"official": 312, "mmdet": 360}[source]
    converted = convert(source, peer)
    assert_equal_tensors(converted.model, expected)
    assert converted.config_file.split("/")[-1].startswith("mask_rcnn_R_50_FPN_1x_")
    check_fits(converted.model, models(converted.config_file))


@pytest.mark.parametrize("source", ["official", "mmdet"])
def test_r101_converts_and_fits_the_r101_config(source, models):
    peer, expected = peer_checkpoint(source, depth=101)
    converted = convert(source, peer)
    assert_equal_tensors(converted.model, expected)
    assert converted.depth == 101 and "_R_101_FPN_1x_" in converted.config_file
    # One model for both: the two R-101 configs build the same tensors (they differ only in
    # anchors, pixel mean and poolers, none of which is a checkpoint tensor).
    check_fits(
        converted.model, models(converted.config_file.replace("mmdet_caffe", "maskrcnn_benchmark"))
    )


def test_mmdet_conversion_loads_strictly_and_unchanged(tmp_path, models):
    peer, expected = peer_checkpoint("mmdet")
    converted = convert("mmdet", peer, MMDET_META)
    path = tmp_path / "converted.pth"
    torch.save(converted.checkpoint("in.pth"), path)
    model = models(converted.config_file)
    check_loads_exactly(str(path), model)
    assert_equal_tensors(model.state_dict(), expected)


def test_cli_converts_an_official_checkpoint_and_checks_it(tmp_path, capsys):
    peer, expected = peer_checkpoint("official")
    source = tmp_path / "model_0090000.pth"
    torch.save({"model": {f"module.{k}": v for k, v in peer.items()}, "iteration": 90000}, source)
    out = tmp_path / "out" / "ms_rcnn_official.pth"
    assert main(["--source", "maskrcnn-benchmark", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    config = "configs/COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x_maskrcnn_benchmark.yaml"
    assert f"Checked: {out} loads strictly into {config}, every tensor equal" in printed
    zoo_name = config.removeprefix("configs/")  # a model zoo name: works from any folder
    assert f"ms-rcnn-train --config-file {zoo_name} --eval-only MODEL.WEIGHTS {out}" in printed
    assert "5 x anchor buffer" in printed and "background rows 0-3 dropped" in printed
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["matching_heuristics"] is False
    assert_equal_tensors(saved["model"], expected)


# ---------------------------------------------------------------------------- the MaskIoU head


def scaled_maskiou_weights(peer, prefix, seed):
    """Replace the peer's MaskIoU tensors by well-scaled ones, so a swapped or misread layer
    changes the output by a lot (tiny weights would leave only the biases)."""
    g = torch.Generator().manual_seed(seed)
    for k, v in list(peer.items()):
        if k.startswith(prefix):
            fan_in = v[0].numel() if v.dim() > 1 else 1
            std = math.sqrt(2.0 / fan_in) if v.dim() > 1 else 0.1
            peer[k] = torch.randn(v.shape, generator=g) * std


def our_head(converted):
    head = MaskIoUHead(ShapeSpec(channels=256, height=14, width=14), num_classes=80,
                       conv_dims=[256] * 4, fc_dims=[1024] * 2)  # fmt: skip
    prefix = "roi_heads.maskiou_head."
    head.load_state_dict(
        {k[len(prefix) :]: v for k, v in converted.model.items() if k.startswith(prefix)}
    )
    return head.eval()


def official_maskiou_forward(w, features, mask_probs):
    """The official MaskIoU head from its definition: features then the 2x2-max-pooled mask
    probability, convs maskiou_fcn1..4 (the last with stride 2), fc1, fc2, 81 outputs."""
    fe = "roi_heads.maskiou.feature_extractor."
    x = torch.cat([features, F.max_pool2d(mask_probs, 2, 2)], dim=1)
    for i in range(1, 5):
        x = F.relu(F.conv2d(x, w[f"{fe}maskiou_fcn{i}.weight"], w[f"{fe}maskiou_fcn{i}.bias"],
                            stride=2 if i == 4 else 1, padding=1))  # fmt: skip
    x = x.reshape(x.shape[0], -1)
    for i in (1, 2):
        x = F.relu(F.linear(x, w[f"{fe}maskiou_fc{i}.weight"], w[f"{fe}maskiou_fc{i}.bias"]))
    p = "roi_heads.maskiou.predictor.maskiou."
    return F.linear(x, w[p + "weight"], w[p + "bias"])


def mmdet_maskiou_forward(w, features, mask_logits):
    """mmdetection's MaskIoUHead from its definition: sigmoid of the (R, 28, 28) mask logits
    inside the head, 2x2 max-pool, cat(features, mask), convs.0-3, fcs.0-1, fc_mask_iou."""
    h = "roi_head.mask_iou_head."
    pooled = F.max_pool2d(mask_logits.sigmoid().unsqueeze(1), 2, 2)
    x = torch.cat([features, pooled], dim=1)
    for i in range(4):
        x = F.relu(F.conv2d(x, w[f"{h}convs.{i}.weight"], w[f"{h}convs.{i}.bias"],
                            stride=2 if i == 3 else 1, padding=1))  # fmt: skip
    x = x.flatten(1)
    for i in range(2):
        x = F.relu(F.linear(x, w[f"{h}fcs.{i}.weight"], w[f"{h}fcs.{i}.bias"]))
    return F.linear(x, w[h + "fc_mask_iou.weight"], w[h + "fc_mask_iou.bias"])


def test_maskiou_head_matches_the_official_head():
    peer, _ = peer_checkpoint("official", depth=50)
    scaled_maskiou_weights(peer, "roi_heads.maskiou.", seed=1)
    head = our_head(convert("official", peer))
    g = torch.Generator().manual_seed(2)
    features = torch.randn(6, 256, 14, 14, generator=g)
    mask_probs = torch.rand(6, 1, 28, 28, generator=g)
    with torch.no_grad():
        theirs = official_maskiou_forward(peer, features, mask_probs)
        ours = head(features, mask_probs)
    assert theirs.shape == (6, 81) and theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs[:, 1:], rtol=1e-4, atol=1e-5)


def test_maskiou_head_matches_mmdetections_head():
    peer, _ = peer_checkpoint("mmdet", depth=50)
    scaled_maskiou_weights(peer, "roi_head.mask_iou_head.", seed=3)
    head = our_head(convert("mmdet", peer))
    g = torch.Generator().manual_seed(4)
    features = torch.randn(6, 256, 14, 14, generator=g)
    mask_logits = torch.randn(6, 28, 28, generator=g) * 3
    with torch.no_grad():
        theirs = mmdet_maskiou_forward(peer, features, mask_logits)
        ours = head(features, mask_logits.sigmoid().unsqueeze(1))
    assert theirs.shape == (6, 80) and theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- errors


def test_an_unmapped_tensor_is_an_error_naming_it():
    peer, _ = peer_checkpoint("official", mask_scoring=False)
    peer["roi_heads.keypoint.predictor.kps_score_lowres.weight"] = torch.zeros(17, 512, 4, 4)
    with pytest.raises(ConversionError, match=r"1 maskrcnn-benchmark tensors .*kps_score_lowres"):
        convert("official", peer)


def test_the_wrong_source_is_an_error_listing_the_tensors():
    peer, _ = peer_checkpoint("mmdet", mask_scoring=False)
    with pytest.raises(
        ConversionError, match=r"307 maskrcnn-benchmark tensors .*is --source right"
    ):
        convert("official", peer)


def test_a_missing_tensor_is_an_error_naming_the_model_tensor(tmp_path, capsys):
    peer, _ = peer_checkpoint("mmdet", mask_scoring=False)
    del peer["roi_head.mask_head.convs.1.conv.weight"]
    source, out = tmp_path / "mask_rcnn.pth", tmp_path / "converted.pth"
    torch.save({"meta": MMDET_META, "state_dict": peer}, source)
    assert main(["--source", "mmdet", str(source), str(out)]) == 1
    err = capsys.readouterr().err
    assert "model tensors it does not fill (1): roi_heads.mask_head.mask_fcn2.weight" in err
    assert not out.exists()


def test_a_tensor_of_the_wrong_shape_is_an_error_naming_it(models):
    peer, _ = peer_checkpoint("official")
    peer["roi_heads.box.feature_extractor.fc6.weight"] = torch.zeros(1024, 256 * 7 * 7 + 1)
    converted = convert("official", peer)
    with pytest.raises(
        ConversionError,
        match=r"roi_heads.box_head.fc1.weight \(1024, 12545\) vs model \(1024, 12544\)",
    ):
        check_fits(converted.model, models(converted.config_file))


def test_class_layers_that_disagree_are_an_error():
    peer, _ = peer_checkpoint("official", mask_scoring=False)
    logits = "roi_heads.mask.predictor.mask_fcn_logits."
    peer[logits + "weight"], peer[logits + "bias"] = (
        peer[logits + "weight"][1:],
        peer[logits + "bias"][1:],
    )
    with pytest.raises(
        ConversionError, match=r"mask_head.predictor.weight has 79 outputs .* expected 80"
    ):
        convert("official", peer)


def test_other_anchors_in_an_official_checkpoint_are_an_error():
    peer, _ = peer_checkpoint("official", mask_scoring=False)
    peer["rpn.anchor_generator.cell_anchors.2"] = peer["rpn.anchor_generator.cell_anchors.2"] + 0.5
    with pytest.raises(ConversionError, match=r"cell_anchors.2 = .*stride 16, size 128"):
        convert("official", peer)


def test_a_pytorch_style_mmdet_model_is_refused():
    peer, _ = peer_checkpoint("mmdet", mask_scoring=False)
    meta = {
        "config": "backbone=dict(type='ResNet', style='pytorch')\nimg_norm_cfg=dict(to_rgb=True)"
    }
    with pytest.raises(ConversionError, match=r"style='pytorch'.*and to_rgb=True"):
        convert("mmdet", peer, meta)


def test_a_zero_frozen_bn_variance_is_refused():
    peer, _ = peer_checkpoint("official", mask_scoring=False)
    var = peer["backbone.body.layer2.1.bn2.running_var"].clone()
    var[3] = 0.0
    peer["backbone.body.layer2.1.bn2.running_var"] = var
    with pytest.raises(
        ConversionError, match=r"backbone.body.layer2.1.bn2.running_var: .* holds 0.0"
    ):
        convert("official", peer)


def test_a_container_without_a_state_dict_is_refused():
    with pytest.raises(
        ConversionError, match=r"no state dict in it \(top-level keys: \['epoch', 'optimizer'\]\)"
    ):
        unwrap_checkpoint({"optimizer": {}, "epoch": 12})


def test_an_unsupported_depth_is_refused():
    peer, _ = peer_checkpoint("official", mask_scoring=False)
    peer = {k: v for k, v in peer.items() if not k.startswith("backbone.body.layer3.5.")}
    with pytest.raises(ConversionError, match=r"stages of \[3, 4, 5, 3\] blocks"):
        convert("official", peer)


class _Pickled:
    """Not a tensor or a plain container: torch.load(weights_only=True) refuses it."""


def test_cli_reads_only_plain_data_unless_told_and_names_a_missing_file(tmp_path, capsys):
    path = tmp_path / "odd.pth"
    torch.save({"model": {}, "extra": _Pickled()}, path)
    assert main(["--source", "mmdet", str(path), str(tmp_path / "out.pth")]) == 1
    assert "pass --unsafe-load" in capsys.readouterr().err
    assert main(["--source", "mmdet", str(tmp_path / "absent.pth"), str(tmp_path / "o.pth")]) == 1
    assert "absent.pth: no such file" in capsys.readouterr().err
