#!/usr/bin/env python
"""Train or evaluate Mask R-CNN / Mask Scoring R-CNN with Detectron2's usual command line;
the same as the `ms-rcnn-train` command. Run with --help for examples.

    python tools/train_net.py --config-file configs/demo/ms_rcnn_R_18_demo.yaml OUTPUT_DIR out/ms
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS out/ms/model_final.pth

The command line lives in `ms_rcnn.train_cli`, the trainer and evaluator in `ms_rcnn.engine`.
Importing this file is side-effect free, so other code can register datasets and call
`main(args)` (one process's training or evaluation, as `launch` runs it).
"""

import sys

from ms_rcnn.engine import main
from ms_rcnn.train_cli import build_parser
from ms_rcnn.train_cli import main as command_line_main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(command_line_main())
