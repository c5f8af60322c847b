#!/usr/bin/env python
"""Predict with a trained model on images; draw the detections and save COCO results.

    python tools/predict.py --config-file output/ms/config.yaml --input photos/ --output drawn/ \
        MODEL.WEIGHTS output/ms/model_final.pth

Run with --help for every option; the logic lives in `ms_rcnn.predict.pipeline` and
`ms_rcnn.predict.visualize`.
"""

import sys

from ms_rcnn.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
