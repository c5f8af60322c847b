"""Mask scoring on Detectron2's LazyConfig recipes (issue 27): the LSJ "new baseline" and ViTDet
configs in configs/lazy, `add_mask_scoring`, `get_detectron2_config`, and the MaskIoU head's
norms (none by default; LayerNorm in ViTDet, NaiveSyncBatchNorm in LSJ).

ViTDet needs Detectron2 main (its ViT backbone): on v0.6 its configs must be refused with an
error naming what is missing, on main they train. The LSJ recipe is in Detectron2 v0.6 already
(the same file as on main), so its config trains on both. Training runs Detectron2's own
tools/lazyconfig_train_net.py `do_train` in this process (2 steps, then the evaluation) on a
tiny model: a ViT of 32 channels and 2 blocks on 128x128 images.
"""

import argparse
import json
import re

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import NaiveSyncBatchNorm, ShapeSpec
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from omegaconf import OmegaConf
from test_lazyconfig import ROOT, _container, lazyconfig_train_net_module, load

import ms_rcnn.model_zoo.upstream as upstream
from ms_rcnn import (
    CascadeMaskScoringROIHeads,
    MaskIoUHead,
    MaskScoringROIHeads,
    add_mask_scoring,
)
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator
from ms_rcnn.model_zoo import (
    ConfigNotFoundError,
    Detectron2FeatureMissing,
    get_detectron2_config,
)
from ms_rcnn.model_zoo.upstream import Detectron2CheckoutNotFound, UpstreamConfigUnavailable

HAS_VIT = upstream._module_exists("detectron2.modeling.backbone.vit")
needs_vit = pytest.mark.skipif(
    not HAS_VIT, reason="Detectron2 v0.6 has no ViT backbone: ViTDet needs Detectron2 main"
)
LSJ = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
VITDET = "projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py"
CASCADE_VITDET = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py"
# Our config -> the Detectron2 recipe it builds on.
RECIPES = {
    "ms_rcnn_R_50_FPN_100ep_LSJ.py": LSJ,
    "ms_rcnn_vitdet_b_100ep.py": VITDET,
    "cascade_ms_rcnn_vitdet_b_100ep.py": CASCADE_VITDET,
}
VIT_CONFIGS = ["ms_rcnn_vitdet_b_100ep.py", "cascade_ms_rcnn_vitdet_b_100ep.py"]


def recipe_marks(name):
    return [needs_vit] if name in VIT_CONFIGS else []


ALL_CONFIGS = [pytest.param(n, marks=recipe_marks(n)) for n in RECIPES]


# ---------------------------------------------------------------- the MaskIoU head's norm


def small_head(**kwargs):
    torch.manual_seed(0)
    args = {"num_classes": 3, "conv_dims": [32, 32], "fc_dims": [16]}
    return MaskIoUHead(ShapeSpec(channels=32, height=14, width=14), **{**args, **kwargs})


def test_default_head_has_the_same_parameters_as_before_norms():
    """No norm by default: the same parameter names (so every checkpoint loads) and values."""
    head = small_head()
    assert list(head.state_dict()) == [
        "maskiou_conv1.weight", "maskiou_conv1.bias", "maskiou_conv2.weight",
        "maskiou_conv2.bias", "maskiou_fc1.weight", "maskiou_fc1.bias",
        "predictor.weight", "predictor.bias",
    ]  # fmt: skip
    assert all(conv.norm is None for conv in head.convs)
    explicit = small_head(conv_norm="")
    for (k, a), b in zip(head.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), k


def test_yaml_default_head_keys_are_unchanged():
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

    cfg = tiny_cfg("MaskScoringROIHeads")
    assert cfg.MODEL.ROI_MASKIOU_HEAD.NORM == ""
    keys = [k for k in build_model(cfg).state_dict() if ".maskiou_head." in k]
    assert keys == [
        f"roi_heads.maskiou_head.{name}.{p}"
        for name in ["maskiou_conv1", "maskiou_conv2", "maskiou_conv3", "maskiou_conv4",
                     "maskiou_fc1", "maskiou_fc2", "predictor"]
        for p in ("weight", "bias")
    ]  # fmt: skip
    cfg.MODEL.ROI_MASKIOU_HEAD.NORM = "GN"
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 32  # GroupNorm's 32 groups
    head = build_model(cfg).roi_heads.maskiou_head
    assert all(isinstance(c.norm, torch.nn.GroupNorm) and c.bias is None for c in head.convs)


