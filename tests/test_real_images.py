"""What real photographs and their annotations bring that generated shapes did not, each on
coco_tiny (docs/REAL_DATA.md): images of mixed sizes and orientations in one batch, EXIF-rotated
and grayscale JPEGs (copies made here), and annotations with empty or degenerate polygons.
Crowd regions and non-contiguous category ids: tests/test_real_coco.py."""

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from real_data import (
    COCO_IMAGES,
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


# EXIF-rotated and grayscale JPEGs, and images of mixed sizes.

ORIENTATIONS = {6: "ROTATE_90", 8: "ROTATE_270"}  # stored = upright turned the other way


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Copies of a coco_tiny photograph (640x480, 16 objects and a crowd region): as is, stored
    sideways with EXIF Orientation 6 and 8 (so the upright picture is the original), and in
    grayscale; with the portrait and the small photograph beside them. Their JSON gives the
    upright sizes, every copy with the original's annotations. Returns the folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("odd_images")
    raw = load_json(COCO_TRAIN_JSON)
    data = subset(raw, [CROWD_AND_OBJECTS, PORTRAIT, SMALL_LANDSCAPE])
    info = next(im for im in data["images"] if im["id"] == CROWD_AND_OBJECTS)
    upright = Image.open(COCO_IMAGES / info["file_name"])
    upright.save(root / "upright.jpg", quality=95)
    for tag, turn in ORIENTATIONS.items():
        exif = Image.Exif()
        exif[0x0112] = tag  # Orientation
        stored = upright.transpose(getattr(Image.Transpose, turn))
        stored.save(root / f"exif{tag}.jpg", exif=exif.tobytes(), quality=95)
    upright.convert("L").save(root / "gray.jpg", quality=95)
    for im in data["images"]:
        if im["id"] != CROWD_AND_OBJECTS:
            (root / im["file_name"].split("/")[-1]).symlink_to(COCO_IMAGES / im["file_name"])
            im["file_name"] = im["file_name"].split("/")[-1]
    copies = {"upright.jpg": 1, "exif6.jpg": 2, "exif8.jpg": 3, "gray.jpg": 4}
    anns = annotations_of(data, CROWD_AND_OBJECTS)
    data["images"] = [im for im in data["images"] if im["id"] != CROWD_AND_OBJECTS] + [
        {**info, "id": i, "file_name": name} for name, i in copies.items()
    ]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != CROWD_AND_OBJECTS]
    data["annotations"] += [
        {**a, "image_id": i, "id": a["id"] * 10 + i} for i in copies.values() for a in anns
    ]
    write_json(root / "odd.json", data)
    return root


def pixels(image):
    """An image (or its path) as a float RGB array."""
    import numpy as np
    from PIL import Image

    image = image if isinstance(image, Image.Image) else Image.open(image)
    return np.asarray(image.convert("RGB")).astype(np.float32)


def test_exif_and_grayscale_images_are_read_upright_in_three_channels(odd_images, tmp_path):
    """Detectron2's training mapper reads the copies upright, as 3 channels, at the JSON's
    (upright) size; so does ms-rcnn's dataset preview, which read them sideways and crashed."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    from ms_rcnn.data.preview import render_preview

    cfg = tiny_real_cfg("bitmask")
    mapper = DatasetMapper(cfg, is_train=True)
    dicts = {
        d["file_name"].split("/")[-1]: d
        for d in DatasetCatalog.get(register(odd_images / "odd.json", odd_images))
    }
    seen = {
        name: mapper(copy.deepcopy(dicts[name]))
        for name in ("upright.jpg", "exif6.jpg", "exif8.jpg", "gray.jpg")
    }
    reference = seen["upright.jpg"]["image"].float()
    for name in ("exif6.jpg", "exif8.jpg"):
        image = seen[name]["image"].float()
        assert image.shape == reference.shape
        assert (image - reference).abs().mean() < 3, name  # JPEG re-encoding only
        assert torch.equal(
            seen[name]["instances"].gt_masks.tensor,
            seen["upright.jpg"]["instances"].gt_masks.tensor,
        )
    gray = seen["gray.jpg"]["image"]
    assert (
        gray.shape == reference.shape
        and torch.equal(gray[0], gray[1])
        and torch.equal(gray[1], gray[2])
    )
    assert all(math.isfinite(v) for v in training_losses(cfg, list(seen.values())).values())

    preview = render_preview(
        str(odd_images / "odd.json"), str(odd_images), str(tmp_path / "p.png"), num_images=6, cols=3
    )
    assert Path(preview).is_file()


def test_exif_image_with_its_stored_size_in_the_json_is_refused(odd_images, tmp_path):
    """A JSON giving an EXIF-rotated photo's stored (sideways) size was annotated on the sideways
    picture: Detectron2's mapper stops at it, naming the file and both sizes."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data.detection_utils import SizeMismatchError

    data = load_json(odd_images / "odd.json")
    for im in data["images"]:
        if im["file_name"] == "exif6.jpg":
            im["width"], im["height"] = im["height"], im["width"]
    name = register(write_json(odd_images / "sideways.json", data), odd_images)
    (record,) = [d for d in DatasetCatalog.get(name) if d["file_name"].endswith("exif6.jpg")]
    with pytest.raises(SizeMismatchError, match="exif6.jpg"):
        DatasetMapper(tiny_real_cfg(), is_train=True)(record)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    base = tmp_path_factory.mktemp("tiny_model")
    cfg = tiny_real_cfg("bitmask")
    cfg.TEST.DETECTIONS_PER_IMAGE = 5  # drawing is what takes the time
    torch.manual_seed(0)
    MSRCNNCheckpointer(build_model(cfg), str(base)).save("model")
    (base / "config.yaml").write_text(cfg.dump())
    return base


