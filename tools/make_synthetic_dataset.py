#!/usr/bin/env python
"""Generate (or reuse) a synthetic instance-segmentation dataset in COCO format; the same as the
`ms-rcnn-make-dataset` command (its logic is in `ms_rcnn.data.cli`).

Example:
    python tools/make_synthetic_dataset.py --root datasets --name shapes --num-images 1000 \
        --seed 1 --preview shapes_preview.png
"""

import sys

from ms_rcnn.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
