"""Convert published COCO checkpoints of the official MS R-CNN (maskrcnn-benchmark) and of
mmdetection to Detectron2 checkpoints that load strictly into ms-rcnn's models.

    state, meta = unwrap_checkpoint(torch.load(path, map_location="cpu"))
    converted = convert_state_dict(state, "maskrcnn-benchmark", meta)
    print(converted.report())
    torch.save(converted.checkpoint(path), "converted.pth")

`tools/convert_checkpoint.py` does this, then builds the model from the config the report
names and loads the result strictly (`verify.check_loads_exactly`).
"""

from .common import ConversionError, Converted, unwrap_checkpoint
from .maskrcnn_benchmark import convert_maskrcnn_benchmark
from .mmdet import convert_mmdet

__all__ = ["SOURCES", "ConversionError", "Converted", "convert_state_dict", "unwrap_checkpoint"]

SOURCES = ("maskrcnn-benchmark", "mmdet")


def convert_state_dict(state, source: str, meta=None) -> Converted:
    """Convert a peer state dict (from `unwrap_checkpoint`) named by `source` to Detectron2's."""
    if source == "maskrcnn-benchmark":
        return convert_maskrcnn_benchmark(state)
    if source == "mmdet":
        return convert_mmdet(state, meta)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
