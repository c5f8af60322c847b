"""Inference on single images with weights loaded strictly.

Detectron2's DefaultPredictor loads MODEL.WEIGHTS like fine-tuning does: a layer missing from the
file or of another shape is skipped with a warning and predicts from random weights. A predictor
has no use for that, so this one refuses such a file, naming the layers, and one made for
other values of the config keys its weights need (`ms_rcnn.weights_config`). It also resizes
as INPUT.RESIZE_STYLE says, which Detectron2's DefaultPredictor does not know.
"""

from detectron2.engine import DefaultPredictor

from ..checkpoint import MSRCNNCheckpointer
from ..data.resize import build_predictor_resize

__all__ = ["MSRCNNPredictor"]


class MSRCNNPredictor(DefaultPredictor):
    """DefaultPredictor (same call: BGR/RGB HxWxC image in, {"instances": ...} out) whose
    MODEL.WEIGHTS must fit the model exactly (MSRCNNCheckpointer with strict=True) and whose
    resize follows INPUT.RESIZE_STYLE."""

    def __init__(self, cfg):
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("MSRCNNPredictor needs trained weights: set MODEL.WEIGHTS")
        # DefaultPredictor builds the model, the resize and the input format; its own (lenient)
        # load is skipped by giving it no weights, then the strict load replaces it.
        no_weights = cfg.clone()
        no_weights.defrost()
        no_weights.MODEL.WEIGHTS = ""
        super().__init__(no_weights)
        self.cfg = cfg.clone()
        # DefaultPredictor's resize with the config's style (for "detectron2" an equal
        # ResizeShortestEdge).
        self.aug = build_predictor_resize(cfg)
        MSRCNNCheckpointer(self.model, strict=True, config=cfg).load(cfg.MODEL.WEIGHTS)
