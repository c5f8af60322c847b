#!/usr/bin/env python
"""Convert a published official MS R-CNN (maskrcnn-benchmark) or mmdetection COCO checkpoint.

    python tools/convert_checkpoint.py --source maskrcnn-benchmark model_0090000.pth ms_rcnn_mrb.pth
    python tools/convert_checkpoint.py --source mmdet ms_rcnn_r50_caffe_fpn_1x_coco_....pth out.pth

It prints what it mapped and changed and the config to evaluate with, then checks that the result
loads strictly into that config's model. The logic lives in `ms_rcnn.conversion`.
"""

import sys

from ms_rcnn.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