def run_predict(checkpoint, out, inputs, *options):
    from ms_rcnn.predict.cli import build_parser, run

    argv = ["--config-file", str(checkpoint / "config.yaml"), "--input", *map(str, inputs),
            "--output", str(out), *options,
            "MODEL.WEIGHTS", str(checkpoint / "model.pth")]  # fmt: skip
    assert run(build_parser().parse_args(argv)) == 0
    return json.loads((out / "predictions.json").read_text())


def test_predict_reads_exif_and_grayscale_upright_in_one_mixed_batch(
    odd_images, tiny_checkpoint, tmp_path
):
    """All the photographs in one batch (landscape, portrait, small, EXIF-rotated, grayscale):
    each drawn image is the upright picture at its own size, its detections inside it. With
    nothing above the threshold, the drawn image is the image as predict read it."""
    from PIL import Image

    images = sorted(odd_images.glob("*.jpg"))
    assert len(images) == 6
    copies = ("exif6.jpg", "exif8.jpg", "gray.jpg")  # upright: 640x480, like the original
    sizes = {p.name: (640, 480) if p.name in copies else Image.open(p).size for p in images}
    out = tmp_path / "plain"
    options = ["--confidence-threshold", "1", "--batch-size", "6"]
    assert run_predict(tiny_checkpoint, out, images, *options) == []
    upright = Image.open(odd_images / "upright.jpg")
    for path in images:
        drawn = Image.open(out / path.name)
        assert drawn.mode == "RGB" and drawn.size == sizes[path.name], path.name
        if path.name in copies:
            expected = upright.convert("L") if path.name == "gray.jpg" else upright
            assert abs(pixels(out / path.name) - pixels(expected)).mean() < 3, path.name

    options = ["--confidence-threshold", "0", "--batch-size", "6"]
    detections = run_predict(tiny_checkpoint, tmp_path / "all", images, *options)
    assert detections and {Path(d["file_name"]).name for d in detections} <= set(sizes)
    for d in detections:
        w, h = sizes[Path(d["file_name"]).name]
        x, y, bw, bh = d["bbox"]
        assert x >= -0.5 and y >= -0.5 and x + bw <= w + 0.5 and y + bh <= h + 0.5
        assert d["segmentation"]["size"] == [h, w]


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_mixed_sizes_and_orientations_train_in_one_batch(mask_format):
    """A landscape, a portrait and a small photograph in one training batch, padded to a common
    size: every loss finite, each image's targets at its own size."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    name = register(COCO_TRAIN_JSON)
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    cfg = tiny_real_cfg(mask_format)
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [
        mapper(copy.deepcopy(dicts[i])) for i in (CROWD_AND_OBJECTS, PORTRAIT, SMALL_LANDSCAPE)
    ]
    shapes = {tuple(d["image"].shape[1:]) for d in batch}
    assert len(shapes) == 3 and any(h > w for h, w in shapes) and any(h < w for h, w in shapes)
    for d in batch:
        assert d["instances"].image_size == tuple(d["image"].shape[1:])
    assert all(math.isfinite(v) for v in training_losses(cfg, batch).values())
