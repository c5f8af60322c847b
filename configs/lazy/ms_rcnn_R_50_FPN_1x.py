"""Mask Scoring R-CNN, R-50-FPN, 1x: a LazyConfig for Detectron2's `tools/lazyconfig_train_net.py`.

It is Detectron2's own `COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py`, built from the same
`common/` model-zoo configs, with only the ROI heads and the evaluator's class changed (a test
checks): the class becomes `MaskScoringROIHeads`, which takes a `maskiou_head`, and the box
predictor becomes `SoftNMSFastRCNNOutputLayers`, the same layers with a test-time Soft-NMS
switch (off here, so NMS stays Detectron2's). The evaluator becomes `MaskScoringCOCOEvaluator`,
which ranks segm results by `mask_scores` (Detectron2's COCOEvaluator ranks them by `scores`,
which would leave mask scoring out of the mask AP). Importing `ms_rcnn` below is all the
registration needed.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/ms_rcnn_R_50_FPN_1x.py \
        model.roi_heads.box_predictor.soft_nms_enabled=True   # Soft-NMS, optional
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ms_rcnn import MaskIoUHead, MaskScoringROIHeads, SoftNMSFastRCNNOutputLayers
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

# The lines of Detectron2's mask_rcnn_R_50_FPN_1x.py, reaching its common/ files through the
# model zoo (a relative import works only for files inside Detectron2's configs/ folder).
optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
train = model_zoo.get_config("common/train.py").train

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
dataloader.evaluator._target_ = MaskScoringCOCOEvaluator  # segm AP ranked by mask_scores

# Mask scoring: swap the ROI heads class (all StandardROIHeads arguments stay) and add the head.
model.roi_heads._target_ = MaskScoringROIHeads
model.roi_heads.box_predictor._target_ = SoftNMSFastRCNNOutputLayers
model.roi_heads.maskiou_head = L(MaskIoUHead)(
    # The mask branch's pooled RoI features: FPN channels x ROI mask pooler resolution.
    input_shape=ShapeSpec(channels=256, height=14, width=14),
    num_classes="${..num_classes}",
    conv_dims=[256, 256, 256, 256],  # the last with stride 2: 14x14 -> 7x7
    fc_dims=[1024, 1024],
)
