#!/usr/bin/env python
"""Train or evaluate Mask R-CNN / Mask Scoring R-CNN with Detectron2's usual command line.

    python tools/train_net.py --config-file configs/demo/ms_rcnn_R_18_demo.yaml OUTPUT_DIR out/ms
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS out/ms/model_final.pth
    python tools/train_net.py --config-file CONFIG --num-gpus 8 --resume

The trainer and evaluator wiring live in `ms_rcnn.engine`; this file only parses and launches.
Importing it is side-effect free, so other code can register datasets and call `main(args)`.
"""

from detectron2.engine import default_argument_parser, launch

from ms_rcnn.engine import main

__all__ = ["main"]


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
