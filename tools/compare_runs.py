#!/usr/bin/env python
"""Compare finished ms-rcnn runs, or re-rank one run's masks by another score field.

    python tools/compare_runs.py --run baseline=out/base_s1,out/base_s2 --run msrcnn=out/ms_s1
    python tools/compare_runs.py ablate --predictions out/ms_s1/inference --dataset NAME

Run with --help for every option; the logic lives in `ms_rcnn.analysis`.
"""

import sys

from ms_rcnn.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
