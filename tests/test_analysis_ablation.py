"""ms_rcnn.analysis.ablation: saved predictions re-ranked by each score field, and its CLI."""

import json
import math
import os

import pytest
import test_evaluation

# The evaluator's helpers: the ablation must reproduce what the evaluator reported.
from test_evaluation import ms, ranking_dets, run, same, stock

dataset = test_evaluation.dataset  # the same fixture, collected in this module too


def test_ablation_reproduces_the_evaluators(dataset, tmp_path):
    from ms_rcnn.analysis import evaluate_with_score_field, load_predictions
    from ms_rcnn.analysis.ablation import load_coco_gt

    name, gt_json = dataset
    out = str(tmp_path)
    ours = run(ms(name, out), ranking_dets())
    ref = run(stock(name), ranking_dets())
    gt = load_coco_gt(gt_json)
    for path in ("coco_instances_results.json", "instances_predictions.pth"):
        preds = load_predictions(os.path.join(out, path), coco_gt=gt)
        by_mask = evaluate_with_score_field(preds, gt, "mask_scores")
        same(by_mask, {k: v for k, v in ours["segm"].items() if "-" not in k})
        same(evaluate_with_score_field(preds, gt, "scores"), {k: ref["segm"][k] for k in by_mask})
        by_mask = evaluate_with_score_field(preds, gt, "mask_scores", task="boundary")
        same(by_mask, {k: v for k, v in ours["boundary"].items() if "-" not in k})
    baseline_preds = [{k: v for k, v in d.items() if k != "mask_score"} for d in preds]
    with pytest.raises(KeyError):
        evaluate_with_score_field(baseline_preds, gt, "mask_scores")
    assert all(math.isnan(v) for v in evaluate_with_score_field([], gt, "scores").values())


def test_ablate_cli(dataset, tmp_path, capsys):
    from ms_rcnn.analysis.cli import main

    name, gt_json = dataset
    out = tmp_path / "run"
    run(ms(name, str(out)), ranking_dets())
    report = tmp_path / "ablation.json"
    argv = ["ablate", "--predictions", str(out), "--gt-json", gt_json, "--output", str(report)]
    capsys.readouterr()  # drop the evaluator's COCOeval prints
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # AP by class score: class A (96/101) and class B (1) averaged, as in the first test.
    by_score = f"{100 * (96 / 101 + 1) / 2:.2f}"
    assert f"| scores | {by_score} | {by_score} |" in lines[4]
    assert lines[5].startswith("| mask_scores | 100.00 |")
    assert lines[5].endswith(f"| +{100 - float(by_score):.2f} |")
    # Boundary AP: the rectangles on their GT are exact and the bad one misses under either
    # criterion, so the same two rankings give the same two figures.
    assert lines[8].startswith("| boundary ranked by | AP |")
    assert f"| scores | {by_score} | {by_score} |" in lines[10]
    assert lines[11].startswith("| mask_scores | 100.00 |")
    saved = json.loads(report.read_text())
    assert list(saved) == ["segm", "boundary"]
    assert list(saved["segm"]) == ["scores", "mask_scores", "pred_maskiou"]
    assert saved["segm"]["mask_scores"]["AP"] == pytest.approx(100.0)
    assert saved["boundary"]["mask_scores"]["AP"] == pytest.approx(100.0)

    argv += ["--tasks", "segm"]
    assert main(argv) == 0
    assert list(json.loads(report.read_text())) == ["segm"]
