"""What real photographs and their annotations bring that generated shapes did not, each on
coco_tiny (docs/REAL_DATA.md): images of mixed sizes and orientations in one batch, EXIF-rotated
and grayscale JPEGs (copies made here), and annotations with empty or degenerate polygons.
Crowd regions and non-contiguous category ids: tests/test_real_coco.py."""

import copy
import logging
import math

import pytest
from real_data import (
    COCO_TRAIN_JSON,
    CROWD_AND_OBJECTS,
    PORTRAIT,
    annotations_of,
    evaluate,
    load_json,
    register,
    requires_coco_tiny,
    subset,
    tiny_real_cfg,
    training_losses,
    write_json,
)

pytestmark = requires_coco_tiny

SMALL_LANDSCAPE = 37777  # train: 352x230, 14 objects

# Segmentations no mask can be made of, as annotation tools sometimes write them.
DEGENERATE = {
    "empty list": [],
    "two points": [[10.0, 10.0, 60.0, 40.0]],
    "one point": [[10.0, 10.0]],
    "odd count": [[10.0, 10.0, 60.0, 10.0, 60.0, 40.0, 10.0]],
    "on a line": [[10.0, 10.0, 35.0, 25.0, 60.0, 40.0]],
    "one spot": [[20.0, 20.0, 20.0, 20.0, 20.0, 20.0]],
}


def degenerate_dataset(tmp_path):
    """coco_tiny train restricted to 3 images, with the DEGENERATE annotations added to one image
    (ids 9000001...), every object of one category made a line, and an unusable piece put
    before / after the polygon of two objects. Returns (data, clean data, dropped ids,
    trimmed ids, json path)."""
    raw = load_json(COCO_TRAIN_JSON)
    clean = subset(raw, [CROWD_AND_OBJECTS, PORTRAIT, SMALL_LANDSCAPE])
    data = copy.deepcopy(clean)
    template = next(a for a in annotations_of(data, CROWD_AND_OBJECTS) if not a["iscrowd"])
    dropped = []
    for k, segm in enumerate(DEGENERATE.values()):
        ann = {**copy.deepcopy(template), "id": 9000001 + k, "segmentation": segm}
        ann["bbox"], ann["area"] = [10.0, 10.0, 50.0, 30.0], 0.0
        data["annotations"].append(ann)
        dropped.append(ann["id"])
    # A category whose objects all become lines: it must keep its class index.
    objects = [a for a in annotations_of(data, SMALL_LANDSCAPE) if not a["iscrowd"]]
    lined = objects[0]["category_id"]
    for a in data["annotations"]:
        if a["category_id"] == lined and not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w / 2, y + h / 2, x + w, y + h]]
            dropped.append(a["id"])
    # Objects that keep a usable polygon and lose an unusable piece, before and after it.
    kept = [a for a in objects if a["category_id"] != lined][:2]
    kept[0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]] + kept[0]["segmentation"]
    kept[1]["segmentation"] = kept[1]["segmentation"] + [[5.0, 5.0, 6.0, 6.0, 7.0, 7.0]]
    trimmed = [a["id"] for a in kept]
    clean["annotations"] = [a for a in clean["annotations"] if a["id"] not in dropped]
    return data, clean, dropped, trimmed, write_json(tmp_path / "degenerate.json", data)


def original_segmentation(ann_id):
    return next(a for a in load_json(COCO_TRAIN_JSON)["annotations"] if a["id"] == ann_id)[
        "segmentation"
    ]


def test_degenerate_polygons_are_dropped_with_one_warning(tmp_path, caplog):
    """Loading drops every annotation without a usable polygon, and unusable pieces of the
    others, with one warning naming the count and ids; no class moves."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    data, clean, dropped, trimmed, path = degenerate_dataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        name = register(path)
        dicts = DatasetCatalog.get(name)
        DatasetCatalog.get(name)  # loaded again (train and test): no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    about = [m for m in warnings if "polygon" in m or "segmentation" in m]
    assert len(about) == 1, warnings
    assert f"{len(dropped)} annotation" in about[0] and str(dropped[0]) in about[0], about[0]
    assert str(trimmed[0]) in about[0], about[0]

    ids = sorted(c["id"] for c in data["categories"])
    meta = MetadataCatalog.get(name)
    assert meta.thing_dataset_id_to_contiguous_id == {i: k for k, i in enumerate(ids)}
    loaded = sorted(
        (d["image_id"], a["category_id"], a.get("iscrowd", 0))
        for d in dicts
        for a in d["annotations"]
    )
    expected = sorted(
        (a["image_id"], ids.index(a["category_id"]), a["iscrowd"]) for a in clean["annotations"]
    )
    assert loaded == expected
    # The trimmed objects keep exactly their usable polygon (dicts carry no annotation id: the
    # objects are found by their box).
    originals = {a["id"]: a for a in clean["annotations"]}
    objects = [a for d in dicts if d["image_id"] == SMALL_LANDSCAPE for a in d["annotations"]]
    for ann_id in trimmed:
        (obj,) = [a for a in objects if a["bbox"] == originals[ann_id]["bbox"]]
        assert obj["segmentation"] == original_segmentation(ann_id)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_degenerate_polygons_train(tmp_path, mask_format):
    """Training steps on the images that held degenerate annotations: no crash, finite losses
    (an empty list crashed Detectron2's mapper with KeyError: 'segmentation')."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    *_, path = degenerate_dataset(tmp_path)
    cfg = tiny_real_cfg(mask_format)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(register(path))]
    assert all(math.isfinite(v) for v in training_losses(cfg, batch).values())


def test_degenerate_polygons_evaluate(tmp_path):
    """The same JSON as ground truth: the evaluator (with its calibration) and ablate --gt-json
    evaluate perfect detections of the usable objects to the AP of the cleaned JSON."""
    _, clean, *_, path = degenerate_dataset(tmp_path)
    clean_path = write_json(tmp_path / "clean.json", clean)
    results, ablated = evaluate(register(path), clean, path)
    clean_results, clean_ablated = evaluate(register(clean_path), clean, clean_path)
    for task in ("bbox", "segm", "boundary"):
        assert results[task]["AP"] == pytest.approx(clean_results[task]["AP"]), task
    assert results["calibration"] == clean_results["calibration"]
    assert ablated == pytest.approx(clean_ablated)
