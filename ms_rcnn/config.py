"""Config keys of ms-rcnn, added to a Detectron2 config by `add_ms_rcnn_config`, and the keys of
the Detectron2 projects its configs use (`add_project_config`: PointRend's)."""

import importlib

from detectron2.config import CfgNode as CN

__all__ = [
    "add_ms_rcnn_config",
    "add_project_config",
    "check_pointrend_config",
    "check_resize_style",
    "config_resize_style",
    "import_point_rend",
    "RESIZE_STYLES",
    "uses_mask_scoring",
    "uses_pointrend",
]


def add_ms_rcnn_config(cfg):
    """Add ms-rcnn's keys to `cfg` in place and return it. Detectron2's defaults stay untouched.

    Call after `get_cfg()` and before `merge_from_file`. Calling it twice is harmless: keys a
    user already set are kept.
    """
    _add_maskiou_head_config(cfg)
    _add_soft_nms_config(cfg)
    _add_evaluation_config(cfg)
    # What loading a checkpoint does when the config keys its weights need (pixel mean, input
    # format, anchors, RoIAlign, IoU clamp; recorded by the converters and by training) differ
    # from this config's: "error" (an error for --eval-only and predict, a warning when training
    # starts from it), "warn" (a warning everywhere) or "off". See ms_rcnn/weights_config.py.
    _set_default(cfg.MODEL, "WEIGHTS_CONFIG_CHECK", "error")
    # How images are resized to the INPUT.MIN_SIZE_* / MAX_SIZE_* sizes, train and test:
    # "detectron2" (Detectron2's ResizeShortestEdge), or the framework converted weights come from,
    # so that they see the images their training saw: "mmdet" (mmcv's size rule, OpenCV
    # bilinear) or "maskrcnn-benchmark" (its truncating size rule, PIL bilinear). See
    # ms_rcnn/data/resize.py.
    _set_default(cfg.INPUT, "RESIZE_STYLE", "detectron2")
    return cfg


# The values of INPUT.RESIZE_STYLE; what each does is in ms_rcnn/data/resize.py.
RESIZE_STYLES = ("detectron2", "mmdet", "maskrcnn-benchmark")


def check_resize_style(style) -> str:
    """Return `style` if it is one of RESIZE_STYLES, else raise a ValueError naming the key, the
    value and the allowed values (raised where the config is set up or the resize is built,
    rather than a failure deep inside the data loader)."""
    if style not in RESIZE_STYLES:
        allowed = ", ".join(repr(s) for s in RESIZE_STYLES)
        raise ValueError(f"INPUT.RESIZE_STYLE={style!r} is not one of {allowed}")
    return style


def config_resize_style(cfg) -> str:
    """INPUT.RESIZE_STYLE, checked; "detectron2" for a config without ms-rcnn's keys."""
    return check_resize_style(cfg.INPUT.get("RESIZE_STYLE", "detectron2"))


def _set_default(node, key, value):
    if key not in node:
        node[key] = value


