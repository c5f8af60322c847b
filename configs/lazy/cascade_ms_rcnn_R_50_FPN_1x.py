"""Cascade Mask R-CNN with mask scoring, R-50-FPN, 1x, for `tools/lazyconfig_train_net.py`.

Detectron2's `common/models/cascade_rcnn.py` model (Cascade Mask R-CNN) with the ROI heads class
swapped for `CascadeMaskScoringROIHeads` and a MaskIoU head added; the rest is
`ms_rcnn_R_50_FPN_1x.py`'s (Detectron2's 1x schedule, COCO data). Cascade's inference runs its
own hard NMS, so there is no Soft-NMS switch here.
"""

from detectron2 import model_zoo

from ms_rcnn import CascadeMaskScoringROIHeads

from .ms_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .ms_rcnn_R_50_FPN_1x import model as _ms_model

model = model_zoo.get_config("common/models/cascade_rcnn.py").model
model.backbone.bottom_up.freeze_at = 2
model.roi_heads._target_ = CascadeMaskScoringROIHeads
model.roi_heads.maskiou_head = _ms_model.roi_heads.maskiou_head
