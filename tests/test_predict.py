"""tools/predict.py: outputs against the model's own outputs computed here, ranking, threshold,
drawing, and every refused input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from PIL import Image
from predict_helpers import DATASET_IDS, model_outputs, predict_args, run_predict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup_dir(predict_setup):
    return predict_setup


def test_predictions_json_and_images_match_the_model(setup_dir, tmp_path, capsys):
    from pycocotools import mask as mask_util

    images = sorted((setup_dir / "shapes" / "images").glob("*.png"))
    expected = model_outputs(setup_dir, "ms", images)
    all_mask_scores = torch.cat([o.mask_scores for o in expected.values()])
    threshold = float(all_mask_scores.median())  # some kept, some dropped
    out = tmp_path / "out"
    assert run_predict(setup_dir, out, "--confidence-threshold", str(threshold),
                       "--batch-size", "3") == 0  # fmt: skip
    assert "4/4" in capsys.readouterr().err  # the progress bar's count

    records = json.loads((out / "predictions.json").read_text())
    gt = json.loads((setup_dir / "remapped.json").read_text())
    gt_ids = {im["file_name"]: im["id"] for im in gt["images"]}
    dropped = reordered = 0
    for path in images:
        inst = expected[str(path)]
        keep = torch.nonzero(inst.mask_scores > threshold).flatten()
        order = keep[torch.argsort(inst.mask_scores[keep], descending=True)]
        dropped += len(inst) - len(keep)
        reordered += not torch.equal(order, keep[torch.argsort(inst.scores[keep], descending=True)])
        mine = [r for r in records if r["file_name"] == str(path)]
        assert len(mine) == len(order), path
        for r, i in zip(mine, order.tolist()):
            assert set(r) == {"file_name", "image_id", "category_id", "bbox", "segmentation",
                              "score", "class_score", "mask_score", "pred_maskiou"}  # fmt: skip
            assert r["image_id"] == gt_ids[path.name]  # the dataset's image id
            assert r["category_id"] == DATASET_IDS[int(inst.pred_classes[i])]
            x0, y0, x1, y1 = inst.pred_boxes.tensor[i].tolist()
            assert r["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
            assert r["class_score"] == pytest.approx(float(inst.scores[i]), abs=1e-5)
            assert r["mask_score"] == pytest.approx(float(inst.mask_scores[i]), abs=1e-5)
            assert r["score"] == r["mask_score"]  # the ranking score
            assert r["pred_maskiou"] == pytest.approx(float(inst.pred_maskiou[i]), abs=1e-5)
            rle = {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
            decoded = mask_util.decode(rle)
            assert np.array_equal(decoded.astype(bool), inst.pred_masks[i].numpy())
        drawn = np.asarray(Image.open(out / path.name))
        assert drawn.shape == np.asarray(Image.open(path)).shape
        if mine:
            assert not np.array_equal(drawn, np.asarray(Image.open(path).convert("RGB")))
    assert dropped > 0 and len(records) > 0  # the threshold did filter
    assert reordered > 0  # mask_scores ranked some image differently from class scores


def test_plain_mask_rcnn_ranks_by_class_score(setup_dir, tmp_path):
    image = setup_dir / "shapes" / "images" / "000001.png"
    inst = model_outputs(setup_dir, "plain", [image])[str(image)]
    threshold = float(inst.scores.median())
    run_predict(setup_dir, tmp_path, "--confidence-threshold", str(threshold), arm="plain",
                inputs=[str(image)])  # fmt: skip
    records = json.loads((tmp_path / "predictions.json").read_text())
    expected = sorted(s for s in inst.scores.tolist() if s > threshold)[::-1]
    assert [r["score"] for r in records] == pytest.approx(expected, abs=1e-5)
    assert all(r["class_score"] == r["score"] for r in records)
    assert all("mask_score" not in r and "pred_maskiou" not in r for r in records)


def test_ranking_labels_and_threshold_on_known_instances():
    from detectron2.structures import Boxes, Instances

    from ms_rcnn.predict.visualize import detection_labels, rank_detections

    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.zeros(3, 4))
    inst.scores = torch.tensor([0.9, 0.6, 0.8])
    inst.pred_maskiou = torch.tensor([0.5, 0.95, 0.9])
    inst.mask_scores = inst.scores * inst.pred_maskiou  # 0.45, 0.57, 0.72
    inst.pred_classes = torch.tensor([0, 7, 1])
    ranked = rank_detections(inst, 0.5)
    assert ranked.scores.tolist() == pytest.approx([0.8, 0.6])  # 0.9 * 0.5 falls under 0.5
    names = ["ellipse", "ring"]
    assert detection_labels(ranked, names) == ["ring 0.80 | IoU 0.90", "7 0.60 | IoU 0.95"]
    plain = Instances((10, 10), scores=torch.tensor([0.3, 0.7]), pred_classes=torch.tensor([1, 0]))
    assert detection_labels(rank_detections(plain, 0.2), names) == ["ellipse 0.70", "ring 0.30"]


def test_drawing_keeps_holes_and_puts_the_best_on_top():
    from detectron2.structures import Boxes, Instances

    from ms_rcnn.predict.visualize import _PALETTE, RankedVisualizer

    size = 96
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    masks[0, 10:40, 10:40] = True  # best ranked, overlapping the second
    masks[1, 25:55, 25:55] = True
    masks[2, 60:92, 60:92] = True  # a ring: its hole must stay undrawn
    masks[2, 70:82, 70:82] = False
    inst = Instances((size, size), pred_masks=masks, scores=torch.tensor([0.9, 0.8, 0.7]))
    boxes = [[10, 10, 40, 40], [25, 25, 55, 55], [60, 60, 92, 92]]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.tensor([0, 1, 2])
    black = np.zeros((size, size, 3), dtype=np.uint8)
    drawn = RankedVisualizer(black).draw_ranked_instances(inst).get_image().astype(float)
    assert drawn.shape == (size, size, 3)
    assert np.abs(drawn[76, 76]).max() < 5  # the ring's hole
    assert drawn[66, 66].max() > 30  # the ring itself
    first, second = (np.array(_PALETTE[i]) * 255 for i in (0, 1))
    alpha = 0.45
    on_top = alpha * first + (1 - alpha) * alpha * second
    below = alpha * second + (1 - alpha) * alpha * first
    pixel = drawn[35, 35]
    assert np.abs(pixel - on_top).max() < np.abs(pixel - below).max()
    assert np.abs(pixel - on_top).max() < 6


@pytest.mark.parametrize(
    "case",
    ["missing", "glob", "empty_folder", "same_name", "output_is_input", "no_weights",
     "weights_missing", "threshold"],
)  # fmt: skip
def test_bad_inputs_are_named(setup_dir, tmp_path, case):
    from ms_rcnn.predict.pipeline import InputError

    images = setup_dir / "shapes" / "images"
    kwargs, extra = {}, []
    if case == "missing":
        kwargs["inputs"], named = [str(tmp_path / "nope.png")], "nope.png"
    elif case == "glob":
        kwargs["inputs"], named = [str(tmp_path / "*.jpg")], "*.jpg"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        kwargs["inputs"], named = [str(tmp_path / "empty")], "empty"
    elif case == "same_name":
        (tmp_path / "other").mkdir()
        shutil.copy(images / "000001.png", tmp_path / "other")
        kwargs["inputs"], named = [str(images), str(tmp_path / "other")], "both be drawn"
    elif case == "output_is_input":
        out = images
        named = str(images)
    elif case == "no_weights":
        kwargs["weights"], named = "", "MODEL.WEIGHTS"  # "" is no weights
    elif case == "weights_missing":
        kwargs["weights"], named = str(tmp_path / "gone.pth"), "gone.pth"
    else:
        extra, named = ["--confidence-threshold", "1.5"], "--confidence-threshold 1.5"
    out = images if case == "output_is_input" else tmp_path / "out"
    args = predict_args(setup_dir, out, *extra, **kwargs)
    if case == "no_weights":
        args.opts[-1] = ""
    from ms_rcnn.predict.cli import run

    with pytest.raises(InputError) as err:
        run(args)
    assert named in str(err.value)
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_weights_that_do_not_fit_are_refused(setup_dir, tmp_path):
    from detectron2.modeling import build_model

    from ms_rcnn.checkpoint import MSRCNNCheckpointer
    from ms_rcnn.predict.pipeline import InputError

    three = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=3)
    MSRCNNCheckpointer(build_model(three), str(tmp_path)).save("three")
    with pytest.raises(InputError, match=r"three.pth has 3 classes.*pred_shapes.*has 6"):
        run_predict(setup_dir, tmp_path / "a", weights=tmp_path / "three.pth")
    # Without class names, the strict loader names the class counts of file and config.
    with pytest.raises(InputError, match=r"three.pth.*3 classes.*NUM_CLASSES=6"):
        run_predict(setup_dir, tmp_path / "a", "DATASETS.TEST", "()", register=False,
                    weights=tmp_path / "three.pth")  # fmt: skip
    # A Mask R-CNN checkpoint has no MaskIoU head: an MS R-CNN config would rank by random IoUs.
    with pytest.raises(InputError, match=r"plain.pth.*absent.*maskiou_head"):
        run_predict(setup_dir, tmp_path / "b", weights=setup_dir / "plain.pth")


def test_config_errors_are_named(setup_dir, tmp_path):
    from ms_rcnn.predict.pipeline import InputError

    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="MODEL.DEVICE=cuda, but torch sees no GPU"):
            run_predict(setup_dir, tmp_path, "MODEL.DEVICE", "cuda")
    with pytest.raises(
        InputError, match=r"ms.pth.*has 6 classes but MODEL.ROI_HEADS.NUM_CLASSES=4"
    ):
        run_predict(setup_dir, tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", "4")
    with pytest.raises(InputError, match="MODEL.NO_SUCH_KEY"):
        run_predict(setup_dir, tmp_path, "MODEL.NO_SUCH_KEY", "1")


def test_corrupt_image_is_skipped_with_a_warning(setup_dir, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(setup_dir / "shapes" / "images" / "000002.png", folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with caplog.at_level("WARNING"):
        assert run_predict(setup_dir, tmp_path / "out", "--confidence-threshold", "0",
                           inputs=[str(folder)]) == 0  # fmt: skip
    assert any(str(folder / "bad.png") in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(tmp_path / "out")) == ["good.png", "predictions.json"]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert records and {r["file_name"] for r in records} == {str(folder / "good.png")}
    # Nothing readable at all: exit status 1.
    assert run_predict(setup_dir, tmp_path / "out2", inputs=[str(folder / "bad.png")]) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_input_is_named(setup_dir, tmp_path):
    from ms_rcnn.predict.pipeline import InputError

    locked = tmp_path / "locked.png"
    shutil.copy(setup_dir / "shapes" / "images" / "000001.png", locked)
    locked.chmod(0)
    with pytest.raises(InputError, match="locked.png: cannot be read"):
        run_predict(setup_dir, tmp_path / "out", inputs=[str(locked)])


def test_command_line_error_has_no_traceback(setup_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "predict.py"), "--config-file",
           str(setup_dir / "ms.yaml"), "--input", str(tmp_path / "missing.jpg"), "--output",
           str(tmp_path / "out"), "MODEL.WEIGHTS", str(setup_dir / "ms.pth")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"--input {tmp_path / 'missing.jpg'}: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
