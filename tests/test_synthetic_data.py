"""Tests of the synthetic dataset: determinism, caching, COCO validity, difficulty, Detectron2."""

import importlib.util
import json
import os
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from ms_rcnn.data import masks, registry, synthetic
from ms_rcnn.data.synthetic import generate_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("synthetic_shapes_tiny_train", "synthetic_shapes_tiny_val")


def _bfs_components(mask, eight=False):
    """Component count by plain BFS, independent of the tracer under test."""
    h, w = mask.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if eight:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        seen[y, x] = True
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


def _bfs_holes(mask):
    """Background regions (8-connected) that do not reach the image border."""
    padded = np.pad(~mask.astype(bool), 1, constant_values=True)
    return _bfs_components(padded, eight=True) - 1


def _decode(ann, h, w):
    segm = ann["segmentation"]
    if isinstance(segm, list):
        return masks.polygons_to_mask(segm, h, w)
    return mask_util.decode(segm).astype(bool)


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One small dataset per mask format, same seed, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        fmt: generate_synthetic_dataset(str(root), f"d_{fmt}", 40, seed=7, mask_format=fmt)
        for fmt in ("rle", "polygon")
    }


# --- masks -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 18), st.integers(1, 18), st.floats(0.05, 0.95))
def test_polygons_round_trip_exactly(seed, h, w, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    polygons = masks.mask_to_polygons(mask)
    np.testing.assert_array_equal(masks.polygons_to_mask(polygons, h, w), mask)
    shoelace = 0.0
    for p in polygons:
        assert len(p) >= 6 and len(p) % 2 == 0
        x, y = np.array(p[0::2]), np.array(p[1::2])
        shoelace += abs(float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum())) / 2
    assert shoelace == mask.sum()  # what Detectron2's PolygonMasks.area() reports
    assert masks.mask_topology(mask) == (_bfs_components(mask), _bfs_holes(mask))


def test_polygon_of_ring_keeps_its_hole():
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    ring = (r < 15) & (r > 7)
    polygons = masks.mask_to_polygons(ring)
    assert len(polygons) == 1  # one component, the hole spliced in
    np.testing.assert_array_equal(masks.polygons_to_mask(polygons, 40, 40), ring)
    assert masks.mask_topology(ring) == (1, 1)


def test_rle_and_bbox_helpers():
    m = np.zeros((10, 12), dtype=bool)
    m[2:5, 3:9] = True
    rle = masks.encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [10, 12]
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), m)
    assert masks.mask_bbox(m) == [3.0, 2.0, 6.0, 3.0]


# --- determinism and caching -----------------------------------------------------------------


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), "s", 6, seed=3)
    b = generate_synthetic_dataset(str(tmp_path / "b"), "other_name", 6, seed=3)
    c = generate_synthetic_dataset(str(tmp_path / "c"), "s", 6, seed=4)
    assert _read(a) == _read(b)
    assert _read(a) != _read(c)
    for i in range(1, 7):
        img_a = _read(tmp_path / "a" / "s" / "images" / f"{i:06d}.png")
        assert img_a == _read(tmp_path / "b" / "other_name" / "images" / f"{i:06d}.png")
        assert img_a != _read(tmp_path / "c" / "s" / "images" / f"{i:06d}.png")


def test_worker_processes_do_not_change_output(tmp_path):
    one = generate_synthetic_dataset(str(tmp_path / "1"), "s", 64, seed=5, num_workers=1)
    two = generate_synthetic_dataset(str(tmp_path / "2"), "s", 64, seed=5, num_workers=2)
    assert _read(one) == _read(two)
    assert _read(tmp_path / "1/s/images/000064.png") == _read(tmp_path / "2/s/images/000064.png")


def test_cache_is_reused_and_params_change_regenerates(tmp_path, monkeypatch):
    path = generate_synthetic_dataset(str(tmp_path), "s", 5, seed=1)
    stamp = os.stat(path).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "_render_all", fail)
        assert generate_synthetic_dataset(str(tmp_path), "s", 5, seed=1) == path
    assert os.stat(path).st_mtime_ns == stamp

    for change in ({"num_images": 6}, {"mask_format": "polygon"}, {"image_size": 64}):
        args = {"num_images": 5, "seed": 1, **change}
        generate_synthetic_dataset(str(tmp_path), "s", **args)
        with open(path) as f:
            data = json.load(f)
        assert data["info"]["generator"] == synthetic.generation_params(**args)
        assert len(os.listdir(tmp_path / "s" / "images")) == args["num_images"]
        assert (
            Image.open(tmp_path / "s" / "images" / "000001.png").size
            == (args.get("image_size", 128),) * 2
        )
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temporary or old directories left


