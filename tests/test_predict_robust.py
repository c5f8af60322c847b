"""tools/predict.py on what goes wrong: class counts that do not fit, inputs that cannot be
read or saved, failures and Ctrl-C midway (nothing finished is lost), configs whose packages
are missing."""

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from PIL import Image
from predict_helpers import run_predict

ROOT = Path(__file__).resolve().parent.parent
OPTS = ("--batch-size", "1", "--confidence-threshold", "0")


@pytest.fixture
def setup_dir(predict_setup):
    return predict_setup


@pytest.fixture
def four_images(setup_dir, tmp_path):
    """Copies of the 4 dataset images in a folder of their own (other files get added)."""
    folder = tmp_path / "in"
    shutil.copytree(setup_dir / "shapes" / "images", folder)
    return folder


def save_checkpoint(folder, name, num_classes):
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer

    torch.manual_seed(0)
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=num_classes)
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
    MSRCNNCheckpointer(build_model(cfg), str(folder)).save(name)
    return folder / f"{name}.pth"


def three_category_json(setup_dir, tmp_path):
    """The dataset's JSON with only its first 3 categories (and their annotations)."""
    data = json.loads((setup_dir / "remapped.json").read_text())
    keep = sorted(c["id"] for c in data["categories"])[:3]
    data["categories"] = [c for c in data["categories"] if c["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
    path = tmp_path / "three.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------ 1. class counts


def assert_refused_before_any_image(err, out, weights_classes, dataset_classes):
    message = str(err.value)
    assert f"{weights_classes} classes" in message and f"{dataset_classes}" in message
    assert "--register-coco NAME JSON IMAGE_ROOT" in message
    assert "DATASETS.TEST \"('NAME',)\"" in message and 'DATASETS.TEST "()"' in message
    assert f"NUM_CLASSES {dataset_classes}" not in message  # weights cannot load with that
    assert not out.exists() or not any(out.iterdir())  # decided before any image was read


def test_more_model_classes_than_the_dataset_is_refused_before_any_image(setup_dir, tmp_path):
    """A 6-class model with a 3-category JSON: today a KeyError after drawing some images."""
    from ms_rcnn.predict.pipeline import InputError

    three = three_category_json(setup_dir, tmp_path)
    images = setup_dir / "shapes" / "images"
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        run_predict(setup_dir, out, *OPTS, "--register-coco", "pred_three", str(three),
                    str(images), "DATASETS.TEST", "('pred_three',)")  # fmt: skip
    assert_refused_before_any_image(err, out, 6, 3)
    assert "pred_three" in str(err.value)


@pytest.mark.parametrize("override", [False, True], ids=["config_6", "NUM_CLASSES_4"])
def test_fewer_weight_classes_than_the_dataset_names_both_and_the_ways_out(
    setup_dir, tmp_path, override
):
    """4-class weights, a config whose DATASETS.TEST has 6 classes: today the error advises
    NUM_CLASSES 6, with which the weights cannot load."""
    from ms_rcnn.predict.pipeline import InputError

    four = save_checkpoint(tmp_path, "four", 4)
    extra = ["MODEL.ROI_HEADS.NUM_CLASSES", "4"] if override else []
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        run_predict(setup_dir, out, *OPTS, *extra, weights=four)
    assert_refused_before_any_image(err, out, 4, 6)
    assert "four.pth" in str(err.value)


def test_no_dataset_shows_classes_by_index(setup_dir, four_images, tmp_path):
    """The way out the refusal names: DATASETS.TEST "()" without --register-coco."""
    from ms_rcnn.predict.cli import build_parser, run

    four = save_checkpoint(tmp_path, "four", 4)
    argv = ["--config-file", str(setup_dir / "ms.yaml"), "--output", str(tmp_path / "out"),
            "--input", str(four_images), *OPTS, "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.WEIGHTS", str(four)]  # fmt: skip
    assert run(build_parser().parse_args(argv)) == 0
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert records and {r["category_id"] for r in records} <= {0, 1, 2, 3}


# ------------------------------------------------------------------------- 2. nothing lost


def test_inputs_pillow_cannot_open_or_save_are_skipped_before_the_model(
    setup_dir, four_images, tmp_path, monkeypatch, caplog
):
    """A text file named explicitly, a PNG whose extension Pillow cannot save, a decompression
    bomb: each named and skipped before the model is built; the rest predicted."""
    import ms_rcnn.predict.cli as cli

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    odd = tmp_path / "picture.xyz"
    shutil.copy(four_images / "000001.png", odd)
    bomb = tmp_path / "huge.png"
    Image.new("RGB", (400, 400)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # 400x400 > 2x: a bomb; 64x64 is not
    warned_before_model = []
    real_load = cli.load_model

    def spy(*args, **kwargs):
        warned_before_model.extend(r.getMessage() for r in caplog.records)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cli, "load_model", spy)
    out = tmp_path / "out"
    inputs = [str(four_images / "000002.png"), str(notes), str(odd), str(bomb)]
    with caplog.at_level(logging.WARNING):
        status = run_predict(setup_dir, out, *OPTS, inputs=inputs)
    assert status == 0
    for bad in (notes, odd, bomb):
        assert any(str(bad) in m for m in warned_before_model), bad
    assert sorted(p.name for p in out.iterdir()) == ["000002.png", "predictions.json"]
    records = json.loads((out / "predictions.json").read_text())
    assert records and {r["file_name"] for r in records} == {str(four_images / "000002.png")}


def records_by_file(out):
    records = json.loads((out / "predictions.json").read_text())
    return {r["file_name"] for r in records}, records


@pytest.mark.parametrize("failure", ["save_error", "ctrl_c"])
def test_a_failure_midway_keeps_the_finished_images(
    setup_dir, four_images, tmp_path, monkeypatch, capsys, failure
):
    """The third image fails (its drawing cannot be written / Ctrl-C while it is predicted):
    the first two stay, with their records in predictions.json; the run says 2 of 4."""
    import ms_rcnn.predict.cli as cli

    calls = []
    if failure == "save_error":
        real_save = cli._save_image

        def save(rgb, path):
            calls.append(path)
            if len(calls) == 3:
                raise OSError(28, "No space left on device")
            real_save(rgb, path)

        monkeypatch.setattr(cli, "_save_image", save)
    else:
        real_call = cli.BatchPredictor.__call__

        def call(self, images):
            calls.append(images)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real_call(self, images)

        monkeypatch.setattr(cli.BatchPredictor, "__call__", call)
    out = tmp_path / "out"
    try:
        status = run_predict(setup_dir, out, *OPTS, inputs=[str(four_images)])
    except KeyboardInterrupt:  # escaping, it would end the whole test session
        pytest.fail("Ctrl-C escaped predict's run() instead of ending it with status 130")
    assert status == (130 if failure == "ctrl_c" else 1)
    done = [str(four_images / f"00000{i}.png") for i in (1, 2)]
    files, records = records_by_file(out)
    assert files == set(done) and records
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "000002.png", "predictions.json"]
    printed = capsys.readouterr()
    assert "2 of 4 image(s)" in printed.out + printed.err
    # The same records as a run that is not interrupted, for those two images.
    monkeypatch.undo()
    full = tmp_path / "full"
    assert run_predict(setup_dir, full, *OPTS, inputs=done) == 0
    assert records == records_by_file(full)[1]


def test_the_partial_file_holds_each_finished_image(tmp_path):
    """Killed before it can finalize (SIGKILL, out of memory), a run leaves one JSON line per
    finished image; finalizing writes predictions.json and removes it."""
    from ms_rcnn.predict.results import PredictionsWriter

    writer = PredictionsWriter(str(tmp_path))
    writer.add([{"image_id": 1, "score": 0.5}, {"image_id": 1, "score": 0.25}])
    writer.add([])
    writer.add([{"image_id": 3, "score": 0.75}])
    lines = (tmp_path / "predictions.partial.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        [{"image_id": 1, "score": 0.5}, {"image_id": 1, "score": 0.25}],
        [],
        [{"image_id": 3, "score": 0.75}],
    ]
    assert writer.finalize() == str(tmp_path / "predictions.json")
    assert json.loads((tmp_path / "predictions.json").read_text()) == [
        {"image_id": 1, "score": 0.5},
        {"image_id": 1, "score": 0.25},
        {"image_id": 3, "score": 0.75},
    ]
    assert not (tmp_path / "predictions.partial.jsonl").exists()


# ----------------------------------------------------------------- 5. missing packages


def test_pointrend_config_without_pointrend_is_an_input_error(
    setup_dir, tmp_path, monkeypatch, capsys
):
    from ms_rcnn.predict.cli import main
    from ms_rcnn.predict.pipeline import InputError

    for name in ("detectron2.projects.point_rend", "point_rend"):
        monkeypatch.setitem(sys.modules, name, None)  # "not installed" for the import system
    monkeypatch.delitem(sys.modules, "ms_rcnn.modeling.pointrend", raising=False)
    config = ROOT / "configs" / "demo" / "ms_rcnn_pointrend_R_18_demo.yaml"
    with pytest.raises(InputError, match=r"PointRend.*detectron2\.projects\.point_rend"):
        run_predict(setup_dir, tmp_path / "out", config=config)
    images, weights = setup_dir / "shapes" / "images", setup_dir / "ms.pth"
    argv = ["--config-file", config, "--input", images, "--output", tmp_path / "out",
            "MODEL.WEIGHTS", weights]  # fmt: skip
    argv = [str(a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "PointRend" in err and "Traceback" not in err


def test_any_import_failure_from_a_config_names_the_package(setup_dir, tmp_path, monkeypatch):
    import ms_rcnn.predict.pipeline as pipeline

    def merge(cfg, path):
        raise ModuleNotFoundError("No module named 'shiny_heads'", name="shiny_heads")

    monkeypatch.setattr(pipeline, "merge_config_file", merge)
    with pytest.raises(pipeline.InputError, match="shiny_heads"):
        run_predict(setup_dir, tmp_path / "out")
