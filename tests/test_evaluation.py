"""MaskScoringCOCOEvaluator, calibration report and same-weights ablation on a hand-made dataset.

Expected numbers come from the stock COCOEvaluator, numpy and hand computation, never from the
code under test.
"""

import json
import math
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


def read_json(path):
    with open(path) as f:
        return json.load(f)


H = W = 64
CAT_A, CAT_B = 1, 3  # non-contiguous dataset ids -> contiguous 0, 1

# (image_id, dataset category, (y0, y1, x0, x1), iscrowd)
GT = [
    (1, CAT_A, (10, 40, 10, 40), 0),  # "A1"
    (1, CAT_B, (5, 20, 45, 60), 0),  # "B1"
    (2, CAT_A, (20, 50, 15, 45), 0),  # "A2"
    (2, CAT_A, (0, 10, 0, 64), 1),  # crowd region: never a calibration match
    (3, CAT_B, (30, 60, 30, 60), 0),  # "B2"
    (3, CAT_A, (0, 20, 0, 20), 0),  # "A3"
    (3, CAT_A, (0, 20, 25, 50), 0),  # "A4"
]
CONTIGUOUS = {CAT_A: 0, CAT_B: 1}


def rect(y0, y1, x0, x1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask):
    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("utf-8")
    return r


@pytest.fixture
def dataset(tmp_path):
    """Register the hand-made dataset under a unique name; returns (name, json path)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    anns = []
    for i, (img, cat, (y0, y1, x0, x1), crowd) in enumerate(GT):
        m = rect(y0, y1, x0, x1)
        anns.append(
            {
                "id": i + 1,
                "image_id": img,
                "category_id": cat,
                "segmentation": rle(m),
                "area": float(m.sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": crowd,
            }
        )
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)],
        "annotations": anns,
        "categories": [{"id": CAT_A, "name": "a"}, {"id": CAT_B, "name": "b"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    name = f"msrcnn_eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    # Loading the dataset sets thing_dataset_id_to_contiguous_id, as a test data loader does.
    DatasetCatalog.get(name)
    return name, str(path)


def make_outputs(dets, with_ms=True, dtype=torch.float32):
    """dets: (image_id, dataset category, mask, score, pred_maskiou) -> (inputs, outputs)."""
    from detectron2.structures import Boxes, Instances

    inputs, outputs = [], []
    for img in (1, 2, 3):
        mine = [d for d in dets if d[0] == img]
        inst = Instances((H, W))
        boxes = []
        for _, _, m, _, _ in mine:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([d[3] for d in mine], dtype=dtype)
        inst.pred_classes = torch.tensor([CONTIGUOUS[d[1]] for d in mine], dtype=torch.long)
        masks = np.stack([d[2] for d in mine]) if mine else np.zeros((0, H, W), dtype=bool)
        inst.pred_masks = torch.from_numpy(masks)
        if with_ms:
            inst.pred_maskiou = torch.tensor([d[4] for d in mine], dtype=dtype)
            inst.mask_scores = inst.scores * inst.pred_maskiou
        inputs.append({"image_id": img, "height": H, "width": W})
        outputs.append({"instances": inst})
    return inputs, outputs


def ranking_dets():
    """Perfect masks for every GT but A1; on A1 a good mask with a low class score and a bad
    mask (IoU 0.14) with a high class score but a low predicted IoU."""
    dets = [(img, c, rect(*b), 0.95, 0.95) for img, c, b, crowd in GT if not crowd]
    del dets[0]
    dets.insert(0, (1, CAT_A, rect(10, 40, 10, 40), 0.6, 0.95))  # good
    dets.insert(1, (1, CAT_A, rect(25, 55, 25, 55), 0.9, 0.3))  # bad
    return dets


def calibration_dets():
    return ranking_dets() + [
        (3, CAT_A, rect(0, 20, 10, 40), 0.7, 0.4),  # overlaps A3 (IoU 1/4) and A4 (3/8): best wins
        (2, CAT_B, rect(20, 50, 15, 45), 0.5, 0.8),  # no class-B GT in image 2
        (2, CAT_A, rect(0, 8, 0, 30), 0.4, 0.6),  # only on the crowd region
        (1, CAT_B, rect(10, 25, 40, 60), 0.3, 0.5),  # partial overlap with B1
    ]


def brute_true_iou(img, cat, mask):
    best = 0.0
    for gimg, gcat, box, crowd in GT:
        if gimg == img and gcat == cat and not crowd:
            g = rect(*box)
            best = max(best, (mask & g).sum() / (mask | g).sum())
    return best


def brute_rank(v):
    """Average ranks by definition: #smaller + (#equal + 1) / 2."""
    v = np.asarray(v, dtype=float)
    return np.array([(v < a).sum() + ((v == a).sum() + 1) / 2 for a in v])