def test_missing_images_invalidate_the_cache(tmp_path):
    path = generate_synthetic_dataset(str(tmp_path), "s", 4, seed=1)
    os.remove(tmp_path / "s" / "images" / "000002.png")
    generate_synthetic_dataset(str(tmp_path), "s", 4, seed=1)
    assert os.path.exists(tmp_path / "s" / "images" / "000002.png") and os.path.exists(path)


def test_interrupted_run_leaves_nothing_trusted(tmp_path, monkeypatch):
    good = generate_synthetic_dataset(str(tmp_path), "s", 3, seed=1)
    before = _read(good)

    def crash(params, rendered):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(synthetic, "_coco_json", crash)
        generate_synthetic_dataset(str(tmp_path), "s", 4, seed=1)
    assert _read(good) == before  # the old, complete dataset is untouched
    assert sorted(os.listdir(tmp_path)) == ["s"]
    # A crash that killed the process leaves its temp dir; the next run removes it.
    stale = tmp_path / ".tmp-s-999999999-deadbeef"
    (stale / "images").mkdir(parents=True)
    (stale / "annotations.json").write_text("{}")
    generate_synthetic_dataset(str(tmp_path), "s", 4, seed=1)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_never_deletes_a_foreign_directory(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(str(tmp_path), "s", 2, seed=1)
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs", [{"mask_format": "png"}, {"num_images": 0}, {"min_instances": 0}]
)
def test_bad_parameters_raise(tmp_path, kwargs):
    args = {"num_images": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError):
        generate_synthetic_dataset(str(tmp_path), "s", **args)


# --- content ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["rle", "polygon"])
def test_coco_validity(datasets, fmt):
    coco = COCO(datasets[fmt])
    assert [c["id"] for c in coco.dataset["categories"]] == list(range(1, 7))
    assert len(coco.getImgIds()) == 40
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        h, w = info["height"], info["width"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert 1 <= len(anns) <= 6
        union = np.zeros((h, w), dtype=int)
        for ann in anns:
            m = coco.annToMask(ann).astype(bool)
            assert m.shape == (h, w) and m.any()
            assert ann["area"] == m.sum()
            assert ann["bbox"] == _tight_box(m)
            assert all(isinstance(v, float) for v in ann["bbox"])
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 6
            union += m
        assert union.max() == 1  # visible parts of one image's instances never overlap


def test_polygon_and_rle_datasets_hold_identical_masks(datasets):
    rle, poly = (_load_json(datasets[f]) for f in ("rle", "polygon"))
    assert len(rle["annotations"]) == len(poly["annotations"])
    for a, b in zip(rle["annotations"], poly["annotations"]):
        assert isinstance(b["segmentation"], list)
        np.testing.assert_array_equal(_decode(a, 128, 128), _decode(b, 128, 128))
        assert a["area"] == b["area"] and a["bbox"] == b["bbox"]


def test_masks_are_hard_in_the_intended_ways(datasets):
    data = _load_json(datasets["rle"])
    holes = splits = 0
    for ann in data["annotations"]:
        x, y, w, h = (int(v) for v in ann["bbox"])
        m = _decode(ann, 128, 128)[y : y + h, x : x + w]  # crop: same topology, faster BFS
        holes += _bfs_holes(m) > 0
        splits += _bfs_components(m, eight=True) > 1  # split by an occluder, not a pixel tip
    assert holes >= 3 and splits >= 3
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 7))
    # Thin and concave classes fill little of their box: the box is easy, the mask is not.
    fill = {}
    for ann in data["annotations"]:
        fill.setdefault(ann["category_id"], []).append(
            ann["area"] / (ann["bbox"][2] * ann["bbox"][3])
        )
    assert np.mean(fill[6]) < 0.45 and np.mean(fill[5]) < 0.5  # zigzag, cross
    areas = [a["area"] for a in data["annotations"]]
    assert min(areas) < 150 < 800 < max(areas)  # varied sizes


def test_images_exist_with_the_right_size(datasets):
    data = _load_json(datasets["rle"])
    image_root = os.path.join(os.path.dirname(datasets["rle"]), "images")
    assert len(os.listdir(image_root)) == len(data["images"])
    for info in data["images"][:5]:
        img = Image.open(os.path.join(image_root, info["file_name"]))
        assert img.size == (info["width"], info["height"]) == (128, 128) and img.mode == "RGB"


def test_image_size_is_configurable(tmp_path):
    path = generate_synthetic_dataset(str(tmp_path), "s", 3, seed=1, image_size=96)
    coco = COCO(path)
    for ann in coco.dataset["annotations"]:
        assert coco.annToMask(ann).shape == (96, 96)
    assert Image.open(tmp_path / "s" / "images" / "000003.png").size == (96, 96)


