"""Command line of training and evaluation: `ms-rcnn-train` (and `tools/train_net.py`), with
Detectron2's usual arguments plus --register-coco; the config may be a model zoo name."""

import sys
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser, launch

from .data.user_datasets import add_register_coco_argument
from .engine import main as train_or_evaluate
from .env import add_version_argument
from .model_zoo import ConfigNotFoundError, resolve_config_file

__all__ = ["build_parser", "main"]

EXAMPLES = """examples:
  %(prog)s --config-file demo/ms_rcnn_R_18_demo.yaml OUTPUT_DIR out/ms
  %(prog)s --config-file out/ms/config.yaml --eval-only MODEL.WEIGHTS out/ms/model_final.pth
  %(prog)s --config-file COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yaml --num-gpus 8
  %(prog)s --config-file demo/ms_rcnn_R_18_demo.yaml \\
      --register-coco mine_train train.json images/ --register-coco mine_val val.json images/ \\
      DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" \\
      MODEL.ROI_HEADS.NUM_CLASSES 3

--config-file takes a YAML file or the name of a config in ms-rcnn's model zoo (the configs
shipped with the package: `python -c "import ms_rcnn; print(ms_rcnn.model_zoo.list_configs())"`);
a file of that name in the current folder wins. Multi-GPU options are Detectron2's.
"""


def build_parser():
    """Detectron2's `default_argument_parser`, plus the repeatable --register-coco and
    --version, with ms-rcnn's examples."""
    parser = default_argument_parser(epilog=EXAMPLES)
    add_version_argument(parser)
    return add_register_coco_argument(parser)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # a wrong name is reported here, before any process starts; setup() resolves it
        resolve_config_file(args.config_file)
    except ConfigNotFoundError as e:
        print(f"error: --config-file: {e}", file=sys.stderr)
        return 2
    print("Command Line Args:", args)
    # Datasets are registered inside engine.main(args), in each process launch starts.
    launch(
        train_or_evaluate,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":  # `python -m ms_rcnn.train_cli`: how ms-rcnn-demo starts each run
    sys.exit(main())
