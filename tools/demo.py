#!/usr/bin/env python
"""The CPU demo: train a baseline Mask R-CNN and MS R-CNN on generated data, compare their AP;
the same as the `ms-rcnn-demo` command (its logic is in `ms_rcnn.demo`).

    python tools/demo.py                  # one seed per arm, the configs' schedule (~25 min)
    python tools/demo.py --iters 100      # a quick look (AP will be low)
    python tools/demo.py --seeds 1 2 3    # the figures in the README
"""

import sys

from ms_rcnn.demo import main

if __name__ == "__main__":
    sys.exit(main())