def _add_maskiou_head_config(cfg):
    _set_default(cfg.MODEL, "ROI_MASKIOU_HEAD", CN())
    node = cfg.MODEL.ROI_MASKIOU_HEAD
    defaults = {
        # Name of the head in ms_rcnn.ROI_MASKIOU_HEAD_REGISTRY.
        "NAME": "MaskIoUHead",
        # 3x3 convs over [RoI feature, max-pooled mask]; the last one has stride 2 (paper Fig. 3).
        "NUM_CONV": 4,
        # Channels of those convs.
        "CONV_DIM": 256,
        # Hidden fully-connected layers after the convs (then one linear layer to the classes).
        "NUM_FC": 2,
        # Width of the hidden fully-connected layers.
        "FC_DIM": 1024,
        # Normalization after each conv ("" none, as the paper; "GN", "BN", "SyncBN", ... as
        # detectron2.layers.get_norm takes it), like ROI_MASK_HEAD.NORM for the mask head.
        "NORM": "",
        # Weight of loss_maskiou = 0.5 * mean squared error over RoIs whose target IoU is > 0.
        "LOSS_WEIGHT": 1.0,
        # A predicted mask pixel counts as foreground for the IoU target when its logit is > this.
        # 0.0 is probability 0.5 (the official code after its fix); 0.5 reproduces the pre-fix
        # official code and mmdetection (probability 0.62).
        "MASK_LOGIT_THRESHOLD": 0.0,
        # Stop the MaskIoU loss's gradient from reaching the mask head through the mask input.
        # The reference implementations let it flow; see docs/DESIGN.md for the choice.
        "DETACH_MASK": True,
        # Stop the MaskIoU loss's gradient from reaching the backbone through the RoI features.
        "DETACH_FEATURES": False,
        # Clamp the predicted IoU to [0, 1] before it multiplies `scores`.
        "CLAMP_PREDICTION": True,
        # At inference, also write mask_scores into `scores` (for tools that read only `scores`;
        # box AP then changes too). By default `scores` stays the box predictor's: the
        # classification score, or with TEST.SOFT_NMS.ENABLED the Soft-NMS-decayed one.
        "OVERWRITE_SCORES": False,
        # Train only the MaskIoU head: freeze every other parameter (start from a trained
        # Mask R-CNN checkpoint).
        "TRAIN_ONLY_MASKIOU": False,
        # What the head learns to predict (ms_rcnn/modeling/quality_targets.py): "mask_iou"
        # (the paper), "boundary_iou" (boundary IoU with the whole GT), or with both "min",
        # "mean" or "product".
        "TARGET": "mask_iou",
        # Boundary band of the boundary IoU targets, in cells of the mask head's M x M grid.
        "BOUNDARY_WIDTH": 1,
        # Also train the head on up to this many of each image's sampled background RoIs, each
        # scored as the class the box head predicts, towards its true quality (0 without a GT
        # of that class); see docs/DESIGN.md. 0: positives only, as in the paper.
        "NEGATIVE_ROIS_PER_IMAGE": 0,
        # PointRend only (PointRendMaskScoringROIHeads): the mask the head scores, "refined"
        # (the point head's mask on the regular 2S x 2S grid) or "coarse" (the coarse head's
        # 7 x 7 mask upsampled to 2S x 2S); see docs/DESIGN.md.
        "POINTREND_MASK": "refined",
    }
    for key, value in defaults.items():
        _set_default(node, key, value)


def _add_soft_nms_config(cfg):
    _set_default(cfg.TEST, "SOFT_NMS", CN())
    node = cfg.TEST.SOFT_NMS
    defaults = {
        # Replace the box head's test-time hard NMS with Soft-NMS (training and RPN unchanged).
        # Off by default, as in the official code, whose published numbers use hard NMS; the
        # paper used Soft-NMS (Gaussian, SIGMA 0.6, SCORE_THRESHOLD 0.001: the author's setting
        # in the official repo's issue #5), which the defaults below reproduce.
        "ENABLED": False,
        # "gaussian": score *= exp(-iou^2 / SIGMA); "linear": score *= 1 - iou when
        # iou > IOU_THRESHOLD; "hard": plain NMS at IOU_THRESHOLD.
        "METHOD": "gaussian",
        # Gaussian decay width (> 0): the paper's 0.6. (Bodla et al.'s Soft-NMS code, with the
        # same formula, defaults to 0.5, as do the `ms_rcnn.modeling.soft_nms` functions.)
        "SIGMA": 0.6,
        # Overlap above which "linear" decays and "hard" suppresses, in [0, 1].
        "IOU_THRESHOLD": 0.3,
        # Boxes whose decayed score falls to or below this are dropped, in [0, 1).
        "SCORE_THRESHOLD": 0.001,
    }
    for key, value in defaults.items():
        _set_default(node, key, value)


def _add_evaluation_config(cfg):
    _set_default(cfg.TEST, "BOUNDARY_EVAL", CN())
    node = cfg.TEST.BOUNDARY_EVAL
    defaults = {
        # Report Boundary AP (task "boundary", masks ranked like segm) next to bbox and segm.
        # Needs faster-coco-eval; it takes about 2.6x the segm evaluation's time
        # (docs/BENCHMARKS.md), so large sets may turn it off.
        "ENABLED": True,
        # Boundary width as a fraction of the image diagonal (Boundary IoU paper: 0.02).
        "DILATION_RATIO": 0.02,
    }
    for key, value in defaults.items():
        _set_default(node, key, value)


def uses_mask_scoring(cfg) -> bool:
    """Whether the config's ROI heads score masks, read from Detectron2's registry without
    building anything: the class has `MaskScoringMixin`'s hook `mask_scoring_inputs` (looked up
    by name: config sits below the model code). False for a name not (yet) registered."""
    from detectron2.modeling import ROI_HEADS_REGISTRY

    if not cfg.MODEL.MASK_ON:
        return False
    try:
        heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    except KeyError:
        return False
    return isinstance(heads, type) and callable(getattr(heads, "mask_scoring_inputs", None))


