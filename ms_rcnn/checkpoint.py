"""A DetectionCheckpointer that never leaves a half-written file and never loads one silently wrong.

Detectron2 (through fvcore) writes checkpoints and the `last_checkpoint` tag in place, so a
process killed mid-write leaves a truncated `model_final.pth` or tag behind; and it loads a
checkpoint whose layers have other shapes (e.g. another class count) by skipping those layers
with a warning, which is right for fine-tuning but silently wrong for evaluation or resuming.
"""

import logging
import os
import pickle
import re
import shutil
import tempfile
from typing import List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .weights_config import RECORD_KEY, check_weights_config, weights_config

__all__ = [
    "MSRCNNCheckpointer",
    "checkpoint_num_classes",
    "read_checkpoint",
    "atomic_torch_save",
    "atomic_write",
]

logger = logging.getLogger(__name__)

MASKIOU_PREFIX = "roi_heads.maskiou_head."

# The layers whose output size is the class count (cascade stages: box_predictor.<stage>).
CLASS_DEPENDENT_LAYER = re.compile(
    r"roi_heads\.(box_predictor(\.\d+)?\.(cls_score|bbox_pred)|mask_head\.predictor"
    r"|maskiou_head\.predictor)\.(weight|bias)$"
)


def _is_local_path(path: str) -> bool:
    """True if Detectron2's PathManager hands `path` to the local filesystem (its native handler).

    Any other path has a registered prefix ("s3://", "manifold://", "http://"...). iopath has no
    public "which handler" query, so this reads the registered prefixes; if a future iopath
    renames them, paths with a URL scheme count as remote.
    """
    prefixes = getattr(PathManager, "_path_handlers", None)
    if prefixes is None:
        return "://" not in path
    return not any(path.startswith(prefix) for prefix in prefixes)


_PROC_STATUS = "/proc/self/status"


def _umask_from_proc() -> Optional[int]:
    """The umask as Linux (4.7+) shows it in /proc/self/status, or None where it does not."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


# Elsewhere the only way to read the umask is to set it (os.umask returns the old value), which
# leaves it at the probe value (here 0o022, not 0) for a moment: another thread creating a file
# then would get that mode. So it is read once, at import, before this module saves anything.
_UMASK_AT_IMPORT = None
if _umask_from_proc() is None:  # pragma: no cover (Linux has /proc)
    _UMASK_AT_IMPORT = os.umask(0o022)
    os.umask(_UMASK_AT_IMPORT)


def _process_umask() -> int:
    """The process umask, read without setting it (see `_UMASK_AT_IMPORT`)."""
    umask = _umask_from_proc()
    if umask is None:
        umask = _UMASK_AT_IMPORT
    return 0o022 if umask is None else umask


def atomic_write(path: str, write) -> None:
    """Write `path` so that no reader ever sees part of it.

    On the local filesystem: write a temporary file in the same folder, then rename it over
    `path` (os.replace is atomic on POSIX, so a reader or a resumed run sees the old file or the
    whole new one whenever the writer is killed). Other paths go through Detectron2's
    PathManager and their store's handler: the bytes are first written to a local temporary
    file, so a failure while serializing leaves the stored object untouched, then copied in one
    open/close. Whether that copy is atomic is the store's: object stores (S3, GCS...) have no
    rename but publish an object only when its upload completes.
    """
    if not _is_local_path(path):
        with tempfile.TemporaryFile() as staged:
            write(staged)
            staged.seek(0)
            with PathManager.open(path, "wb") as f:
                shutil.copyfileobj(staged, f)
        return
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file private (0600); give it the mode a plain open() would have,
        # so checkpoints stay readable by whoever could read them before.
        os.fchmod(fd, 0o666 & ~_process_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: str) -> None:
    """torch.save(obj, path), atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_num_classes(state_dict) -> Optional[int]:
    """Foreground class count of a checkpoint's box predictor (cls_score has K + 1 rows)."""
    for key, value in state_dict.items():
        if key.startswith(("roi_heads.", "module.roi_heads.")) and key.endswith("cls_score.weight"):
            return int(value.shape[0]) - 1
    return None


