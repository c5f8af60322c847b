"""predict's COCO results: one record per detection, written so that no finished image is lost.

Each record's `score` is the score the model ranks by (`mask_score` for MS R-CNN, the class
score for Mask R-CNN), so pycocotools' segm evaluation of the file ranks masks the way
`MaskScoringCOCOEvaluator` does; `class_score` keeps the box classifier's score, the one box AP
ranks by (copy it into `score` before a bbox evaluation). docs/PREDICTING.md has the fields.

`PredictionsWriter` appends each finished image's records to `predictions.partial.jsonl`
(flushed, one JSON list per line) and writes `predictions.json` at the end, also when the run
fails or is interrupted midway; only a process killed outright (SIGKILL, out of memory) leaves
the partial file instead.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from detectron2.evaluation.coco_evaluation import instances_to_coco_json

from ..checkpoint import atomic_write
from ..evaluation.coco_evaluation import add_score_fields

__all__ = ["PREDICTIONS_FILE", "PARTIAL_FILE", "coco_results", "PredictionsWriter"]

PREDICTIONS_FILE = "predictions.json"
PARTIAL_FILE = "predictions.partial.jsonl"


def coco_results(
    instances, image_id: int, file_name: str, dataset_ids: Optional[dict] = None
) -> list[dict]:
    """COCO results records of one image's ranked detections, in their order.

    Detectron2's `instances_to_coco_json` (bbox XYWH, RLE segmentation), plus `file_name`,
    `class_score` (the box classifier's score) and, for MS R-CNN, `mask_score` and
    `pred_maskiou`; `score` is the ranking score: `mask_score` when there is one, else the
    class score. Category ids are the dataset's when `dataset_ids` (its
    `thing_dataset_id_to_contiguous_id`) is given, else the model's class indices.

    Raises:
        ValueError: a class index the dataset has no category for (the class counts were not
            checked against each other).
    """
    records = instances_to_coco_json(instances.to("cpu"), image_id)
    add_score_fields(records, instances)
    reverse = {v: k for k, v in dataset_ids.items()} if dataset_ids else None
    for record in records:
        record["file_name"] = file_name
        record["class_score"] = record["score"]
        if "mask_score" in record:
            record["score"] = record["mask_score"]
        if reverse is not None:
            if record["category_id"] not in reverse:
                raise ValueError(
                    f"class index {record['category_id']} has no category in the dataset "
                    f"({len(reverse)} categories)"
                )
            record["category_id"] = reverse[record["category_id"]]
    return records


class PredictionsWriter:
    """Collects records image by image; see the module docstring for what is on disk when."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, PREDICTIONS_FILE)
        self.partial_path = os.path.join(output_dir, PARTIAL_FILE)
        self.records: list[dict] = []
        # Kept open across images (closed by finalize), so each add is one write and flush.
        self._partial = open(self.partial_path, "w")  # noqa: SIM115

    def add(self, records: list[dict]) -> None:
        """Add one finished image's records (possibly none)."""
        self._partial.write(json.dumps(records) + "\n")
        self._partial.flush()
        self.records.extend(records)

    def finalize(self) -> str:
        """Write `predictions.json` (atomically: a reader never sees half of it), remove the
        partial file; returns the path written."""
        self._partial.close()
        atomic_write(self.path, lambda f: f.write(json.dumps(self.records).encode()))
        os.remove(self.partial_path)
        return self.path