def run(evaluator, dets, **kwargs):
    inputs, outputs = make_outputs(dets, **kwargs)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def stock(name, out=None):
    from detectron2.evaluation import COCOEvaluator

    return COCOEvaluator(name, output_dir=out, use_fast_impl=False)


def ms(name, out=None, **kwargs):
    from ms_rcnn.evaluation import MaskScoringCOCOEvaluator

    return MaskScoringCOCOEvaluator(name, output_dir=out, **kwargs)


def same(a, b):
    """Dict equality where NaN equals NaN."""
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k], k


def test_segm_ranked_by_mask_scores_bbox_unchanged(dataset):
    name, _ = dataset
    ours = run(ms(name), ranking_dets())
    ref = run(stock(name), ranking_dets())
    # By class score the bad mask outranks the good one on A1: class A has precision 0.8 past
    # recall 3/4 -> AP_A = (76 + 25 * 0.8) / 101; class B is perfect.
    assert ref["segm"]["AP"] == pytest.approx(100 * (96 / 101 + 1) / 2)
    # By mask score the good mask comes first: every class is perfect.
    assert ours["segm"]["AP"] == pytest.approx(100.0)
    same(ours["bbox"], ref["bbox"])
    # Ranking by the class score is exactly the stock evaluator.
    same(run(ms(name, segm_score_field="scores"), ranking_dets())["segm"], ref["segm"])


def test_baseline_matches_stock_exactly(dataset, tmp_path):
    name, _ = dataset
    ours = run(ms(name, str(tmp_path / "ms")), ranking_dets(), with_ms=False)
    ref = run(stock(name, str(tmp_path / "stock")), ranking_dets(), with_ms=False)
    assert set(ours) == {"bbox", "segm", "boundary", "calibration"}
    same(ours["bbox"], ref["bbox"])
    same(ours["segm"], ref["segm"])
    name_json = "coco_instances_results.json"
    assert (tmp_path / "ms" / name_json).read_text() == (tmp_path / "stock" / name_json).read_text()
    assert set(ours["calibration"]) == {"num_detections", "num_matched", "mean_true_iou"} | {
        "pearson_scores",
        "spearman_scores",
    }
    plain = run(ms(name, calibration=False, boundary=False), ranking_dets(), with_ms=False)
    assert list(plain) == list(ref)


def test_segm_only_task_and_results_file(dataset, tmp_path):
    name, _ = dataset
    out = str(tmp_path)
    res = run(ms(name, out, tasks=("segm",)), ranking_dets())
    assert set(res) == {"segm", "boundary", "calibration"}
    assert res["segm"]["AP"] == pytest.approx(100.0)
    saved = read_json(os.path.join(out, "coco_instances_results.json"))
    # The file keeps the classification score as "score" and the extra fields beside it.
    assert [d["score"] for d in saved[:2]] == pytest.approx([0.6, 0.9])
    assert [d["mask_score"] for d in saved[:2]] == pytest.approx([0.6 * 0.95, 0.9 * 0.3])
    assert {d["category_id"] for d in saved} == {CAT_A, CAT_B}


