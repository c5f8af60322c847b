"""mmdetection's side of scripts/check_mmdet_parity.py: its own MS R-CNN, built from its own
config files, given seeded random weights that detect, run stage by stage through its own code.

Imported only in the environment scripts/setup_mmdet_env.py makes (mmdet, mmcv, mmengine).
"""

import copy
import logging
import os
from dataclasses import dataclass
from typing import List

import torch

CONFIGS = {50: "ms-rcnn_r50-caffe_fpn_1x_coco.py", 101: "ms-rcnn_r101-caffe_fpn_1x_coco.py"}


def mmdet_config(depth: int):
    """mmdetection's own MS R-CNN config (shipped in its package), with no pretrained backbone:
    nothing is downloaded, the weights are set by `randomize`."""
    import mmdet
    from mmengine.config import Config

    path = os.path.join(mmdet.__path__[0], ".mim", "configs", "ms_rcnn", CONFIGS[depth])
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None
    return cfg, path


def build(depth: int, seed: int, calibration_images: List[str]):
    """The model, in eval mode, with weights that make a random model behave like a trained one
    in the ways the comparison needs: activations of a sane scale (BatchNorm statistics measured
    on photos) and class scores above the 0.05 test threshold for some boxes."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    register_all_modules()
    # mmengine logs every parameter's initialiser at INFO: hundreds of lines, none needed here.
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    cfg, path = mmdet_config(depth)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    _spread_head_outputs(model)
    model.eval()
    _calibrate_batchnorm(model, cfg, calibration_images)
    return model, cfg, path


def _spread_head_outputs(model) -> None:
    """mmdetection's initialisation gives near-uniform class scores (all below the 0.05 test
    threshold: nothing detected) and near-zero IoU predictions. Larger classifier weights, a low
    background bias, spread class biases and IoU biases in (0.3, 0.9) make scores that vary from
    box to box, so the comparison sees ranking, thresholds and NMS at work."""
    with torch.no_grad():
        model.rpn_head.rpn_cls.weight.normal_(0, 0.05)
        cls = model.roi_head.bbox_head.fc_cls
        cls.weight.normal_(0, 0.05)
        cls.bias.normal_(0, 1.0)
        cls.bias[-1] = -1.0  # background is the last class in mmdetection
        iou = model.roi_head.mask_iou_head.fc_mask_iou
        iou.bias.uniform_(0.3, 0.9)


def _calibrate_batchnorm(model, cfg, images: List[str]) -> None:
    """Set every BatchNorm's running mean/var to the statistics of its input over `images`
    (cumulative average), as training would have; the layers stay frozen for inference."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all batches
        bn.train()
    with torch.no_grad():
        for path in images:
            batch = preprocess(model, cfg, path)
            model.backbone(batch["inputs"])
    for bn in bns:
        bn.eval()


def test_pipeline(cfg):
    """mmdetection's own test pipeline from the config, without the annotation loading (the
    photos are run without their annotations)."""
    from mmengine.dataset import Compose

    steps = [copy.deepcopy(t) for t in cfg.test_dataloader.dataset.pipeline]
    return Compose([t for t in steps if t["type"] != "LoadAnnotations"])


def preprocess(model, cfg, path: str) -> dict:
    """File -> mmdetection's pipeline (cv2 decode, Resize, pack) -> its data preprocessor
    (normalise, pad to 32): {"inputs": (1, 3, H, W) float, "data_samples": [...]}."""
    data = test_pipeline(cfg)({"img_path": path, "img_id": 0})
    batch = {"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]}
    return model.data_preprocessor(batch, False)


@dataclass
class PeerStages:
    """What mmdetection computed for one image, stage by stage (CPU tensors)."""

    inputs: torch.Tensor  # (3, H, W) normalised and padded
    image_size: tuple  # (h, w) of the resized image inside the padding
    original_size: tuple  # (h, w)
    features: List[torch.Tensor]  # P2..P6
    proposal_boxes: torch.Tensor  # (1000, 4), resized-image coordinates, by score
    proposal_scores: torch.Tensor  # sigmoid objectness
    boxes: torch.Tensor  # detections, original-image coordinates
    labels: torch.Tensor
    class_scores: torch.Tensor  # before the MaskIoU head overwrites `scores`
    mask_scores: torch.Tensor  # mmdetection 3.3's final `scores` (class score x IoU)
    masks: torch.Tensor  # (N, H, W) bool, original size


def run(model, batch: dict) -> PeerStages:
    """Each stage through mmdetection's own modules, in the order TwoStageDetector.predict and
    StandardRoIHead.predict call them; the result is checked against model.predict()."""
    inputs, samples = batch["inputs"], batch["data_samples"]
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        features = model.extract_feat(inputs)
        proposals = model.rpn_head.predict(features, samples, rescale=False)
        head = model.roi_head
        results = head.predict_bbox(
            features, metas, copy.deepcopy(proposals), head.test_cfg, rescale=False
        )
        class_scores = results[0].scores.clone()
        results = head.predict_mask(features, metas, results, rescale=True)
        whole = model.predict(inputs, copy.deepcopy(samples), rescale=True)[0].pred_instances
    final = results[0]
    for key in ("bboxes", "scores", "labels", "masks"):
        if not torch.equal(getattr(whole, key), getattr(final, key)):
            raise RuntimeError(f"stage-by-stage run differs from model.predict() in {key}")
    meta = metas[0]
    return PeerStages(
        inputs=inputs[0],
        image_size=tuple(meta["img_shape"][:2]),
        original_size=tuple(meta["ori_shape"][:2]),
        features=[f[0] for f in features],
        proposal_boxes=proposals[0].bboxes,
        proposal_scores=proposals[0].scores,
        boxes=final.bboxes,
        labels=final.labels,
        class_scores=class_scores,
        mask_scores=final.scores,
        masks=final.masks,
    )


def save_checkpoint(model, cfg, path: str) -> None:
    """The file mmdetection 3.x's Runner would leave after publish_model.py: meta (with the
    config text under "cfg", as mmengine writes it) and state_dict."""
    import mmengine

    meta = {"cfg": cfg.pretty_text, "mmengine_version": mmengine.__version__}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
