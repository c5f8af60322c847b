"""Command line of `ms-rcnn-convert` (tools/convert_checkpoint.py): convert, check against the
model, save, report."""

import argparse
import os
import pickle
import re
import sys
from pathlib import Path

import torch

from ..checkpoint import atomic_torch_save
from ..env import add_version_argument
from ..model_zoo import ConfigNotFoundError, get_config_file, zoo_config_name
from ..weights_config import weights_config
from . import SOURCES, ConversionError, convert_state_dict, unwrap_checkpoint
from .verify import check_fits, check_loads_exactly, config_from_file

__all__ = ["main", "load_peer_file"]

EXAMPLES = """examples:
  %(prog)s --source maskrcnn-benchmark model_0090000.pth ms_rcnn_R_50_mrb.pth
  %(prog)s --source mmdet ms_rcnn_r50_caffe_fpn_1x_coco_20200702_180848-61c9355e.pth out.pth

It prints what it mapped and changed and the config to evaluate with (a model zoo name), then
checks that the result loads strictly into that config's model.
"""

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a published maskrcnn-benchmark (official MS R-CNN) or mmdetection "
        "COCO checkpoint to a Detectron2 checkpoint for ms-rcnn, and check that it loads "
        "strictly into the model of the config it reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_version_argument(parser)
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("input", help="the peer's .pth file")
    parser.add_argument("output", help="where to write the Detectron2 checkpoint (.pth)")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip building the model and loading the result strictly (a few seconds)",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="read INPUT with torch.load(weights_only=False): runs pickled code, so only for "
        "files you trust, and only if the safe load fails",
    )
    return parser.parse_args(argv)


# What mmdetection's tools/model_converters/publish_model.py keeps of a training checkpoint.
STRIP_COMMAND = (
    "python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
    "torch.save({{'meta': c.get('meta', {{}}), 'state_dict': c['state_dict']}}, 'stripped.pth')\""
)


def _runner_checkpoint_advice(path: str, module: str) -> str:
    """What to do with a checkpoint that pickles objects of a training framework (an mmengine
    Runner's message_hub, an optimizer's or a scheduler's state): only its meta and state_dict
    are needed, and those are plain data."""
    return (
        f"{path} pickles objects of {module} (a training checkpoint: an mmengine Runner keeps its "
        "message_hub, optimizer and schedulers in it). Strip it to meta and state_dict, as "
        "mmdetection's tools/model_converters/publish_model.py does, in an environment where "
        f"{module.split('.')[0]} imports:\n  " + STRIP_COMMAND.format(path=path) + "\nthen "
        "convert stripped.pth (no --unsafe-load needed)"
    )


def _framework_global(message: str):
    """The mmengine/mmcv/mmdet class a weights_only refusal names, if any."""
    match = re.search(r"\b((?:mmengine|mmcv|mmdet)(?:\.\w+)+)", message)
    return match.group(1) if match else None


def load_peer_file(path: str, unsafe: bool = False):
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as e:
        framework = _framework_global(str(e))
        if framework:
            raise ConversionError(_runner_checkpoint_advice(path, framework)) from e
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refused it ({str(e).splitlines()[0]}). If you "
            "trust the file (downloaded from the publisher, sha256 checked), pass --unsafe-load"
        ) from e
    except ModuleNotFoundError as e:
        # Only with --unsafe-load: the pickle names a module this environment cannot import.
        raise ConversionError(_runner_checkpoint_advice(path, e.name or str(e))) from e
    except (EOFError, RuntimeError) as e:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({e})") from e


def _find_config(relative: str) -> str:
    """The converted model's config, from ms-rcnn's model zoo (shipped with the package)."""
    try:
        return get_config_file(relative)
    except ConfigNotFoundError as e:
        raise ConversionError(f"{e}; pass --no-verify to skip the check") from e


def convert_file(args) -> None:
    state, meta = unwrap_checkpoint(load_peer_file(args.input, args.unsafe_load), args.input)
    converted = convert_state_dict(state, args.source, meta)
    print(converted.report())
    model = cfg = None
    try:
        cfg = config_from_file(_find_config(converted.config_file), converted.config_overrides())
    except ConversionError:
        if not args.no_verify:
            raise
        print(
            f"Note: {converted.config_file} not found: the checkpoint will not record the config "
            "keys its weights need (pixel mean, anchors, RoIAlign), so loading cannot check them"
        )
    if not args.no_verify:
        from detectron2.modeling import build_model

        model = build_model(cfg)
        check_fits(converted.model, model, f"converted {args.input}")
    record = None if cfg is None else weights_config(cfg, converted.config_file)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    atomic_torch_save(converted.checkpoint(args.input, record), args.output)
    if model is not None:
        try:
            check_loads_exactly(args.output, model, cfg)
        except Exception:
            os.remove(args.output)
            raise
        print(
            f"Checked: {args.output} loads strictly into {converted.config_file}, "
            "every tensor equal"
        )
    overrides = " ".join(converted.config_overrides())
    command = (
        f"ms-rcnn-train --config-file {zoo_config_name(converted.config_file)} --eval-only "
        f"MODEL.WEIGHTS {args.output} {overrides}"
    )
    print(f"Wrote {args.output}. Evaluate with:\n  {command.rstrip()}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert_file(args)
    except ValueError as e:  # ConversionError, or the strict loader's refusal
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
