"""--register-coco NAME JSON IMAGE_ROOT: metadata before loading, the class-count check, clear
errors, and registration inside main(args) in every spawned worker."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# Out of order, non-contiguous ids: Detectron2 gives contiguous ids in sorted id order.
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 4, "name": "bird"}]
CLASSES = ["dog", "bird", "cat"]


def write_coco(folder: Path, num_images=2, size=64) -> tuple[str, str]:
    """A small COCO instances dataset: images with one square per category each."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(1, num_images + 1):
        Image.new("RGB", (size, size), (40 * i, 90, 160)).save(images_dir / f"im{i}.png")
        images.append({"id": 10 + i, "file_name": f"im{i}.png", "height": size, "width": size})
        for k, cat in enumerate(CATEGORIES):
            x, y, w = 4 + 18 * k, 6 + 5 * i, 14
            poly = [x, y, x + w, y, x + w, y + w, x, y + w]
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i,
                                "category_id": cat["id"], "bbox": [x, y, w, w], "area": w * w,
                                "iscrowd": 0, "segmentation": [poly]})  # fmt: skip
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": CATEGORIES}))  # fmt: skip
    return str(path), str(images_dir)


@pytest.fixture
def names():
    """Dataset names used by a test, removed from Detectron2's catalogs afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    used = []
    yield used
    for name in used:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_classes_known_before_loading_and_loading_agrees(tmp_path, names):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ms_rcnn.data.user_datasets import register_coco_datasets

    json_file, image_root = write_coco(tmp_path)
    names.append("rc_pets")
    assert register_coco_datasets([("rc_pets", json_file, image_root)]) == ["rc_pets"]
    meta = MetadataCatalog.get("rc_pets")
    assert meta.thing_classes == CLASSES
    assert meta.thing_dataset_id_to_contiguous_id == {2: 0, 4: 1, 7: 2}
    # Loading sets the same metadata again (Detectron2 asserts it is unchanged).
    dicts = DatasetCatalog.get("rc_pets")
    assert len(dicts) == 2 and dicts[0]["file_name"] == os.path.join(image_root, "im1.png")
    # Per image the squares are in CATEGORIES' order: cat, dog, bird.
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [2, 0, 1]
    # The same name with the same files again (e.g. main called twice) is a no-op.
    assert register_coco_datasets([("rc_pets", json_file, image_root)]) == ["rc_pets"]


def test_name_clashes_are_refused(tmp_path, names):
    from ms_rcnn.data.user_datasets import register_coco_datasets

    a = write_coco(tmp_path / "a")
    b = write_coco(tmp_path / "b")
    names.append("rc_clash")
    with pytest.raises(ValueError) as err:
        register_coco_datasets([("rc_clash", *a), ("rc_clash", *b)])
    assert "'rc_clash' is already registered" in str(err.value)
    assert a[0] in str(err.value) and b[0] in str(err.value)
    import detectron2.data  # noqa: F401  (registers Detectron2's builtin datasets)

    with pytest.raises(ValueError, match="'coco_2017_val' is already registered"):
        register_coco_datasets([("coco_2017_val", *a)])


def test_bad_files_are_named(tmp_path, names):
    from detectron2.data import DatasetCatalog

    from ms_rcnn.data.user_datasets import register_coco_datasets

    json_file, image_root = write_coco(tmp_path)
    names.extend(["rc_bad", "rc_noimg"])
    truncated = tmp_path / "truncated.json"
    truncated.write_text(Path(json_file).read_text()[:100])
    with pytest.raises(ValueError, match=f"{truncated}: not valid JSON"):
        register_coco_datasets([("rc_bad", str(truncated), image_root)])
    with pytest.raises(FileNotFoundError, match="nope.json: no such file"):
        register_coco_datasets([("rc_bad", str(tmp_path / "nope.json"), image_root)])
    with pytest.raises(FileNotFoundError, match="IMAGE_ROOT .*pics is not a directory"):
        register_coco_datasets([("rc_bad", json_file, str(tmp_path / "pics"))])
    twice = json.loads(Path(json_file).read_text())
    twice["categories"].append({"id": 4, "name": "bird again"})
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    with pytest.raises(ValueError, match=r"twice.json: category id\(s\) \[4\]"):
        register_coco_datasets([("rc_bad", str(tmp_path / "twice.json"), image_root)])
    assert "rc_bad" not in DatasetCatalog.list()
    # A missing image is reported when the dataset is loaded, before any training step.
    os.remove(os.path.join(image_root, "im2.png"))
    register_coco_datasets([("rc_noimg", json_file, image_root)])
    with pytest.raises(FileNotFoundError, match="1 image file.*rc_noimg missing: .*im2.png"):
        DatasetCatalog.get("rc_noimg")


def setup_args(tmp_path, register, *opts):
    config = ROOT / "configs" / "demo" / "ms_rcnn_R_18_demo.yaml"
    return SimpleNamespace(config_file=str(config), register_coco=register, eval_only=False,
                           resume=False, num_gpus=1,
                           opts=["OUTPUT_DIR", str(tmp_path / "out"), *opts])  # fmt: skip


def test_num_classes_smaller_than_the_json_is_an_error(tmp_path, names):
    from ms_rcnn.engine import setup

    json_file, image_root = write_coco(tmp_path)
    names.append("rc_three")
    opts = ["DATASETS.TRAIN", "('rc_three',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2"]
    args = setup_args(tmp_path, [["rc_three", json_file, image_root]], *opts)
    expected = r"MODEL.ROI_HEADS.NUM_CLASSES=2, but dataset rc_three has 3 categories"
    with pytest.raises(ValueError, match=expected):
        setup(args)
    assert not (tmp_path / "out").exists()  # refused before anything was set up


def test_num_classes_larger_is_a_warning_and_unused_datasets_are_named(tmp_path, names, caplog):
    from detectron2.config import get_cfg

    from ms_rcnn.data.user_datasets import check_config_datasets, register_coco_datasets

    json_file, image_root = write_coco(tmp_path)
    names.extend(["rc_train", "rc_spare"])
    register_coco_datasets([("rc_train", json_file, image_root)])
    register_coco_datasets([("rc_spare", json_file, image_root)])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("rc_train",), ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with caplog.at_level("WARNING"):
        check_config_datasets(cfg, ["rc_train", "rc_spare"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("NUM_CLASSES=5, but dataset rc_train has only 3 categories" in m for m in messages)
    assert any("--register-coco rc_spare: the config does not use it" in m for m in messages)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    caplog.clear()
    check_config_datasets(cfg, ["rc_train"])
    assert not caplog.records


def test_train_net_command_line_checks_num_classes(tmp_path):
    """In a spawned process, through tools/train_net.py's own parser."""
    json_file, image_root = write_coco(tmp_path)
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file",
           str(ROOT / "configs" / "demo" / "ms_rcnn_R_18_demo.yaml"),
           "--register-coco", "mine", json_file, image_root,
           "DATASETS.TRAIN", "('mine',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
           "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "MODEL.ROI_HEADS.NUM_CLASSES=2, but dataset mine has 3 categories" in proc.stderr


