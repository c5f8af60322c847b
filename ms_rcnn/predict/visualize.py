"""Drawing detections ranked the way MS R-CNN ranks masks: by `mask_scores` when present.

Detectron2's `Visualizer.draw_instance_predictions` labels each detection with its class score
only, draws in order of mask area, and fills the holes of masks drawn as polygons (a ring
becomes a disc). `RankedVisualizer` keeps Detectron2's drawing primitives but draws the masks
with their holes, in rank order with the best-ranked detection on top, and labels each with its
class score and predicted mask IoU.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

__all__ = ["RankedVisualizer", "ranking_scores", "detection_labels", "rank_detections"]

_PALETTE = colormap(rgb=True, maximum=1)


def ranking_scores(instances) -> torch.Tensor:
    """The score detections are ranked by: `mask_scores` (MS R-CNN) if present, else `scores`."""
    return instances.mask_scores if instances.has("mask_scores") else instances.scores


def rank_detections(instances, threshold: float = 0.0):
    """`instances` with a ranking score above `threshold`, best first."""
    score = ranking_scores(instances)
    keep = torch.nonzero(score > threshold).flatten()
    order = keep[torch.argsort(score[keep], descending=True, stable=True)]
    return instances[order]


def detection_labels(instances, class_names: Optional[Sequence[str]] = None) -> list[str]:
    """One label per detection: ``ring 0.93 | IoU 0.81`` (class name, class score, predicted
    mask IoU), or ``ring 0.93`` for a model without a MaskIoU head. Classes without a name
    (metadata missing or shorter than the class count) are shown by their index."""
    classes = instances.pred_classes.tolist()
    scores = instances.scores.tolist()
    ious = instances.pred_maskiou.tolist() if instances.has("pred_maskiou") else None
    labels = []
    for i, (c, s) in enumerate(zip(classes, scores)):
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        label = f"{name} {s:.2f}"
        if ious is not None:
            label += f" | IoU {ious[i]:.2f}"
        labels.append(label)
    return labels


class RankedVisualizer(Visualizer):
    """Detectron2's Visualizer drawing ranked detections: masks (with holes), boxes, labels."""

    def draw_ranked_instances(self, instances, class_names: Optional[Sequence[str]] = None):
        """Draw `instances`, already ranked best first (see `rank_detections`).

        Each detection gets its colour from its rank, so the same rank has the same colour in
        every image; the lowest-ranked is drawn first, so the best ends on top of overlaps.
        """
        labels = detection_labels(instances, class_names)
        boxes = instances.pred_boxes.tensor.detach().cpu().numpy()
        masks = instances.pred_masks.detach().cpu().numpy() if instances.has("pred_masks") else None
        colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(instances))]
        for i in reversed(range(len(instances))):
            if masks is not None:
                self.draw_binary_mask(masks[i], color=colors[i], alpha=0.45)
            self.draw_box(boxes[i], edge_color=colors[i], alpha=0.9)
        for i in reversed(range(len(instances))):
            self._draw_label(labels[i], boxes[i], colors[i])
        return self.output

    def _draw_label(self, label: str, box: np.ndarray, color) -> None:
        x0, y0, _, y1 = (float(v) for v in box)
        font_size = self._default_font_size * 0.8
        # Matplotlib sizes text in points: 1 pt is dpi / 72 pixels on the figure, plus the
        # label's background padding.
        text_height = font_size * self.output.scale * self.output.fig.dpi / 72 * 1.4
        # Above the box when it fits, else inside it under its top edge.
        y = y0 - text_height if y0 >= text_height else min(y0, self.output.height - text_height)
        x = min(max(x0, 0.0), self.output.width - 1.0)
        self.draw_text(
            label,
            (x, y),
            font_size=font_size,
            color=self._change_color_brightness(color, brightness_factor=0.7),
            horizontal_alignment="left",
        )
