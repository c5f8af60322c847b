"""Cascade Mask Scoring R-CNN on Detectron2's ViTDet, ViT-B, 100 epochs (needs Detectron2 main).

Detectron2's `projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py` (ViTDet's ViT-B
with three cascade box stages, LayerNorm heads), read from a Detectron2 checkout
(`$DETECTRON2_SRC`), with mask scoring added by `add_mask_scoring`: the ROI heads become
`CascadeMaskScoringROIHeads` and get a MaskIoU head with the mask head's LayerNorm, as in
`ms_rcnn_vitdet_b_100ep.py`. As in Detectron2, the mask branch and so the MaskIoU head train on
the first stage's proposals and score the final detections; `mask_scores` = the stages'
averaged `scores` x `pred_maskiou`.

    DETECTRON2_SRC=path/to/detectron2 python -m tools.lazyconfig_train_net --num-gpus 8 \
        --config-file configs/lazy/cascade_ms_rcnn_vitdet_b_100ep.py
"""

from ms_rcnn import add_mask_scoring
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator
from ms_rcnn.model_zoo import get_detectron2_config

_recipe = get_detectron2_config("projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py")
dataloader = _recipe.dataloader
lr_multiplier = _recipe.lr_multiplier
model = _recipe.model
optimizer = _recipe.optimizer
train = _recipe.train

add_mask_scoring(model)
dataloader.evaluator._target_ = MaskScoringCOCOEvaluator