def test_calibration_against_brute_force(dataset, tmp_path):
    from detectron2.evaluation import print_csv_format
    from detectron2.evaluation.testing import flatten_results_dict

    from ms_rcnn.analysis.ablation import load_coco_gt
    from ms_rcnn.evaluation import collect_calibration_data

    name, gt_json = dataset
    dets = calibration_dets()
    out = str(tmp_path)
    res = run(ms(name, out, distributed=True), dets, dtype=torch.float64)

    # Per detection: pycocotools RLE IoU == numpy IoU on the full masks, same order as the dets.
    saved = read_json(os.path.join(out, "coco_instances_results.json"))
    data = collect_calibration_data(saved, load_coco_gt(gt_json))
    order = [d for img in (1, 2, 3) for d in dets if d[0] == img]
    truth = np.array([brute_true_iou(d[0], d[1], d[2]) for d in order])
    np.testing.assert_allclose(data.true_iou, truth, rtol=0, atol=1e-12)
    assert truth[[i for i, d in enumerate(order) if d[3] == 0.7]] == pytest.approx([3 / 8])

    matched = truth > 0
    score = np.array([d[3] for d in order])
    piou = np.array([d[4] for d in order])
    cal = res["calibration"]
    assert cal["num_detections"] == len(dets) and cal["num_matched"] == matched.sum() == 9
    assert cal["pearson_scores"] == pytest.approx(np.corrcoef(score[matched], truth[matched])[0, 1])
    msc = (score * piou)[matched]
    assert cal["pearson_mask_scores"] == pytest.approx(np.corrcoef(msc, truth[matched])[0, 1])

    want = np.corrcoef(brute_rank(piou[matched]), brute_rank(truth[matched]))[0, 1]
    assert cal["spearman_pred_maskiou"] == pytest.approx(want)
    assert cal["mae_pred_maskiou"] == pytest.approx(np.abs(piou - truth)[matched].mean())
    assert cal["mae_pred_maskiou_all"] == pytest.approx(np.abs(piou - truth).mean())

    on_disk = read_json(os.path.join(out, "calibration.json"))
    assert on_disk == pytest.approx(cal)
    assert os.path.getsize(os.path.join(out, "maskiou_calibration.png")) > 1000
    # Detectron2's tooling accepts the results: copypaste printing and EvalHook's float().
    print_csv_format(res)
    flat = {k: float(v) for k, v in flatten_results_dict(res).items()}
    assert all(math.isfinite(v) for k, v in flat.items() if k.startswith("calibration/"))


def test_perfect_predictor(dataset, tmp_path):
    name, _ = dataset
    dets = [(img, c, m, s, brute_true_iou(img, c, m)) for img, c, m, s, _ in calibration_dets()]
    cal = run(ms(name, str(tmp_path)), dets, dtype=torch.float64)["calibration"]
    assert cal["mae_pred_maskiou"] == pytest.approx(0.0, abs=1e-12)
    assert cal["spearman_pred_maskiou"] == pytest.approx(1.0)
    assert cal["pearson_pred_maskiou"] == pytest.approx(1.0)


@pytest.mark.parametrize("tasks", [None, ("bbox", "segm")])
def test_zero_detections(dataset, tmp_path, tasks):
    from detectron2.evaluation import print_csv_format

    name, _ = dataset
    out = str(tmp_path)
    res = run(ms(name, out, tasks=tasks), [])
    assert math.isnan(res["bbox"]["AP"])
    assert res["calibration"] == {"num_detections": 0.0, "num_matched": 0.0}
    print_csv_format(res)
    on_disk = read_json(os.path.join(out, "calibration.json"))
    assert on_disk["num_matched"] == 0 and on_disk["pearson_scores"] is None
    assert os.path.isfile(os.path.join(out, "maskiou_calibration.png"))