def uses_pointrend(config_file: str) -> bool:
    """Whether a YAML config (with its _BASE_ files) builds a PointRend model."""
    loaded = CN.load_yaml_with_base(config_file, allow_unsafe=True)
    model = loaded.get("MODEL") or {}
    mask_head = (model.get("ROI_MASK_HEAD") or {}).get("NAME", "")
    roi_heads = (model.get("ROI_HEADS") or {}).get("NAME", "")
    return (
        "POINT_HEAD" in model
        or "PointRend" in str(mask_head)
        or str(roi_heads).startswith("PointRend")
    )


def add_project_config(cfg, config_file: str):
    """Add to `cfg` the keys of the Detectron2 project `config_file` uses, before it is merged:
    PointRend's (`add_pointrend_config`) for a PointRend config. Returns `cfg`.

    Only keys: the ROI heads such a config names register when `ms_rcnn.modeling.pointrend` is
    imported, which `ms_rcnn.model_zoo.merge_config_file` does. Raises an ImportError saying
    how to get PointRend when the file needs it and it is not importable.
    """
    if uses_pointrend(config_file) and "POINT_HEAD" not in cfg.MODEL:
        import_point_rend().add_pointrend_config(cfg)  # it overwrites: add once
    return cfg


def import_point_rend():
    """PointRend's package, from the installed Detectron2 or a checkout's projects/PointRend.

    Detectron2 v0.6's wheels ship it as `detectron2.projects.point_rend`; on Detectron2 main
    that name resolves only for an in-place install of a source checkout (`pip install -e`),
    and a checkout's `projects/PointRend` on `sys.path` provides it as `point_rend`.
    """
    errors = []
    for name in ("detectron2.projects.point_rend", "point_rend"):
        try:
            return importlib.import_module(name)
        except ImportError as e:  # also a missing cv2, which PointRend imports
            errors.append(f"{name}: {e}")
    raise ImportError(
        "This config uses PointRend (MODEL.ROI_MASK_HEAD.NAME PointRendMaskHead / "
        "MODEL.POINT_HEAD), which could not be imported ("
        + "; ".join(errors)
        + "). Detectron2 v0.6 ships it as detectron2.projects.point_rend (it also needs "
        "opencv-python-headless). On Detectron2 main, `detectron2.projects` resolves only "
        "from a source checkout: install it in place (`pip install -e <detectron2 checkout>`) "
        "or put <detectron2 checkout>/projects/PointRend on PYTHONPATH."
    )


def check_pointrend_config(cfg) -> None:
    """Cross-key rules of a PointRend config, checked before a model is built.

    PointRend's point head has its own class count, `MODEL.POINT_HEAD.NUM_CLASSES` (80 by
    default), which must equal `MODEL.ROI_HEADS.NUM_CLASSES`; PointRend only asserts it, deep in
    the model's construction, without naming either key. Setting `NUM_CLASSES` for one's own
    dataset and forgetting the second key is the usual way to hit it. Raises a ValueError that
    names both keys and the override to add, exactly where PointRend would assert: a mask head
    that builds a point head (`ImplicitPointRendMaskHead` always; `PointRendMaskHead`, which
    `PointRendROIHeads` also makes of a legacy `CoarseMaskHead`, unless `POINT_HEAD_ON` is off).
    """
    if "POINT_HEAD" not in cfg.MODEL or not cfg.MODEL.MASK_ON:
        return
    heads, mask_head = cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_MASK_HEAD.NAME
    pointrend_mask_head = mask_head == "PointRendMaskHead" or heads.startswith("PointRend")
    builds_point_head = mask_head == "ImplicitPointRendMaskHead" or (
        pointrend_mask_head and cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON
    )
    if not builds_point_head:
        return
    roi_classes, point_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.POINT_HEAD.NUM_CLASSES
    if roi_classes != point_classes:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES={roi_classes} but MODEL.POINT_HEAD.NUM_CLASSES="
            f"{point_classes}: PointRend's point head predicts one mask per class, so the two "
            f"must be equal; add `MODEL.POINT_HEAD.NUM_CLASSES {roi_classes}` to the overrides "
            "(or set both in the config file)"
        )