# --- several processes, as `launch` starts them -------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_worker(rank, port, argv, out_dir):
    """What Detectron2's launch does in each worker (on CPU: gloo), then train_net's main(args).

    Detectron2 v0.6's launch asserts CUDA in its workers, so this mirrors it with gloo: a fresh
    interpreter (spawn) that knows nothing of the parent's datasets calls main(args).
    """
    import torch.distributed as dist
    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6
            comm.create_local_process_group(2)
        else:
            comm._LOCAL_PROCESS_GROUP = dist.new_group([0, 1])
        spec = importlib.util.spec_from_file_location("train_net", ROOT / "tools" / "train_net.py")
        train_net = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train_net)
        args = train_net.build_parser().parse_args(argv)
        before = "rc_dist" in DatasetCatalog.list()
        results = train_net.main(args)
        report = {"before": before, "after": "rc_dist" in DatasetCatalog.list(),
                  "results": results if rank == 0 else None}  # fmt: skip
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_registration_happens_in_every_spawned_worker(tmp_path):
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    json_file, image_root = write_coco(tmp_path / "data", num_images=4)
    torch.manual_seed(0)
    cfg = tiny_cfg("MaskScoringROIHeads", num_classes=3)
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    MSRCNNCheckpointer(build_model(cfg), str(tmp_path)).save("tiny")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--eval-only", "--num-gpus", "2",
            "--register-coco", "rc_dist", json_file, image_root,
            "DATASETS.TEST", "('rc_dist',)", "MODEL.WEIGHTS", str(tmp_path / "tiny.pth"),
            "OUTPUT_DIR", str(tmp_path / "eval")]  # fmt: skip
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
    )
    context = mp.spawn(eval_worker, args=(free_port(), argv, str(tmp_path)), nprocs=2, join=False)
    deadline = time.time() + 180
    try:
        while not context.join(timeout=1):  # raises if a worker raised
            if time.time() > deadline:
                pytest.fail("distributed evaluation did not finish within 180 s (hang?)")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
                p.join()
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["before"], r["after"]) for r in reports] == [(False, True), (False, True)]
    # Rank 0 evaluated the predictions of both ranks' images (gathered): it needed rank 1.
    assert "segm" in reports[0]["results"] and "bbox" in reports[0]["results"]
