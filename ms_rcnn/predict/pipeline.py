"""Predict on image files, draw the detections, save them and a COCO results JSON.

The library side of `tools/predict.py`: finding the images, the config and strictly loaded
model, batched inference at the config's test size (what Detectron2's `DefaultPredictor` does,
for several images per forward pass), ranking, and the COCO-format records. Drawing is in
`ms_rcnn.predict.visualize`, the command line in `ms_rcnn.predict.cli`.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..checkpoint import MSRCNNCheckpointer, checkpoint_num_classes, read_checkpoint
from ..config import add_ms_rcnn_config, check_pointrend_config, uses_mask_scoring
from ..data.resize import build_predictor_resize, check_resize_config
from ..data.user_datasets import register_coco_datasets
from ..model_zoo import ConfigNotFoundError, merge_config_file, resolve_config_file
from .results import coco_results

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputError",
    "BatchPredictor",
    "collect_images",
    "output_paths",
    "check_images",
    "register_for_prediction",
    "predict_config",
    "read_weights",
    "load_model",
    "prediction_metadata",
    "check_class_count",
    "dataset_image_ids",
    "coco_results",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_GLOB_CHARS = ("*", "?", "[")


class InputError(Exception):
    """A problem with what the user gave (paths, config, weights): reported without traceback."""


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def collect_images(inputs: Iterable[str]) -> list[str]:
    """Image files named by `inputs`: files, folders (their images, sorted, not recursive) and
    globs (sorted matches; folders among them expanded too). Duplicates are dropped.

    Raises:
        InputError: a path that does not exist or cannot be read, a glob that matches nothing,
            a folder without images (each naming the path).
    """
    found: list[str] = []
    for given in inputs:
        if any(c in given for c in _GLOB_CHARS) and not os.path.exists(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise InputError(f"--input {given}: no file matches")
        else:
            matches = [given]
        for path in matches:
            if os.path.isdir(path):
                images = sorted(os.path.join(path, f) for f in os.listdir(path) if _is_image(f))
                images = [p for p in images if os.path.isfile(p)]
                if not images and path == given:
                    raise InputError(
                        f"--input {given}: folder holds no image ({', '.join(IMAGE_EXTENSIONS)})"
                    )
                found.extend(images)
            elif not os.path.exists(path):
                raise InputError(f"--input {path}: no such file or folder")
            elif path == given or _is_image(path):  # a glob's other files are not inputs
                found.append(path)
    for path in found:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise InputError(f"--input {path}: cannot be read ({e.strerror or e})") from e
    return list(dict.fromkeys(os.path.normpath(p) for p in found))


def output_paths(images: Sequence[str], output_dir: str) -> list[str]:
    """The drawn image's path for each input: same file name, in `output_dir`.

    Raises:
        InputError: two inputs with the same file name, or an output that would overwrite
            its input.
    """
    outputs, seen = [], {}
    for path in images:
        name = os.path.basename(path)
        if name in seen:
            raise InputError(
                f"--input {seen[name]} and {path} would both be drawn to "
                f"{os.path.join(output_dir, name)}; predict the two folders into separate --output"
            )
        seen[name] = path
        out = os.path.join(output_dir, name)
        if os.path.exists(out) and os.path.samefile(out, path):
            raise InputError(
                f"--output {output_dir} holds the input {path}: it would be drawn over"
            )
        outputs.append(out)
    return outputs


def check_images(images: Sequence[str], outputs: Sequence[str]):
    """The inputs Pillow can open and whose drawing it can save under the same file name, each
    other one named in a warning; checked before the model is built, so that a file that is no
    image (even one named explicitly), a corrupt or truncated one, a decompression bomb or an
    extension Pillow cannot write fails no later step.

    Returns:
        (images, outputs, skipped): the kept inputs with their output paths, and the others.
    """
    from PIL import Image

    saved_as = Image.registered_extensions()  # extension -> format; calls Pillow's init()
    kept, kept_outputs, skipped = [], [], []
    for path, out in zip(images, outputs):
        extension = os.path.splitext(out)[1].lower()
        try:
            with Image.open(path) as image:
                image.verify()  # reads the file through without decoding: catches truncation
        except Exception as e:  # Pillow raises many kinds (OSError, SyntaxError, bomb errors)
            reason = f"not an image Pillow can read ({type(e).__name__}: {e})"
        else:
            if saved_as.get(extension) not in Image.SAVE:
                reason = (
                    f"Pillow cannot write its drawing as {extension or 'a file without extension'}"
                    " (rename it to .png or .jpg)"
                )
            else:
                kept.append(path)
                kept_outputs.append(out)
                continue
        logger.warning(f"Skipping {path}: {reason}")
        skipped.append(path)
    return kept, kept_outputs, skipped


def predict_config(config_file: str, opts: Sequence[str], confidence_threshold: float):
    """The config for prediction: CPU unless MODEL.DEVICE says otherwise, and the box head's
    class-score cut (SCORE_THRESH_TEST) at `confidence_threshold` where that is exact.

    Detectron2's demo sets the cut to its threshold. That drops no detection the ranking keeps
    when the ranking score is at most the class score: the class score itself (Mask R-CNN), or
    the class score times a predicted IoU clamped to [0, 1] (CLAMP_PREDICTION True); a box
    scoring below the threshold cannot suppress one scoring above it, in hard or Soft-NMS.
    With an unclamped IoU (both converted-weights configs) a class score of 0.45 can rank at
    0.54; there the config's own cut stays (lowered to the threshold if that is lower).
    """
    try:  # a path, or a name in ms-rcnn's model zoo
        config_file, config_source = resolve_config_file(config_file)
    except ConfigNotFoundError as e:
        raise InputError(f"--config-file: {e}") from None
    logger.info("Using %s", config_source)
    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.MODEL.DEVICE = "cpu"  # Detectron2's default is "cuda"; a config or `MODEL.DEVICE cuda` wins
    try:
        merge_config_file(cfg, config_file)  # with PointRend's keys when the file needs them
        cfg.merge_from_list(list(opts))
        check_pointrend_config(cfg)
        check_resize_config(cfg)
    except ImportError as e:  # a package the config needs (PointRend, ...) is not installed
        package = f" ({e.name})" if e.name else ""
        raise InputError(
            f"config {config_file} needs a package that cannot be imported{package}: {e}"
        ) from e
    except (KeyError, ValueError, AssertionError) as e:  # yacs' errors for unknown keys/values
        raise InputError(f"config {config_file} with overrides {list(opts)}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE}, but torch sees no GPU here; "
            "run on the CPU with MODEL.DEVICE cpu"
        )
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise InputError(f"INPUT.FORMAT={cfg.INPUT.FORMAT}: predict reads images as RGB or BGR")
    heads = cfg.MODEL.ROI_HEADS
    if uses_mask_scoring(cfg) and not cfg.MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION:
        if confidence_threshold > heads.SCORE_THRESH_TEST:
            logger.info(
                "MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION is False: a predicted IoU above 1 ranks "
                "a detection above its class score, so the box head keeps its own class cut "
                f"({heads.SCORE_THRESH_TEST}) and --confidence-threshold applies to mask_scores"
            )
        heads.SCORE_THRESH_TEST = min(heads.SCORE_THRESH_TEST, confidence_threshold)
    else:
        heads.SCORE_THRESH_TEST = confidence_threshold
    cfg.freeze()
    return cfg


def read_weights(cfg) -> dict:
    """MODEL.WEIGHTS, read once before the model is built (`read_checkpoint`): its class count
    decides which class names may label it (`check_class_count`); `load_model` loads it."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise InputError("no weights: set MODEL.WEIGHTS path/to/model_final.pth")
    if "://" not in weights and not os.path.isfile(weights):
        raise InputError(f"MODEL.WEIGHTS {weights}: no such file")
    try:
        return read_checkpoint(weights)
    except (ValueError, RuntimeError, OSError) as e:
        raise InputError(str(e)) from e