def as_on_a_build_without_compiled_ops(monkeypatch):
    """Make the evaluator decide as on a Detectron2 without compiled ops (the stand-in build,
    or main built without them), whatever this build has: the fallbacks are tested everywhere."""
    import ms_rcnn.evaluation.cocoeval_backend as backend

    monkeypatch.setattr(backend, "compiled_coco_eval_available", lambda: False)
    return backend


def test_without_any_fast_cocoeval_falls_back_with_a_log_line(dataset, caplog, monkeypatch):
    backend = as_on_a_build_without_compiled_ops(monkeypatch)
    monkeypatch.setattr(backend, "faster_coco_eval_available", lambda: False)
    with caplog.at_level("INFO", logger="ms_rcnn.evaluation.coco_evaluation"):
        evaluator = ms(dataset[0], use_fast_impl=True)
    assert evaluator._use_fast_impl is False
    assert "backend: pycocotools" in caplog.text and "no compiled ops" in caplog.text
    assert "use_fast_impl=False" in caplog.text
    with pytest.raises(ValueError, match="segm_score_field"):
        ms(dataset[0], segm_score_field="nope")


def test_backend_follows_this_build_and_gives_the_official_numbers(dataset, caplog):
    """On this very build: Detectron2's compiled COCOeval_opt where the build has compiled
    ops, else faster-coco-eval (a dev extra); the log names it and why, and the numbers are
    pycocotools' own."""
    from detectron2.evaluation import coco_evaluation as d2

    from ms_rcnn.env import detectron2_build

    name, _ = dataset
    compiled = detectron2_build()["ops"] == "compiled"
    with caplog.at_level("INFO", logger="ms_rcnn.evaluation.coco_evaluation"):
        fast = ms(name, use_fast_impl=True)
    expected = "detectron2" if compiled else "faster-coco-eval"
    assert fast._coco_backend == expected and fast._use_fast_impl
    assert f"COCO evaluation backend: {expected} (" in caplog.text
    assert ("Detectron2 has compiled ops" in caplog.text) == compiled
    if compiled:  # the real thing, not a stand-in: Detectron2's C++ COCOeval
        assert d2.COCOeval_opt.__module__.startswith("detectron2.")
        assert d2.COCOeval_opt is not d2.COCOeval
    with caplog.at_level("INFO", logger="ms_rcnn.evaluation.coco_evaluation"):
        official = run(ms(name, use_fast_impl=False), ranking_dets())
    assert "backend: pycocotools (use_fast_impl=False asks" in caplog.text
    ours = run(fast, ranking_dets())
    same(ours["bbox"], official["bbox"])
    same(ours["segm"], official["segm"])


def test_faster_coco_eval_backend_gives_the_official_numbers(dataset, caplog, monkeypatch):
    pytest.importorskip("faster_coco_eval")
    from detectron2.evaluation import coco_evaluation as d2

    as_on_a_build_without_compiled_ops(monkeypatch)
    name, _ = dataset
    original = d2.COCOeval_opt
    with caplog.at_level("INFO", logger="ms_rcnn.evaluation.coco_evaluation"):
        fast = ms(name, use_fast_impl=True)
    assert "backend: faster-coco-eval" in caplog.text and fast._use_fast_impl
    seen = []
    monkey = type(fast)._eval_ranked_predictions

    def spy(self, *args):
        seen.append(d2.COCOeval_opt.__name__)
        return monkey(self, *args)

    type(fast)._eval_ranked_predictions = spy
    try:
        ours = run(fast, ranking_dets())
    finally:
        type(fast)._eval_ranked_predictions = monkey
    assert seen == ["FasterCOCOeval"] and d2.COCOeval_opt is original  # swapped, then restored
    official = run(ms(name, use_fast_impl=False), ranking_dets())
    same(ours["bbox"], official["bbox"])
    same(ours["segm"], official["segm"])


