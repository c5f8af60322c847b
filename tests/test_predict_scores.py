"""predictions.json scored the way the model ranks, checked with pycocotools against
MaskScoringCOCOEvaluator on a trained tiny model; the class-score cut predict applies early is
kept only where it cannot drop a detection the ranking keeps."""

import contextlib
import io
import json
import random

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from predict_helpers import model_outputs, run_predict

TRAINED_DATASET = "pred_trained_shapes"


def train_tiny(cfg, iterations):
    """A few SGD steps on cfg.DATASETS.TRAIN, seeded (sampler, flips, weights)."""
    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = build_model(cfg)
    size = len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))
    loader = iter(build_detection_train_loader(cfg, sampler=TrainingSampler(size, seed=0)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage(0) as storage:
        for step in range(iterations):
            for group in optimizer.param_groups:  # linear warmup: from scratch it diverges without
                group["lr"] = 0.01 * min(1.0, (step + 1) / 20)
            loss = sum(model(next(loader)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            storage.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MS R-CNN trained 200 steps on 4 generated 64x64 images (about 15 s), evaluated
    on the same images: enough for a segm AP whose ranking by mask_scores differs from the
    ranking by class scores."""
    from ms_rcnn.checkpoint import MSRCNNCheckpointer
    from ms_rcnn.data.synthetic import generate_synthetic_dataset
    from ms_rcnn.data.user_datasets import register_coco_datasets

    base = tmp_path_factory.mktemp("trained")
    json_file = generate_synthetic_dataset(str(base), "shapes", num_images=4, seed=3,
                                           image_size=64, max_instances=3)  # fmt: skip
    images = str(base / "shapes" / "images")
    register_coco_datasets([(TRAINED_DATASET, json_file, images)])
    cfg = tiny_cfg("MaskScoringROIHeads", mask_format="bitmask", num_classes=6)
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
    cfg.MODEL.RESNETS.NORM = "BN"  # batch statistics: trains from random weights
    cfg.MODEL.FPN.NORM = ""
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASKIOU_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # what predict --confidence-threshold 0 uses
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (TRAINED_DATASET,)
    cfg.SOLVER.IMS_PER_BATCH = 4
    model = train_tiny(cfg, 200)
    MSRCNNCheckpointer(model, str(base)).save("model")
    (base / "config.yaml").write_text(cfg.dump())
    return base, cfg, model, json_file, images


def evaluator_results(cfg, model, segm_score_field):
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator

    evaluator = build_ms_rcnn_evaluator(
        cfg, TRAINED_DATASET, distributed=False, segm_score_field=segm_score_field
    )
    loader = build_detection_test_loader(cfg, TRAINED_DATASET)
    return inference_on_dataset(model, loader, evaluator)


def pycocotools_ap(json_file, records, iou_type, score_field="score"):
    """COCO AP (in %) of `records` ranked by `score_field`, with pycocotools' own COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        dt = gt.loadRes([{**r, "score": r[score_field]} for r in records])
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100 * ev.stats[0]


def test_predictions_json_gives_the_evaluators_segm_and_box_ap(trained, tmp_path):
    """pycocotools on predictions.json (`score`, the ranking score) gives the evaluator's segm
    AP; with `class_score` as the score, its box AP. Today `score` is the class score: the segm
    AP of Mask R-CNN's ranking."""
    base, cfg, model, json_file, images = trained
    by_mask = evaluator_results(cfg, model, "mask_scores")
    by_class = evaluator_results(cfg, model, "scores")
    segm, box = by_mask["segm"]["AP"], by_mask["bbox"]["AP"]
    assert segm > 1
    # Where the ranking changes the AP, the check below also tells `score` from `class_score`.
    # On the compiled-main CI build the tiny model's two rankings gave the same segm AP (2.39),
    # so there the test checks the equality only (noted as open in the session's note).
    ranking_matters = abs(segm - by_class["segm"]["AP"]) > 0.1

    out = tmp_path / "out"
    status = run_predict(base, out, "--confidence-threshold", "0", "--register-coco",
                         TRAINED_DATASET, json_file, images, "DATASETS.TEST",
                         f"('{TRAINED_DATASET}',)", config=base / "config.yaml",
                         weights=base / "model.pth", inputs=[images], register=False)  # fmt: skip
    assert status == 0
    records = json.loads((out / "predictions.json").read_text())
    assert pycocotools_ap(json_file, records, "segm") == pytest.approx(segm, abs=0.05)
    if ranking_matters:  # the class score ranks masks otherwise: `score` is not it
        by_class_score = pycocotools_ap(json_file, records, "segm", "class_score")
        assert by_class_score != pytest.approx(segm, abs=0.05)
    assert pycocotools_ap(json_file, records, "bbox", "class_score") == pytest.approx(box, abs=0.05)
    for r in records:
        assert r["score"] == pytest.approx(r["mask_score"])
        assert r["mask_score"] == pytest.approx(r["class_score"] * r["pred_maskiou"], abs=1e-6)


# ---------------------------------------------------------------- 4. the early class cut


@pytest.fixture
def unclamped(predict_setup, tmp_path):
    """The tiny MS R-CNN with CLAMP_PREDICTION False (as both converted-weights configs) and a
    MaskIoU head that predicts 1.5 everywhere: each mask score is 1.5x its class score."""
    checkpoint = torch.load(predict_setup / "ms.pth", map_location="cpu", weights_only=False)
    state = checkpoint["model"]
    state["roi_heads.maskiou_head.predictor.weight"].zero_()
    state["roi_heads.maskiou_head.predictor.bias"].fill_(1.5)
    weights = tmp_path / "unclamped.pth"
    torch.save(checkpoint, weights)
    config = tmp_path / "unclamped.yaml"
    text = (predict_setup / "ms.yaml").read_text()
    config.write_text(text.replace("CLAMP_PREDICTION: true", "CLAMP_PREDICTION: false"))
    assert "CLAMP_PREDICTION: false" in config.read_text()
    return config, weights


def test_an_unclamped_iou_keeps_what_ranks_above_the_threshold(predict_setup, unclamped, tmp_path):
    """A class score below the threshold with a predicted IoU above 1 ranks above it: predict
    must keep it (today the box head drops it, its class cut raised to the threshold)."""
    config, weights = unclamped
    images = sorted((predict_setup / "shapes" / "images").glob("*.png"))
    # The model's own outputs at its config's class cut (0.05), computed without predict.
    expected = model_outputs(predict_setup, "ms", images, score_thresh=0.05, config=config,
                             weights=weights)  # fmt: skip
    scores = torch.cat([o.scores for o in expected.values()])
    mask_scores = torch.cat([o.mask_scores for o in expected.values()])
    assert torch.allclose(mask_scores, 1.5 * scores)
    threshold = float(mask_scores.median())
    assert bool(((scores < threshold) & (mask_scores > threshold)).any())  # the case at stake

    out = tmp_path / "out"
    assert run_predict(predict_setup, out, "--confidence-threshold", str(threshold),
                       config=config, weights=weights) == 0  # fmt: skip
    records = json.loads((out / "predictions.json").read_text())
    for path in images:
        inst = expected[str(path)]
        kept = sorted(inst.mask_scores[inst.mask_scores > threshold].tolist(), reverse=True)
        mine = [r["score"] for r in records if r["file_name"] == str(path)]
        assert mine == pytest.approx(kept, abs=1e-5), path


def test_the_early_cut_stays_where_it_is_exact(predict_setup, unclamped):
    from ms_rcnn.predict.pipeline import predict_config

    config, _ = unclamped
    clamped = predict_config(str(predict_setup / "ms.yaml"), [], 0.6)
    plain = predict_config(str(predict_setup / "plain.yaml"), [], 0.6)
    assert clamped.MODEL.ROI_HEADS.SCORE_THRESH_TEST == plain.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    assert clamped.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.6
    assert predict_config(str(config), [], 0.6).MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05
    assert predict_config(str(config), [], 0.01).MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.01
