"""Command line of `ms-rcnn-predict` (tools/predict.py): predict on images, draw, save the COCO
results."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from ..data.user_datasets import add_register_coco_argument
from ..env import add_version_argument
from .pipeline import (
    BatchPredictor,
    InputError,
    check_class_count,
    check_images,
    collect_images,
    dataset_image_ids,
    load_model,
    output_paths,
    predict_config,
    prediction_metadata,
    read_weights,
    register_for_prediction,
)
from .results import PredictionsWriter, coco_results

__all__ = ["build_parser", "main", "run"]

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  %(prog)s --config-file output/ms/config.yaml --input photos/ --output drawn/ \\
      MODEL.WEIGHTS output/ms/model_final.pth
  %(prog)s --config-file CFG --input 'shots/*.jpg' a.png --output drawn/ \\
      --register-coco mine_val val.json images/ MODEL.WEIGHTS model.pth MODEL.DEVICE cuda
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Predict with a trained Mask R-CNN or MS R-CNN: one drawn image per input "
        "(same file name, same size) and OUTPUT/predictions.json (COCO results, with "
        "mask_score and pred_maskiou). Detections are ranked by mask_scores when the model has "
        "them, else by the class score.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_version_argument(parser)
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="model config: a file, or a name in ms-rcnn's model zoo",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files, folders (their images) or quoted globs",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="keep detections whose ranking score (mask_score, or the class score) is above T "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per forward pass (default: %(default)s)"
    )
    add_register_coco_argument(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cuda",
    )
    return parser


def _read_rgb(path: str):
    from detectron2.data.detection_utils import read_image

    return read_image(path, format="RGB")


def run(args) -> int:
    """Predict, draw and save; returns the exit status: 0 when done, 1 when no input could be
    read or a failure stopped the run midway, 130 when Ctrl-C did. Everything about the inputs,
    config, weights and classes is checked before the model is built; what a run finished is
    kept however it ends (see `_predict_all`)."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise InputError(f"--confidence-threshold {args.confidence_threshold}: must be in [0, 1]")
    images = collect_images(args.input)
    images, outputs, skipped = check_images(images, output_paths(images, args.output))
    registered = register_for_prediction(args.register_coco)
    cfg = predict_config(args.config_file, args.opts or [], args.confidence_threshold)
    contents = read_weights(cfg)
    meta, dataset = prediction_metadata(cfg, registered)
    check_class_count(cfg, contents, meta, dataset)
    if not images:
        print(f"No readable image: skipped {', '.join(skipped)}", file=sys.stderr)
        return 1
    ids = dataset_image_ids(meta, images) or {p: i for i, p in enumerate(images, 1)}
    predictor = BatchPredictor(cfg, load_model(cfg, contents))
    os.makedirs(args.output, exist_ok=True)
    return _predict_all(args, predictor, images, outputs, ids, meta, skipped)


def _predict_all(args, predictor, images, outputs, ids, meta, skipped) -> int:
    """The loop over images. Each finished image (drawing saved, records appended to the
    partial file) stays finished: predictions.json is written however the loop ends, and the
    summary says how many images were done."""
    from tqdm import tqdm

    from .visualize import RankedVisualizer, rank_detections

    class_names = meta.get("thing_classes")
    dataset_ids = meta.get("thing_dataset_id_to_contiguous_id")
    writer = PredictionsWriter(args.output)
    done, current, status, stopped = 0, None, 0, None
    try:
        with tqdm(total=len(images), unit="img", disable=len(images) < 2, file=sys.stderr) as bar:
            for start in range(0, len(images), args.batch_size):
                batch = []
                for k in range(start, min(start + args.batch_size, len(images))):
                    try:
                        batch.append((k, _read_rgb(images[k])))
                    except Exception as e:  # unreadable after all (check_images passed it)
                        logger.warning(f"Skipping {images[k]}: not a readable image ({e})")
                        skipped.append(images[k])
                        bar.update(1)
                if not batch:
                    continue
                current = ", ".join(images[k] for k, _ in batch)
                for (k, rgb), instances in zip(batch, predictor([rgb for _, rgb in batch])):
                    current = images[k]
                    ranked = rank_detections(instances, args.confidence_threshold)
                    records = coco_results(ranked, ids[images[k]], images[k], dataset_ids)
                    drawn = RankedVisualizer(rgb, meta).draw_ranked_instances(ranked, class_names)
                    _save_image(drawn.get_image(), outputs[k])
                    writer.add(records)
                    done += 1
                    bar.update(1)
    except KeyboardInterrupt:
        status, stopped = 130, "interrupted (Ctrl-C)"
    except Exception as e:
        logger.exception(f"Prediction failed on {current}")
        status, stopped = 1, f"failed on {current}: {type(e).__name__}: {e}"
    finally:
        path = writer.finalize()
    kept = f"{len(writer.records)} detection(s) in {path}"
    if stopped:
        print(
            f"predict.py: stopped after {done} of {len(images)} image(s), {stopped}. The "
            f"{done} finished image(s) are drawn in {args.output}, with their {kept}.",
            file=sys.stderr,
        )
    else:
        print(f"Drew {done} image(s) into {args.output}; {kept}")
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s): {', '.join(skipped)}")
    return status if stopped else (0 if done else 1)


def _save_image(rgb, path: str) -> None:
    from PIL import Image

    options = {"quality": 95} if path.lower().endswith((".jpg", ".jpeg")) else {}
    Image.fromarray(rgb).save(path, **options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import cv2  # noqa: F401
    except ImportError:
        print(
            "predict.py: error: drawing needs OpenCV (Detectron2's Visualizer uses it): "
            "pip install opencv-python-headless",
            file=sys.stderr,
        )
        return 2
    from detectron2.utils.logger import setup_logger

    setup_logger(name="fvcore")
    setup_logger(name="detectron2", abbrev_name="d2")
    setup_logger(name="ms_rcnn")
    try:
        return run(args)
    except InputError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any image was predicted (a later one is handled in run)
        print("predict.py: interrupted (Ctrl-C) before any image was predicted", file=sys.stderr)
        return 130
