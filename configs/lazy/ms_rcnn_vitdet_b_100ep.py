"""Mask Scoring R-CNN on Detectron2's ViTDet, ViT-B, 100 epochs (needs Detectron2 main).

Detectron2's `projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py` (a plain ViT-B from
MAE weights with a simple feature pyramid, LSJ at 1024, LayerNorm in the box and mask heads,
AdamW with layer-wise decay), read from a Detectron2 checkout (`$DETECTRON2_SRC`, see
`ms_rcnn.model_zoo.get_detectron2_config`), with mask scoring added by `add_mask_scoring`: the
ROI heads become `MaskScoringROIHeads` with a MaskIoU head sized from the mask head (256 x 14 x
14). Its convs use the mask head's norm, LayerNorm ("LN"), as the recipe norms every conv of its
heads: per-RoI normalization that needs no batch statistics, matching the ViT's own LayerNorms.
Its parameters are outside the ViT, so the layer-wise learning-rate decay leaves them at the
base rate. Segm AP is ranked by `mask_scores` (`MaskScoringCOCOEvaluator`).

    DETECTRON2_SRC=path/to/detectron2 python -m tools.lazyconfig_train_net --num-gpus 8 \
        --config-file configs/lazy/ms_rcnn_vitdet_b_100ep.py
"""

from ms_rcnn import add_mask_scoring
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator
from ms_rcnn.model_zoo import get_detectron2_config

_recipe = get_detectron2_config("projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py")
dataloader = _recipe.dataloader
lr_multiplier = _recipe.lr_multiplier
model = _recipe.model
optimizer = _recipe.optimizer
train = _recipe.train

add_mask_scoring(model)
dataloader.evaluator._target_ = MaskScoringCOCOEvaluator