def load_model(cfg, contents: Optional[dict] = None):
    """Build the model and load MODEL.WEIGHTS (or its `contents`, from `read_weights`)
    strictly, as --eval-only does: every layer must be in the file with the model's shape (a
    predictor with re-initialized layers would draw random boxes), and the config keys the
    weights record must be the config's (see `ms_rcnn.weights_config`)."""
    if contents is None:
        contents = read_weights(cfg)
    try:
        model = build_model(cfg)
    except KeyError as e:  # Detectron2's registries: a NAME no module registered
        if "registry" not in str(e):
            raise
        raise InputError(f"config: {e.args[0] if e.args else e}") from e
    model.eval()
    checkpointer = MSRCNNCheckpointer(model, strict=True, config=cfg)
    try:
        checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=[], contents=contents)
    except (ValueError, RuntimeError) as e:
        raise InputError(str(e)) from e
    return model


def prediction_metadata(cfg, registered: Sequence[str]):
    """The metadata giving class names and dataset ids, and its dataset name: a --register-coco
    dataset (the config's test dataset if it is one of them, else the first), else
    DATASETS.TEST[0]; (empty metadata, None) without either."""
    test = list(cfg.DATASETS.TEST)
    if registered:
        name = test[0] if test and test[0] in registered else registered[0]
    elif test:
        name = test[0]
    else:
        logger.warning("No DATASETS.TEST and no --register-coco: classes shown by their index")
        return MetadataCatalog.get("__unused__"), None
    meta = MetadataCatalog.get(name)
    if not meta.get("thing_classes"):
        logger.warning(
            f"Dataset {name} has no class names registered: classes shown by their index "
            "(register it with --register-coco NAME JSON IMAGE_ROOT)"
        )
        return meta, name
    return meta, name


