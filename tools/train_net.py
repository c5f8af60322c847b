#!/usr/bin/env python
"""Train or evaluate Mask R-CNN / Mask Scoring R-CNN with Detectron2's usual command line.

    python tools/train_net.py --config-file configs/demo/ms_rcnn_R_18_demo.yaml OUTPUT_DIR out/ms
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS out/ms/model_final.pth
    python tools/train_net.py --config-file CONFIG --num-gpus 8 --resume
    python tools/train_net.py --config-file CONFIG --register-coco mine_train train.json images/ \
        --register-coco mine_val val.json images/ \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

The trainer and evaluator wiring live in `ms_rcnn.engine`; this file only parses and launches.
Importing it is side-effect free, so other code can register datasets and call `main(args)`.
"""

from detectron2.engine import default_argument_parser, launch

from ms_rcnn.data.user_datasets import add_register_coco_argument
from ms_rcnn.engine import main

__all__ = ["build_parser", "main"]


def build_parser():
    """Detectron2's `default_argument_parser` plus the repeatable --register-coco."""
    return add_register_coco_argument(default_argument_parser())


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    # Datasets are registered inside main(args), in each process launch starts.
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