def as_on_detectron2_main_without_compiled_ops(monkeypatch):
    """Make v0.6's COCOEvaluator decide like Detectron2 main's does without `_C`.

    Main imports `COCOeval_opt` in a try block and, when that fails, binds the name to
    pycocotools' `COCOeval`; its `__init__` then turns `use_fast_impl` off whenever
    `COCOeval_opt is COCOeval`, logging "Fast COCO eval is not built". Evaluation reads the
    module's `COCOeval_opt` when `_use_fast_impl` is on, in both versions.
    """
    from detectron2.evaluation import COCOEvaluator
    from detectron2.evaluation import coco_evaluation as d2

    monkeypatch.setattr(d2, "COCOeval_opt", d2.COCOeval)
    v06_init = COCOEvaluator.__init__

    def main_init(self, *args, use_fast_impl=True, **kwargs):
        if use_fast_impl and d2.COCOeval_opt is d2.COCOeval:
            use_fast_impl = False
        v06_init(self, *args, use_fast_impl=use_fast_impl, **kwargs)

    monkeypatch.setattr(COCOEvaluator, "__init__", main_init)


def test_faster_coco_eval_backend_applies_on_detectron2_main(dataset, monkeypatch):
    pytest.importorskip("faster_coco_eval")
    import ms_rcnn.evaluation.cocoeval_backend as backend

    name, _ = dataset
    official = run(ms(name, use_fast_impl=False), ranking_dets())
    reference = run(stock(name), ranking_dets())

    as_on_detectron2_main_without_compiled_ops(monkeypatch)
    as_on_a_build_without_compiled_ops(monkeypatch)
    # The stock evaluator now falls back, as main's does ...
    assert stock(name)._use_fast_impl is False
    # ... and ours must still evaluate with faster-coco-eval, giving the official numbers.
    used = []
    faster = backend.faster_cocoeval_class()

    class Recording(faster):
        def __init__(self, coco_gt=None, coco_dt=None, iou_type="segm"):
            used.append(iou_type)
            super().__init__(coco_gt, coco_dt, iou_type)

    monkeypatch.setattr(backend, "faster_cocoeval_class", lambda: Recording)
    ours = run(ms(name, use_fast_impl=True), ranking_dets())
    assert sorted(used) == ["bbox", "segm"]
    same(ours["bbox"], official["bbox"])
    same(ours["segm"], official["segm"])
    same(ours["bbox"], reference["bbox"])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_cocoeval_equals_pycocotools_on_random_data(iou_type):
    """Twelve summary numbers and the whole precision/recall arrays, on 30 random images with
    crowd GT, several categories and overlapping detections."""
    pytest.importorskip("faster_coco_eval")
    import contextlib
    import io

    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ms_rcnn.evaluation.cocoeval_backend import faster_cocoeval_class

    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for img_id in range(1, 31):
        images.append({"id": img_id, "height": 64, "width": 80})
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 50, 2)
            w, h = rng.uniform(3, 30, 2)
            m = np.zeros((64, 80), np.uint8, order="F")
            m[int(y) : int(y + h), int(x) : int(x + w)] = 1
            rle = mask_util.encode(m)
            rle["counts"] = rle["counts"].decode()
            cat = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": float(m.sum()), "segmentation": rle,
                         "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 3, 4)
                dm = np.zeros((64, 80), np.uint8, order="F")
                y0, x0 = max(int(y + j[1]), 0), max(int(x + j[0]), 0)
                dm[y0 : int(y + h + j[3]), x0 : int(x + w + j[2])] = 1
                drle = mask_util.encode(dm)
                drle["counts"] = drle["counts"].decode()
                dets.append({"image_id": img_id, "category_id": cat if rng.random() < 0.8 else 1,
                             "bbox": [x + j[0], y + j[1], w, h], "segmentation": drle,
                             "score": float(rng.random())})  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in (1, 2, 3)]}  # fmt: skip
        gt.createIndex()
        results = []
        for cls in (COCOeval, faster_cocoeval_class()):
            e = cls(gt, gt.loadRes([dict(d) for d in dets]), iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
            results.append(e)
    official, fast = results
    np.testing.assert_allclose(fast.stats[:12], official.stats, rtol=0, atol=1e-12)
    for key in ("precision", "recall"):
        np.testing.assert_allclose(fast.eval[key], official.eval[key], rtol=0, atol=1e-12)


def test_build_from_config(dataset):
    from conftest import tiny_cfg

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator

    cfg = tiny_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    evaluator = build_ms_rcnn_evaluator(cfg, dataset[0])
    assert evaluator._tasks == ("bbox", "segm")
    assert run(evaluator, ranking_dets())["segm"]["AP"] == pytest.approx(100.0)


@pytest.fixture
def one_object_dataset(tmp_path):
    """One 64x64 image with one object, the square rect(30, 60, 30, 60)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    m = rect(30, 60, 30, 60)
    ann = {"id": 1, "image_id": 1, "category_id": CAT_A, "segmentation": rle(m),
           "area": float(m.sum()), "bbox": [30, 30, 30, 30], "iscrowd": 0}  # fmt: skip
    coco = {
        "images": [{"id": 1, "file_name": "1.jpg", "height": H, "width": W}],
        "annotations": [ann],
        "categories": [{"id": CAT_A, "name": "a"}, {"id": CAT_B, "name": "b"}],
    }
    path = tmp_path / "one.json"
    path.write_text(json.dumps(coco))
    name = f"msrcnn_eval_one_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    DatasetCatalog.get(name)
    return name


@pytest.mark.parametrize("max_dets", [None, 150])
def test_ap_at_cocos_standard_max_dets(one_object_dataset, max_dets):
    # 100 false positives outscore the one true positive, which comes 101st. COCO's standard
    # maxDets 100 never sees it: AP 0 and AR@100 0, whatever TEST.DETECTIONS_PER_IMAGE is.
    # At maxDets 150 it is found at precision 1/101 and recall 1: AP = 100/101 at every IoU
    # threshold, in percent.
    from conftest import tiny_cfg

    from ms_rcnn.evaluation import build_ms_rcnn_evaluator

    cfg = tiny_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = 150
    fp = [(1, CAT_A, rect(0, 10, 0, 10), 0.9, 1.0)] * 100
    tp = [(1, CAT_A, rect(30, 60, 30, 60), 0.5, 1.0)]
    inputs, outputs = make_outputs(fp + tp)
    evaluator = build_ms_rcnn_evaluator(
        cfg, one_object_dataset, max_dets_per_image=max_dets, distributed=False
    )
    evaluator.reset()
    evaluator.process(inputs[:1], outputs[:1])
    results = evaluator.evaluate()
    expected = 0.0 if max_dets is None else 100 / 101
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(expected, abs=1e-9), task
        assert results[task]["AP50"] == pytest.approx(expected, abs=1e-9), task


def test_average_ranks_ties_and_degenerate_correlations():
    from ms_rcnn.evaluation.calibration import average_ranks, pearson, spearman

    np.testing.assert_array_equal(average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(average_ranks([3, 1, 3, 3]), [3, 1, 3, 3])
    assert pearson([1.0], [2.0]) is None
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert spearman([], []) is None
    assert spearman([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.floats(-10, 10, allow_nan=False)), min_size=3, max_size=12
    )
)
def test_spearman_matches_definition(pairs):
    from ms_rcnn.evaluation.calibration import pearson, spearman

    x = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs], dtype=float)

    rx, ry = brute_rank(x), brute_rank(y)
    if rx.std() == 0 or ry.std() == 0:
        assert spearman(x, y) is None
    else:
        assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-9)
    if x.std() > 0 and y.std() > 1e-6:
        assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