def test_preview(datasets, tmp_path):
    from ms_rcnn.data import render_preview

    image_root = os.path.join(os.path.dirname(datasets["polygon"]), "images")
    out = render_preview(datasets["polygon"], image_root, str(tmp_path / "p.png"), 6, cols=3)
    assert Image.open(out).size[0] > 3 * 2 * 128 * 2


# --- Detectron2 ------------------------------------------------------------------------------


@pytest.fixture
def tmp_registered(tmp_path):
    """Point the registered synthetic datasets at tmp_path; restore the default root after."""
    from detectron2.data import DatasetCatalog

    names = registry.register_synthetic_datasets(str(tmp_path), force=True)
    assert set(names) == set(registry.SYNTHETIC_DATASETS)
    assert set(names) <= set(DatasetCatalog.list())
    yield tmp_path
    registry.register_synthetic_datasets(force=True)


def test_registration_is_lazy_and_idempotent(tmp_registered):
    from detectron2.data import MetadataCatalog

    assert registry.register_synthetic_datasets(str(tmp_registered)) == []  # already there
    assert os.listdir(tmp_registered) == []  # nothing generated yet
    from ms_rcnn.data.shapes import CLASS_NAMES

    for name, args in registry.SYNTHETIC_DATASETS.items():
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CLASS_NAMES)
        assert meta.evaluator_type == "coco"
        assert meta.json_file == str(tmp_registered / name / "annotations.json")
        assert meta.image_root == str(tmp_registered / name / "images")
        assert meta.mask_format == args["mask_format"]
    sizes = {n: a["num_images"] for n, a in registry.SYNTHETIC_DATASETS.items()}
    assert sizes["synthetic_shapes_train"] == 1000 and sizes["synthetic_shapes_val"] == 200
    seeds = {a["seed"] for n, a in registry.SYNTHETIC_DATASETS.items() if "poly" not in n}
    assert len(seeds) == 4


@pytest.mark.parametrize("poly", [False, True])
def test_detectron2_loads_and_maps(tmp_registered, poly):
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
    from detectron2.data import detection_utils as utils

    name = "synthetic_shapes_poly_tiny_train" if poly else "synthetic_shapes_tiny_train"
    fmt = "polygon" if poly else "bitmask"
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 16 and all(d["annotations"] for d in dicts)
    assert os.path.exists(MetadataCatalog.get(name).json_file)
    annos = dicts[0]["annotations"]
    inst = utils.annotations_to_instances(annos, (128, 128), mask_format=fmt)
    assert len(inst) == len(annos) and inst.gt_boxes.tensor.shape == (len(annos), 4)
    with open(MetadataCatalog.get(name).json_file) as f:
        areas = [a["area"] for a in json.load(f)["annotations"] if a["image_id"] == 1]
    if poly:
        got = inst.gt_masks.area().tolist()  # shoelace area of the keyhole polygons
    else:
        got = inst.gt_masks.tensor.sum(dim=(1, 2)).tolist()
    assert got == pytest.approx(areas)
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(96, 96), T.RandomFlip()],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format=fmt,
    )
    out = mapper(dicts[1])
    assert tuple(out["image"].shape) == (3, 96, 96)
    assert len(out["instances"]) == len(dicts[1]["annotations"])
    # Resizing must not truncate coordinates (integer boxes would): the boxes scale by 0.75.
    boxes = out["instances"].gt_boxes.tensor
    assert (boxes[:, 2] - boxes[:, 0]).min() > 0


def test_tiny_splits_differ(tmp_registered):
    from detectron2.data import DatasetCatalog

    train, val = (DatasetCatalog.get(n) for n in TINY)
    assert [d["annotations"][0]["bbox"] for d in train] != [
        d["annotations"][0]["bbox"] for d in val
    ]


def test_class_names_agree_with_registry():
    from ms_rcnn.data.shapes import CLASS_NAMES

    assert list(CLASS_NAMES) == registry._THING_CLASSES


def test_import_registers_without_generating(tmp_path):
    code = (
        "import sys, ms_rcnn.data\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "assert 'synthetic_shapes_train' in DatasetCatalog.list()\n"
        "assert 'ms_rcnn.data.synthetic' not in sys.modules\n"
        "print(MetadataCatalog.get('synthetic_shapes_val').json_file)\n"
    )
    env = {**os.environ, "MS_RCNN_DATASETS": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tmp_path / "synthetic_shapes_val" / "annotations.json")
    assert os.listdir(tmp_path) == []


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_dataset", os.path.join(REPO, "tools", "make_synthetic_dataset.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    argv = ["--root", str(tmp_path), "--name", "c", "--num-images", "3", "--seed", "2"]
    assert cli.main([*argv, "--mask-format", "polygon", "--image-size", "64"]) == 0
    assert "generated 3 images" in capsys.readouterr().out
    assert cli.main([*argv, "--mask-format", "polygon", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "reused the cached dataset" in out and str(tmp_path / "c") in out