NORMS = [
    "BN",
    "SyncBN",  # torch's SyncBatchNorm: batch norm in a single process
    "naiveSyncBN_N",  # the LSJ recipe's
    lambda c: NaiveSyncBatchNorm(c, stats_mode="N"),
    "GN",
    pytest.param("LN", marks=needs_vit),  # Detectron2 added "LN" with ViTDet
]


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n if isinstance(n, str) else "callable")
def test_normed_head_trains_and_predicts_in_one_process(norm):
    head = small_head(conv_norm=norm)
    assert all(c.norm is not None and c.bias is None for c in head.convs)
    assert "maskiou_conv1.norm.weight" in head.state_dict()
    features, masks = torch.randn(4, 32, 14, 14), torch.rand(4, 1, 28, 28)
    head.train()
    loss = head(features, masks).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss) and head.maskiou_conv1.weight.grad.abs().sum() > 0
    if norm != "SyncBN":  # torch's SyncBatchNorm refuses an empty batch (use naiveSyncBN_N)
        assert head(features[:0], masks[:0]).shape == (0, 3)  # an image without foreground
    head.eval()
    with torch.no_grad():
        assert head(features[:0], masks[:0]).shape == (0, 3)  # no detections
        assert torch.isfinite(head(features, masks)).all()


def test_unknown_norm_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="conv_norm='LNorm'.*ROI_MASKIOU_HEAD.NORM"):
        small_head(conv_norm="LNorm")


def test_layer_norm_is_there_with_vitdet_and_refused_on_v06():
    if HAS_VIT:  # Detectron2 main: get_norm("LN") is its channels-first LayerNorm
        from detectron2.layers.batch_norm import LayerNorm

        assert type(small_head(conv_norm="LN").maskiou_conv1.norm) is LayerNorm
    else:
        with pytest.raises(ValueError, match="LN on Detectron2 after v0.6"):
            small_head(conv_norm="LN")


# ---------------------------------------------------------------- add_mask_scoring


def common_model(name="mask_rcnn_fpn.py"):
    return model_zoo.get_config(f"common/models/{name}").model


def test_add_mask_scoring_on_mask_rcnn_sizes_the_head_from_the_mask_head():
    model = common_model()
    assert add_mask_scoring(model) is model
    heads = model.roi_heads
    assert heads._target_ is MaskScoringROIHeads
    head = OmegaConf.to_container(heads.maskiou_head, resolve=False)
    assert head["input_shape"] == "${..mask_head.input_shape}"
    assert (head["num_classes"], head["conv_norm"]) == ("${..num_classes}", "")  # no norm here
    assert (head["conv_dims"], head["fc_dims"]) == ([256] * 4, [1024, 1024])
    # Later overrides of the recipe reach the MaskIoU head.
    heads.num_classes = 5
    heads.mask_head.input_shape = ShapeSpec(channels=16, height=7, width=7)
    built = instantiate(heads.maskiou_head)
    assert (built.input_channels, built.input_resolution) == (16, 7)
    assert built.predictor.out_features == 5


def test_add_mask_scoring_on_the_lsj_recipe_uses_its_sync_batch_norm():
    model = model_zoo.get_config(LSJ).model
    add_mask_scoring(model, maskiou_loss_weight=0.5)
    heads = instantiate(model.roi_heads.maskiou_head)
    for conv in heads.convs:
        assert isinstance(conv.norm, NaiveSyncBatchNorm) and conv.norm._stats_mode == "N"
    assert model.roi_heads.maskiou_loss_weight == 0.5


def test_add_mask_scoring_norm_and_sizes_can_be_chosen():
    model = add_mask_scoring(
        model_zoo.get_config(LSJ).model, norm="", conv_dims=[64, 64], fc_dims=[128]
    )
    head = instantiate(model.roi_heads.maskiou_head)
    assert [c.out_channels for c in head.convs] == [64, 64] and head.convs[0].norm is None
    assert head.maskiou_fc1.out_features == 128