def read_checkpoint(path: str) -> dict:
    """The contents of checkpoint `path` as `MSRCNNCheckpointer.load` reads it ({"model":
    state_dict, ...}; Detectron2's conversions of .pkl/.pyth files and URL queries applied),
    without a model. Pass it back as `load(path, contents=...)` to load it without reading
    the file twice."""
    reader = _CheckpointReader(torch.nn.Module())
    reader.load(path, checkpointables=[])
    return reader.contents


class MSRCNNCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with atomic saves and strict loading where skipping is wrong.

    Loading is strict (any layer missing from the checkpoint or of another shape is an error
    naming the file, the layers and, for class-dependent layers, both class counts) when
    `strict=True` (evaluation) or when resuming (the checkpoint is loaded with its trainer
    state). Otherwise (training from MODEL.WEIGHTS) layers absent from the checkpoint are
    allowed and named in the log (ImageNet backbones, a Mask R-CNN without the MaskIoU head),
    but a layer of another shape is an error, except the class-dependent output layers when the
    checkpoint's class count differs from the model's: that is fine-tuning on new classes, said
    in one log line.

    Not covered: Caffe2 `.pkl` files loaded through Detectron2's name-matching heuristics, whose
    shape mismatches Detectron2 drops (with a warning) before this class sees them; they then
    count as absent layers.
    """

    def __init__(self, model, save_dir="", *, strict: bool = False, config=None, **kwargs):
        """
        Args:
            model, save_dir, kwargs: as for `DetectionCheckpointer`.
            strict: load every layer (evaluation and prediction), see the class docstring.
            config: the config the model was built from. Given, checkpoints saved record the
                config keys the weights need, and loading checks a checkpoint's record against
                it (`ms_rcnn.weights_config`): an error when `strict`, else a warning.
        """
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.config = config
        self._path = None
        self._contents = None
        self._strict_now = strict
        self._ckpt_classes = self._model_classes = None

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.config is not None:  # the config keys these weights need, checked at load
            run_config = os.path.join(self.config.OUTPUT_DIR, "config.yaml")  # default_setup's
            data[RECORD_KEY] = weights_config(self.config, run_config)
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        # The tag is written after its checkpoint, so it never names a partial file.
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path, checkpointables: Optional[List[str]] = None, *, contents=None):
        """Load `path`; `contents`: what `read_checkpoint(path)` returned, to load from memory
        instead of reading the file again (a caller that looked into it first)."""
        # checkpointables=None loads the trainer state too: that is resuming, which must
        # continue the very model it saved.
        self._path = path
        self._strict_now = self.strict or (checkpointables is None and bool(self.checkpointables))
        self._contents = contents
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._contents = None

    def _load_file(self, filename):
        if self._contents is not None:
            return dict(self._contents)  # _load_model pops "model": leave the caller's intact
        try:
            return super()._load_file(filename)
        except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
            raise RuntimeError(
                f"Cannot read checkpoint {filename}: {e}. The file is truncated or not a "
                "checkpoint; delete it (and fix OUTPUT_DIR/last_checkpoint) or pass another "
                "MODEL.WEIGHTS."
            ) from e

    def _load_model(self, checkpoint):
        if self.config is not None:
            # Before any tensor is copied: a refusal leaves the model as it was.
            check_weights_config(
                self.config, checkpoint.get(RECORD_KEY), self._path, inference=self.strict
            )
        self._ckpt_classes = checkpoint_num_classes(checkpoint.get("model", {}))
        self._model_classes = getattr(getattr(self.model, "roi_heads", None), "num_classes", None)
        incompatible = super()._load_model(checkpoint)
        shapes = incompatible.incorrect_shapes
        # fvcore also lists the layers it skipped for their shape as missing: say it once.
        skipped = {k for k, _, _ in shapes}
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in skipped]
        if self._strict_now and (shapes or incompatible.missing_keys):
            raise ValueError(self._strict_message(shapes, incompatible.missing_keys))
        refused = [s for s in shapes if not self._is_new_class_layer(s[0])]
        if refused:
            raise ValueError(self._shape_message(refused))
        return incompatible

    def _is_new_class_layer(self, key: str) -> bool:
        """A class-dependent output layer, with the model's class count not the checkpoint's:
        the one shape mismatch that is right to skip (fine-tuning on new classes)."""
        return (
            CLASS_DEPENDENT_LAYER.match(key) is not None
            and self._ckpt_classes is not None
            and self._ckpt_classes != self._model_classes
        )

    def _shape_message(self, shapes) -> str:
        if self._ckpt_classes is not None and self._ckpt_classes == self._model_classes:
            classes = f"both have {self._model_classes} classes"
        elif self._ckpt_classes is not None:
            classes = (
                f"it has {self._ckpt_classes} classes and MODEL.ROI_HEADS.NUM_CLASSES="
                f"{self._model_classes}, but these are not class-dependent output layers"
            )
        else:
            classes = "it has no box classifier to tell its class count"
        return (
            f"Checkpoint {self._path} does not fit the model: layers of another shape, which "
            f"would be skipped and left randomly initialized: {_describe_shapes(shapes)} "
            f"({classes}). Only the class-dependent output layers (box classifier and regressor, "
            "mask predictor, MaskIoU predictor) may differ, when fine-tuning on another class "
            "count. Use the config the checkpoint was trained with; a maskrcnn-benchmark or "
            "mmdetection checkpoint needs tools/convert_checkpoint.py first."
        )

    def _strict_message(self, shapes, missing) -> str:
        ckpt_classes, model_classes = self._ckpt_classes, self._model_classes
        why = "resuming" if not self.strict else "evaluation"
        parts = [f"Checkpoint {self._path} does not fit the model ({why} loads every layer):"]
        if shapes:
            if ckpt_classes is not None and ckpt_classes != model_classes:
                parts.append(
                    f"it has {ckpt_classes} classes but MODEL.ROI_HEADS.NUM_CLASSES="
                    f"{model_classes};"
                )
            parts.append("layers of another shape: " + _describe_shapes(shapes) + ";")
        if missing:
            parts.append(f"layers absent from it: {_summarize(missing)};")
        parts.append(
            "use the config the checkpoint was trained with, or train from it (without "
            "--resume/--eval-only) to re-initialize those layers."
        )
        return " ".join(parts)

    def _log_incompatible_keys(self, incompatible) -> None:
        shapes = list(incompatible.incorrect_shapes)
        if shapes:
            counts = ""
            if self._ckpt_classes is not None and self._ckpt_classes != self._model_classes:
                counts = (
                    f" it has {self._ckpt_classes} classes, MODEL.ROI_HEADS.NUM_CLASSES="
                    f"{self._model_classes};"
                )
            # One line for the whole set (fvcore logs one per tensor). _load_model refused any
            # other shape mismatch, so these are the class-dependent layers of a new class count.
            self.logger.warning(
                f"Checkpoint {self._path}:{counts} fine-tuning on new classes, so the "
                f"class-dependent output layers start from random weights: "
                f"{_describe_shapes(shapes)}."
            )
        missing = list(incompatible.missing_keys)
        if missing and all(k.startswith(MASKIOU_PREFIX) for k in missing):
            self.logger.info(
                f"Loaded every layer from {self._path} except the MaskIoU head, which is new "
                f"(randomly initialized): {_summarize(missing)}"
            )
            missing = []
        super()._log_incompatible_keys(
            type(incompatible)(
                missing_keys=missing,
                unexpected_keys=incompatible.unexpected_keys,
                incorrect_shapes=[],
            )
        )


def _summarize(keys: List[str]) -> str:
    modules = sorted({k.rsplit(".", 1)[0] for k in keys})
    return ", ".join(modules)


def _describe_shapes(shapes: List[Tuple[str, tuple, tuple]]) -> str:
    """One entry per layer (its first tensor, the weight): name, shape in the file and model."""
    layers = {}
    for key, ckpt, model in shapes:
        layers.setdefault(key.rsplit(".", 1)[0], (tuple(ckpt), tuple(model)))
    return ", ".join(
        f"{name} {ckpt} in the file vs {model}" for name, (ckpt, model) in layers.items()
    )


class _CheckpointReader(MSRCNNCheckpointer):
    """Reads a checkpoint through the loader's own path handling, and keeps it."""

    contents: dict = {}

    def _load_model(self, checkpoint):
        self.contents = checkpoint
        return None  # fvcore then logs nothing and loads nothing
