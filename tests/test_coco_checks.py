"""COCO-format files: a truncated or malformed JSON, or a missing image, is an error naming the
file (and the record) when the dataset is loaded, not a silent empty dataset or a crash
mid-training. Part of the bad-input catalogue in docs/RELIABILITY.md."""

import json

import numpy as np
import pytest
from conftest import tiny_cfg
from detectron2.data import DatasetMapper
from PIL import Image

from ms_rcnn.data import load_coco_json_checked


def write_coco(tmp_path, num_images=1, missing_image=False, **override):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    data = {
        "images": [
            {"id": i + 1, "file_name": f"{i}.png", "height": 8, "width": 8}
            for i in range(num_images)
        ],  # fmt: skip
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 4, 4],
                "area": 16,
                "iscrowd": 0,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            }
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
        **override,
    }
    for i in range(num_images - (1 if missing_image else 0)):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / f"{i}.png")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, root


def test_valid_coco_json_loads(tmp_path):
    path, root = write_coco(tmp_path, num_images=2)
    dicts = load_coco_json_checked(str(path), str(root), None)
    assert [len(d["annotations"]) for d in dicts] == [1, 0]


def test_truncated_coco_json_names_the_file(tmp_path):
    path, root = write_coco(tmp_path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        load_coco_json_checked(str(path), str(root), None)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"images": None}, "no 'images' list"),
        ({"categories": [{"id": 1}]}, r"categories\[0\] lacks \['name'\]"),
        ({"categories": []}, "'categories' is empty"),
        ({"annotations": [{"id": 7, "image_id": 1, "bbox": [0, 0, 1, 1]}]},
         r"annotations\[0\] lacks \['category_id'\]"),
        ({"annotations": [{"id": 7, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}]},
         r"annotations\[0\] \(id 7\) has category_id 9"),
        ({"annotations": [{"id": 7, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
         r"annotations\[0\] \(id 7\) has image_id 5"),
        ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]},
         r"annotations\[0\] \(id 7\) bbox .* not 4 finite numbers"),
        ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1,
                           "bbox": ["a", None, {}, []]}]},
         r"annotations\[0\] \(id 7\) bbox .* not 4 finite numbers"),
        ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1,
                           "bbox": [0, 0, True, 1]}]},
         r"annotations\[0\] \(id 7\) bbox .* not 4 finite numbers"),
    ],
)  # fmt: skip
def test_malformed_coco_json_names_the_file_and_record(tmp_path, override, message):
    path, root = write_coco(tmp_path, **override)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        load_coco_json_checked(str(path), str(root), None)


def test_missing_json_and_missing_image_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json_checked(str(tmp_path / "nope.json"), str(tmp_path), None)
    path, root = write_coco(tmp_path, num_images=2, missing_image=True)
    with pytest.raises(FileNotFoundError, match=f"1 image file.*{root / '1.png'}"):
        load_coco_json_checked(str(path), str(root), "mine")


def test_image_missing_at_mapping_time_is_named(tmp_path):
    mapper = DatasetMapper(tiny_cfg("MaskScoringROIHeads"), is_train=True)
    gone = tmp_path / "gone.png"
    with pytest.raises(FileNotFoundError, match="gone.png"):
        mapper({"file_name": str(gone), "height": 8, "width": 8, "annotations": []})


def test_registered_dataset_loads_through_the_checks(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ms_rcnn.data import register_coco_instances_checked

    path, root = write_coco(tmp_path, num_images=2, missing_image=True)
    register_coco_instances_checked("coco_checks_test", {}, str(path), str(root))
    try:
        assert MetadataCatalog.get("coco_checks_test").json_file == str(path)
        with pytest.raises(FileNotFoundError, match="dataset coco_checks_test missing"):
            DatasetCatalog.get("coco_checks_test")
    finally:
        DatasetCatalog.remove("coco_checks_test")
        MetadataCatalog.remove("coco_checks_test")
