"""MS R-CNN on the generated `synthetic_shapes_tiny_*` data: a CPU run of a few iterations.

The tests train with it through Detectron2's unmodified `tools/lazyconfig_train_net.py`; it also
shows what to change in `ms_rcnn_R_50_FPN_1x.py` for another dataset: the dataset names, the
class count, image sizes, and (here, for speed) narrower layers. The datasets live under
`$MS_RCNN_DATASETS` (default `./datasets`) and are generated on first use.

    python tools/lazyconfig_train_net.py \
        --config-file configs/lazy/ms_rcnn_R_50_FPN_synthetic_tiny.py train.output_dir=out
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

import ms_rcnn.data  # noqa: F401  (registers the synthetic_shapes_* datasets)
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

# Every top-level dict is part of the config, imported or not (names with _ are left out).
from .ms_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint = ""  # from scratch: no download
train.device = "cpu"
train.max_iter = 2
train.eval_period = 2  # evaluate once, at the end
train.log_period = 1
train.checkpointer.period = 1000
train.output_dir = "./output/ms_rcnn_synthetic_tiny"

dataloader.train.dataset.names = "synthetic_shapes_tiny_train"
dataloader.test.dataset.names = "synthetic_shapes_tiny_val"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)
]
dataloader.train.mapper.instance_mask_format = "bitmask"  # the masks are RLE (holes, pieces)
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
# Ranks segm results by mask_scores, box results by scores (Detectron2's would use scores).
dataloader.evaluator = L(MaskScoringCOCOEvaluator)(
    dataset_name="${..test.dataset.names}", tasks=("bbox", "segm"), calibration=False
)

# A narrow R-18-FPN; every input_shape below follows FPN's out_channels.
_channels = 32
model.backbone.bottom_up.freeze_at = 0
model.pixel_mean = [127.5, 127.5, 127.5]  # from scratch: inputs scaled to about [-2, 2]
model.pixel_std = [64.0, 64.0, 64.0]
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # an R-50 (bottleneck) argument
model.backbone.out_channels = _channels
model.proposal_generator.head.in_channels = _channels
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.pre_nms_topk = (200, 200)
model.proposal_generator.post_nms_topk = (64, 64)
model.proposal_generator.batch_size_per_image = 64

_heads = model.roi_heads
_heads.num_classes = 6
_heads.batch_size_per_image = 32
_heads.box_head.input_shape = ShapeSpec(channels=_channels, height=7, width=7)
_heads.box_head.fc_dims = [64, 64]
_heads.box_predictor.input_shape = ShapeSpec(channels=64)
_heads.box_predictor.test_score_thresh = 0.0  # an untrained model still outputs detections
_heads.mask_head.input_shape = ShapeSpec(channels=_channels, height=14, width=14)
_heads.mask_head.conv_dims = [16, 16]
_heads.maskiou_head.input_shape = ShapeSpec(channels=_channels, height=14, width=14)
_heads.maskiou_head.conv_dims = [16, 16]
_heads.maskiou_head.fc_dims = [64]