def check_class_count(cfg, contents: dict, meta, dataset: Optional[str]) -> None:
    """The weights fix the class count: a dataset with another count must not name the
    classes (with more classes its names would run out, with fewer they would be another
    dataset's). Refused before any image is read, naming both counts and the ways out."""
    classes = meta.get("thing_classes") if dataset else None
    if not classes:
        return  # shown by index
    num = checkpoint_num_classes(contents.get("model", {})) or cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if num == len(classes):
        return
    config = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    set_config = "" if config == num else f" (and set MODEL.ROI_HEADS.NUM_CLASSES {num})"
    raise InputError(
        f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} has {num} classes, but dataset {dataset}, whose "
        f"names would label them, has {len(classes)}: the weights fix the class count, and "
        f"another dataset's names would mislabel it. Either name a dataset with these {num} "
        "classes: --register-coco NAME JSON IMAGE_ROOT with DATASETS.TEST \"('NAME',)\""
        f"{set_config}; "
        f'or show the classes by index: DATASETS.TEST "()" (and no --register-coco).'
    )


def dataset_image_ids(meta, images: Sequence[str]) -> Optional[dict[str, int]]:
    """Each image's id in the metadata's COCO JSON, if every image is one of that dataset's;
    then predictions.json can be evaluated against it directly. Otherwise None."""
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    if not json_file or not image_root or not os.path.isfile(json_file):
        return None
    root = os.path.realpath(image_root)
    real = [os.path.realpath(p) for p in images]
    if not all(p.startswith(root + os.sep) for p in real):
        return None  # checked first: reading a large JSON for nothing would be slow
    from ..data.coco_checks import read_coco_json

    by_path = {
        os.path.realpath(os.path.join(image_root, im["file_name"])): im["id"]
        for im in read_coco_json(json_file)["images"]
    }
    if not all(p in by_path for p in real):
        return None
    return {path: by_path[p] for path, p in zip(images, real)}


class BatchPredictor:
    """What `DefaultPredictor` does, for a list of images per forward pass: resize to the
    test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, resized as INPUT.RESIZE_STYLE says), run
    the model, return instances at the images' own size.

    Images of different sizes in one batch are zero-padded to a common size; with GroupNorm
    in the backbone the padding can shift scores slightly, as in Detectron2's batched
    evaluation. Use batch size 1 for results independent of the batch.
    """

    def __init__(self, cfg, model):
        self.model = model
        self.input_format = cfg.INPUT.FORMAT
        self.resize = build_predictor_resize(cfg)

    def __call__(self, images_rgb: Sequence[np.ndarray]) -> list:
        inputs = []
        for rgb in images_rgb:
            image = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
            height, width = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            inputs.append({"image": tensor, "height": height, "width": width})
        with torch.no_grad():
            return [out["instances"].to("cpu") for out in self.model(inputs)]


def register_for_prediction(specs) -> list[str]:
    """`register_coco_datasets`, its errors reported as InputError (no traceback)."""
    try:
        return register_coco_datasets(specs)
    except (ValueError, OSError) as e:
        raise InputError(str(e)) from e