def test_add_mask_scoring_on_cascade():
    model = add_mask_scoring(common_model("cascade_rcnn.py"))
    assert model.roi_heads._target_ is CascadeMaskScoringROIHeads
    assert model.roi_heads.maskiou_head._target_ is MaskIoUHead


def test_add_mask_scoring_accepts_a_saved_config(tmp_path):
    """After LazyConfig.save/load, _target_ is a string; the helper still knows the class."""
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
    LazyConfig.save(cfg, str(tmp_path / "cfg.yaml"))
    reloaded = LazyConfig.load(str(tmp_path / "cfg.yaml"))
    assert isinstance(reloaded.model.roi_heads._target_, str)
    add_mask_scoring(reloaded.model)
    LazyConfig.save(reloaded, str(tmp_path / "ms.yaml"))
    text = (tmp_path / "ms.yaml").read_text()
    assert "_target_: ms_rcnn.MaskScoringROIHeads" in text
    assert "input_shape: ${..mask_head.input_shape}" in text
    model = instantiate(LazyConfig.load(str(tmp_path / "ms.yaml")).model)
    assert type(model.roi_heads) is MaskScoringROIHeads
    assert model.roi_heads.maskiou_head.input_channels == 256


def test_add_mask_scoring_refusals():
    with pytest.raises(TypeError, match="pass cfg.model"):
        add_mask_scoring(model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"))
    with pytest.raises(TypeError, match="no roi_heads"):
        add_mask_scoring(common_model("retinanet.py"))
    with pytest.raises(TypeError, match="unknown option.*maskiou_weight"):
        add_mask_scoring(common_model(), maskiou_weight=2.0)
    model = add_mask_scoring(common_model())
    with pytest.raises(ValueError, match="already MaskScoringROIHeads"):
        add_mask_scoring(model)
    no_mask = common_model()
    del no_mask.roi_heads.mask_head
    with pytest.raises(ValueError, match="needs the mask branch"):
        add_mask_scoring(no_mask)
    other = common_model()
    other.roi_heads._target_ = "detectron2.modeling.roi_heads.Res5ROIHeads"
    with pytest.raises(TypeError, match="MaskScoringMixin, YourROIHeads"):
        add_mask_scoring(other)


def test_add_mask_scoring_knows_the_classes_it_maps():
    from ms_rcnn.modeling.lazy import MASK_SCORING_HEADS

    for recipe_class, ours in MASK_SCORING_HEADS.items():
        assert issubclass(ours, recipe_class)
    assert MASK_SCORING_HEADS[StandardROIHeads] is MaskScoringROIHeads
    assert MASK_SCORING_HEADS[CascadeROIHeads] is CascadeMaskScoringROIHeads


# ---------------------------------------------------------------- finding the recipes


@pytest.fixture
def without_vit(monkeypatch):
    """On Detectron2 main, make the ViT look missing (it is missing on v0.6)."""
    exists = upstream._module_exists
    monkeypatch.setattr(
        upstream, "_module_exists", lambda m: False if m.endswith(".vit") else exists(m)
    )


@pytest.mark.parametrize("name", VIT_CONFIGS)
def test_vitdet_configs_without_vit_are_refused_naming_what_is_missing(name, without_vit):
    with pytest.raises(Detectron2FeatureMissing) as e:
        load(name)
    message = str(e.value)
    assert "detectron2.modeling.backbone.vit" in message and "ViT" in message
    assert "after v0.6" in message and "main branch" in message
    assert "projects/ViTDet/configs/COCO/" in message
    # An ImportError, and what the installer's smoke test skips (scripts/install_detectron2.py).
    assert isinstance(e.value, ImportError) and isinstance(e.value, UpstreamConfigUnavailable)


def test_vitdet_configs_without_timm_are_refused_naming_it(monkeypatch):
    monkeypatch.setattr(upstream, "_module_exists", lambda module: module != "timm")
    with pytest.raises(Detectron2FeatureMissing, match="needs module timm: .*pip install timm"):
        load("ms_rcnn_vitdet_b_100ep.py")


def test_project_configs_need_a_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(upstream, "check_requirements", lambda name: None)
    monkeypatch.delenv(upstream.CHECKOUT_ENV, raising=False)
    if upstream.detectron2_checkout() is None:  # a built Detectron2, not an editable checkout
        with pytest.raises(Detectron2CheckoutNotFound, match="set DETECTRON2_SRC to a Detectron2"):
            get_detectron2_config(VITDET)
    monkeypatch.setenv(upstream.CHECKOUT_ENV, str(tmp_path))
    with pytest.raises(Detectron2CheckoutNotFound, match=f"not in {tmp_path}.*DETECTRON2_SRC="):
        get_detectron2_config(VITDET)


def test_an_unknown_model_zoo_config_is_refused():
    with pytest.raises(ConfigNotFoundError, match="new_baselines/nothing.py is not in the"):
        get_detectron2_config("new_baselines/nothing.py")


def _text(value):
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_is_the_recipe_with_mask_scoring_added(name):
    """Upstream's config, with only the ROI heads class, the MaskIoU head and the evaluator
    class changed: everything else follows upstream's file."""
    ours, theirs = load(name), get_detectron2_config(RECIPES[name])
    assert ours.dataloader.evaluator._target_ is MaskScoringCOCOEvaluator
    ours.dataloader.evaluator._target_ = theirs.dataloader.evaluator._target_
    heads = ours.model.roi_heads
    expected = MaskScoringROIHeads if "cascade" not in name else CascadeMaskScoringROIHeads
    assert heads.pop("_target_") is expected
    head = heads.pop("maskiou_head")
    theirs.model.roi_heads.pop("_target_")
    ours, theirs = _container(ours), _container(theirs)
    assert ours.keys() == theirs.keys()
    for key in ours:  # the recipes' lambdas compare by code, not by address
        assert _text(ours[key]) == _text(theirs[key]), key
    # The MaskIoU head is normed like the recipe's mask head.
    norm = instantiate(head).convs[0].norm
    if name in VIT_CONFIGS:
        from detectron2.layers.batch_norm import LayerNorm

        assert type(norm) is LayerNorm
    else:
        assert type(norm) is NaiveSyncBatchNorm and norm._stats_mode == "N"


@needs_vit
def test_demo_twins_differ_only_in_mask_scoring():
    """configs/demo's ViTDet arms (docs/RESULTS.md): the MS arm is the baseline (upstream's
    ViTDet Mask R-CNN at demo scale) with add_mask_scoring, nothing else."""
    demo = ROOT / "configs" / "demo"
    base = LazyConfig.load(str(demo / "mask_rcnn_vitdet_tiny_demo.py"))
    ours = LazyConfig.load(str(demo / "ms_rcnn_vitdet_tiny_demo.py"))
    assert base.model.roi_heads._target_ is StandardROIHeads
    assert ours.train.pop("output_dir") != base.train.pop("output_dir")
    add_mask_scoring(base.model, fc_dims=[256, 256])
    assert _text(_container(ours)) == _text(_container(base))
    assert ours.model.roi_heads.maskiou_head.conv_norm == "LN"


# ---------------------------------------------------------------- training on a tiny model

CHANNELS = 16


def tiny(cfg, out_dir):
    """Shrink one of the recipes to a few channels on 128x128 synthetic images, CPU, no
    pretrained weights, 2 iterations then the evaluation."""
    import ms_rcnn.data  # noqa: F401  (registers synthetic_shapes_tiny_*)

    model = cfg.model
    model.pixel_mean, model.pixel_std = [127.5] * 3, [64.0] * 3
    if "net" in model.backbone:  # ViTDet: ViT + simple feature pyramid
        model.backbone.net.update(
            img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=4,
            window_block_indexes=[0], drop_path_rate=0.0, pretrain_img_size=128,
        )  # fmt: skip
        model.backbone.square_pad = 128
    else:  # the LSJ R-50: an R-18 (the model zoo's stage builder fixes ResNet widths)
        model.backbone.bottom_up.stages.depth = 18
        del model.backbone.bottom_up.stages.stride_in_1x1  # a bottleneck argument
    model.backbone.out_channels = CHANNELS
    rpn = model.proposal_generator
    rpn.head.in_channels = CHANNELS
    rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
    rpn.pre_nms_topk, rpn.post_nms_topk, rpn.batch_size_per_image = (100, 100), (32, 32), 32
    heads = model.roi_heads
    heads.num_classes = 6
    heads.batch_size_per_image = 16
    for box_head in heads.box_heads if "box_heads" in heads else [heads.box_head]:
        box_head.input_shape = ShapeSpec(channels=CHANNELS, height=7, width=7)
        box_head.conv_dims, box_head.fc_dims = [CHANNELS], [32]
    for predictor in heads.box_predictors if "box_predictors" in heads else [heads.box_predictor]:
        predictor.input_shape = ShapeSpec(channels=32)
        predictor.test_score_thresh = 0.0  # an untrained model still outputs detections
    heads.mask_head.input_shape = ShapeSpec(channels=CHANNELS, height=14, width=14)
    heads.mask_head.conv_dims = [CHANNELS, CHANNELS]
    heads.maskiou_head.conv_dims, heads.maskiou_head.fc_dims = [CHANNELS, CHANNELS], [32]

    data = cfg.dataloader
    data.train.dataset.names = "synthetic_shapes_tiny_train"
    data.test.dataset.names = "synthetic_shapes_tiny_val"
    for aug in data.train.mapper.augmentations:  # LSJ at 128 instead of 1024
        if "target_height" in aug:
            aug.target_height = aug.target_width = 128
        if "crop_size" in aug:
            aug.crop_size = (128, 128)
    (resize,) = data.test.mapper.augmentations
    resize.short_edge_length = resize.max_size = 128
    data.train.mapper.instance_mask_format = "bitmask"  # the synthetic masks are RLE
    data.train.total_batch_size = 2
    data.train.num_workers = data.test.num_workers = 0
    data.evaluator.output_dir = str(out_dir / "inference")
    data.evaluator.calibration = False

    train = cfg.train
    train.init_checkpoint = ""  # the recipes' ImageNet/MAE weights: nothing is downloaded
    train.device = "cpu"
    train.amp.enabled = False  # AMP training needs CUDA
    train.max_iter = train.eval_period = 2
    train.log_period = 1
    train.checkpointer.period = 1000
    train.output_dir = str(out_dir)
    schedule = cfg.lr_multiplier.scheduler
    schedule.milestones, schedule.num_updates = [1, 2], 3
    return cfg


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_recipe_trains_and_evaluates_with_mask_scores(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MS_RCNN_DATASETS", str(tmp_path / "datasets"))
    cfg = tiny(load(name), tmp_path / "out")
    torch.manual_seed(0)
    lazyconfig_train_net_module().do_train(argparse.Namespace(resume=False), cfg)

    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").open()]
    steps = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in steps] == [0, 1]
    for r in steps:
        assert {"loss_mask", "loss_maskiou", "loss_rpn_cls"} <= r.keys()
        losses = {k: v for k, v in r.items() if k.startswith("loss_")}
        assert all(v == v and abs(v) < 1e3 for v in losses.values()), losses  # finite
        if "cascade" in name:
            assert "loss_cls_stage2" in r
    assert {"bbox/AP", "segm/AP", "boundary/AP"} <= records[-1].keys()  # the evaluation ran
    results = json.loads(
        (tmp_path / "out" / "inference" / "coco_instances_results.json").read_text()
    )
    assert results and all({"mask_score", "pred_maskiou"} <= r.keys() for r in results)
    assert all(0.0 <= r["mask_score"] <= r["score"] + 1e-6 for r in results)


@needs_vit
def test_vitdet_tiny_model_outputs_mask_scores_in_eval_mode(tmp_path):
    """The built ViTDet MS R-CNN (explicit LazyConfig arguments only, no yacs cfg anywhere) on
    one image: every detection has pred_maskiou in [0, 1] and mask_scores."""
    cfg = tiny(load("ms_rcnn_vitdet_b_100ep.py"), tmp_path)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 255, (3, 128, 128)).float()}])
    instances = out["instances"]
    assert len(instances) > 0
    assert ((instances.pred_maskiou >= 0) & (instances.pred_maskiou <= 1)).all()
    assert torch.allclose(instances.mask_scores, instances.scores * instances.pred_maskiou)
