"""Mask Scoring R-CNN on Detectron2's LSJ "new baseline" R-50-FPN, 100 epochs.

Detectron2's `new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py` (large-scale jitter at 1024,
SyncBN everywhere, 4conv1fc box head, trained from scratch, batch 64), loaded from the installed
Detectron2's model zoo, with mask scoring added by `add_mask_scoring`: the ROI heads become
`MaskScoringROIHeads` and get a MaskIoU head sized from the recipe's mask head (256 x 14 x 14
RoI features). Its convs use the recipe's mask-head norm, `NaiveSyncBatchNorm(c,
stats_mode="N")`: the recipe norms every conv of its heads because it trains from scratch at a
large learning rate, and the stats_mode "N" variant is the one that accepts a GPU with no
foreground RoI. Segm AP is ranked by `mask_scores` (`MaskScoringCOCOEvaluator`). The R-101 and
RegNet siblings work the same way: change the name below.

    python -m tools.lazyconfig_train_net --num-gpus 8 \
        --config-file configs/lazy/ms_rcnn_R_50_FPN_100ep_LSJ.py
"""

from detectron2 import model_zoo

from ms_rcnn import add_mask_scoring
from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

_recipe = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
dataloader = _recipe.dataloader
lr_multiplier = _recipe.lr_multiplier
model = _recipe.model
optimizer = _recipe.optimizer
train = _recipe.train

add_mask_scoring(model)
dataloader.evaluator._target_ = MaskScoringCOCOEvaluator
