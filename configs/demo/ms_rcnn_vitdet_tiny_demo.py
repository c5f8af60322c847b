"""MS R-CNN on the demo-scale ViTDet: `mask_rcnn_vitdet_tiny_demo.py` with mask scoring added.

The same recipe, data, schedule and seed as the baseline; `add_mask_scoring` swaps in
`MaskScoringROIHeads` and a MaskIoU head with the mask head's LayerNorm, 64-channel convs and
256-wide FCs (the R-18 demo's MaskIoU head sizes). The head's weights are drawn after every
other layer's, so both arms start from the same weights elsewhere for a seed.

    DETECTRON2_SRC=path/to/detectron2 python -m tools.lazyconfig_train_net \
        --config-file configs/demo/ms_rcnn_vitdet_tiny_demo.py train.seed=1 \
        train.output_dir=output/vitdet_demo/ms_rcnn_s1
"""

from ms_rcnn import add_mask_scoring

from .mask_rcnn_vitdet_tiny_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_mask_scoring(model, fc_dims=[256, 256])
train.output_dir = "./output/vitdet_demo/ms_rcnn"
