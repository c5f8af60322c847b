"""The ViTDet baseline of the CPU demo: Detectron2's ViTDet Mask R-CNN recipe at demo scale.

Detectron2's `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py` (needs Detectron2 main
and `$DETECTRON2_SRC`, see `ms_rcnn.model_zoo.get_detectron2_config`), unchanged in structure
(a plain ViT with window and global attention blocks, the simple feature pyramid with
LayerNorm, 2-conv RPN head, 4conv1fc box head and mask head with LayerNorm, LSJ crops, AdamW)
but sized for the generated synthetic_shapes data on a CPU: 128x128 images, a ViT of 4 blocks
of 96 channels from random weights (no MAE weights: nothing is downloaded), 64-channel pyramid
and heads, 32 RoIs per image, batch 4, 600 iterations (about 0.5 s an iteration on one CPU
thread). Scale jitter is narrowed to [0.5, 1.5] (the recipe's
[0.1, 2.0] is for 100 epochs of COCO), and the layer-wise learning-rate decay is off (it is for
fine-tuning pretrained blocks; these start from scratch) with a learning rate for that.
`ms_rcnn_vitdet_tiny_demo.py` is the same with mask scoring added.

    DETECTRON2_SRC=path/to/detectron2 python -m tools.lazyconfig_train_net \
        --config-file configs/demo/mask_rcnn_vitdet_tiny_demo.py train.seed=1 \
        train.output_dir=output/vitdet_demo/mask_rcnn_s1
"""

from detectron2.layers import ShapeSpec

import ms_rcnn.data  # noqa: F401  (registers the synthetic_shapes_* datasets)
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator
from ms_rcnn.model_zoo import get_detectron2_config

_recipe = get_detectron2_config("projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py")
dataloader = _recipe.dataloader
lr_multiplier = _recipe.lr_multiplier
model = _recipe.model
optimizer = _recipe.optimizer
train = _recipe.train

_size, _channels, _depth = 128, 64, 4

# The ViT: 128 / 16 = 8 x 8 patches; blocks 0 and 2 attend in 4 x 4 windows, 1 and 3 globally
# (the recipe: 12 blocks, global at 2, 5, 8, 11).
model.backbone.net.update(
    img_size=_size,
    pretrain_img_size=_size,
    embed_dim=96,
    depth=_depth,
    num_heads=3,
    window_size=4,
    window_block_indexes=[0, 2],
    drop_path_rate=0.0,
)
model.backbone.square_pad = _size
model.backbone.out_channels = _channels
model.pixel_mean = [127.5, 127.5, 127.5]  # from scratch: inputs scaled to about [-2, 2]
model.pixel_std = [64.0, 64.0, 64.0]

_rpn = model.proposal_generator
_rpn.head.in_channels = _channels
_rpn.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
_rpn.pre_nms_topk = (600, 600)
_rpn.post_nms_topk = (256, 256)
_rpn.batch_size_per_image = 128

_heads = model.roi_heads
_heads.num_classes = 6
_heads.batch_size_per_image = 32
_heads.box_head.input_shape = ShapeSpec(channels=_channels, height=7, width=7)
_heads.box_head.conv_dims = [_channels] * 4
_heads.box_head.fc_dims = [256]
_heads.box_predictor.input_shape = ShapeSpec(channels=256)
_heads.box_predictor.test_topk_per_image = 50
_heads.mask_head.input_shape = ShapeSpec(channels=_channels, height=14, width=14)
_heads.mask_head.conv_dims = [_channels] * 5

dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.test.dataset.names = "synthetic_shapes_val"
_flip, _resize, _crop = dataloader.train.mapper.augmentations  # the recipe's LSJ
_resize.update(min_scale=0.5, max_scale=1.5, target_height=_size, target_width=_size)
_crop.crop_size = (_size, _size)
(_test_resize,) = dataloader.test.mapper.augmentations
_test_resize.update(short_edge_length=_size, max_size=_size)
dataloader.train.mapper.instance_mask_format = "bitmask"  # the masks are RLE (holes, pieces)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1
# Box AP ranked by scores, segm and Boundary AP by mask_scores when the model has them (by
# scores for this baseline); both arms' predictions are saved for the same-weights ablation.
dataloader.evaluator._target_ = MaskScoringCOCOEvaluator
dataloader.evaluator.output_dir = "${train.output_dir}/inference/synthetic_shapes_val"

optimizer.lr = 4e-4
optimizer.params.lr_factor_func = None  # no layer-wise decay from scratch

train.init_checkpoint = ""
train.device = "cpu"
train.amp.enabled = False  # AMP training needs CUDA
train.seed = 1
train.max_iter = 600
train.eval_period = 600  # evaluate once, at the end
train.log_period = 20
train.checkpointer.period = 200
train.output_dir = "./output/vitdet_demo/mask_rcnn"
lr_multiplier.scheduler.update(milestones=[450, 550], num_updates=train.max_iter)
lr_multiplier.warmup_length = 100 / train.max_iter
