"""ms_rcnn.analysis.compare: loading results, mean ± std per arm, deltas, markdown and bar chart."""

import json
import os

import pytest


def read_json(path):
    with open(path) as f:
        return json.load(f)


def results(box, mask, calib=None):
    segm = {"AP": mask, "AP50": mask + 20, "AP75": mask - 1, "APs": 10.0, "APm": float("nan")}
    segm["APl"] = mask + 10
    boundary = {"AP": mask / 2, "AP50": mask, "AP75": float("nan"), "AP-a": 3.0}
    out = {"bbox": {"AP": box, "AP50": 50.0, "AP-a": 1.0}, "segm": segm, "boundary": boundary}
    if calib is not None:
        out["calibration"] = calib
    return out


BASE = [
    results(30.0, 28.0, {"num_matched": 100, "pearson_scores": 0.40}),
    results(31.0, 29.0, {"num_matched": 110, "pearson_scores": 0.42}),
]
MS = [
    results(30.5, 29.5, {"num_matched": 100, "pearson_scores": 0.40, "mae_pred_maskiou": 0.10}),
    results(30.9, 30.5, {"num_matched": 104, "pearson_scores": 0.44, "mae_pred_maskiou": 0.14}),
]


@pytest.fixture
def runs(tmp_path):
    """Four runs in the three accepted forms: a folder, an eval_results.json, a metrics.json."""
    from ms_rcnn.evaluation import save_eval_results

    paths = {}
    for arm, arm_results in (("base", BASE), ("ms", MS)):
        for seed, res in enumerate(arm_results, 1):
            out = tmp_path / f"{arm}_s{seed}"
            if (arm, seed) == ("ms", 2):
                # Detectron2's metrics.json: JSON lines, the last eval record counts.
                flat = {f"{t}/{m}": v for t, d in res.items() for m, v in d.items()}
                stale = {**flat, "segm/AP": 0.0}
                out.mkdir()
                lines = [{"iteration": 9, "total_loss": 1.0}, {"iteration": 10, **stale}]
                lines += [{"iteration": 19, "total_loss": 0.5}, {"iteration": 20, **flat}]
                (out / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines))
                paths[arm, seed] = str(out)
            else:
                path = save_eval_results(res, str(out))
                paths[arm, seed] = str(out) if seed == 1 else path
    return paths


def test_load_eval_results_forms(runs, tmp_path):
    from ms_rcnn.analysis import load_eval_results
    from ms_rcnn.evaluation import save_eval_results

    saved = read_json(os.path.join(runs["base", 1], "eval_results.json"))
    assert saved["results"]["segm"]["APm"] is None  # NaN stored as null: strict JSON
    assert load_eval_results(runs["ms", 2])["segm"]["AP"] == 30.5
    assert load_eval_results(runs["ms", 2])["calibration"]["mae_pred_maskiou"] == 0.14

    nested = {"val_a": BASE[0], "val_b": MS[0]}
    path = save_eval_results(nested, str(tmp_path / "two"))
    assert load_eval_results(path, dataset="val_b")["bbox"]["AP"] == 30.5
    with pytest.raises(ValueError, match="several datasets"):
        load_eval_results(path)
    single = save_eval_results({"val_a": BASE[1]}, str(tmp_path / "one"))
    assert load_eval_results(single)["bbox"]["AP"] == 31.0


def test_table_means_stds_deltas(runs):
    from ms_rcnn.analysis import comparison_table, load_arms

    specs = [
        f"baseline={runs['base', 1]},{runs['base', 2]}",
        f"msrcnn={runs['ms', 1]}",
        f"msrcnn={runs['ms', 2]}",  # a repeated label adds to the arm
    ]
    arms = load_arms(specs)
    assert [(a.label, len(a.runs)) for a in arms] == [("baseline", 2), ("msrcnn", 2)]
    table, base = comparison_table(arms)
    assert base.label == "baseline"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert rows["metric"] == "| metric | baseline (n=2) | msrcnn (n=2) | Δ msrcnn |"
    # box AP: mean(30, 31) = 30.5, sample std 0.7071; mean(30.5, 30.9) = 30.7, std 0.2828
    assert rows["box AP"] == "| box AP | 30.50 ± 0.71 | 30.70 ± 0.28 | +0.20 |"
    assert rows["mask AP"] == "| mask AP | 28.50 ± 0.71 | 30.00 ± 0.71 | +1.50 |"
    assert rows["mask AP50"] == "| mask AP50 | 48.50 ± 0.71 | 50.00 ± 0.71 | +1.50 |"
    assert rows["mask APl"] == "| mask APl | 38.50 ± 0.71 | 40.00 ± 0.71 | +1.50 |"
    assert "mask APm" not in rows  # NaN in every run
    # Boundary AP = mask AP / 2 in these runs (one of them read from a metrics.json)
    assert rows["Boundary AP"] == "| Boundary AP | 14.25 ± 0.35 | 15.00 ± 0.35 | +0.75 |"
    assert rows["Boundary AP50"] == "| Boundary AP50 | 28.50 ± 0.71 | 30.00 ± 0.71 | +1.50 |"
    assert "Boundary AP75" not in rows
    assert rows["Pearson(scores, IoU)"] == (
        "| Pearson(scores, IoU) | 0.410 ± 0.014 | 0.420 ± 0.028 | +0.010 |"
    )
    assert rows["matched detections"] == (
        "| matched detections | 105.0 ± 7.1 | 102.0 ± 2.8 | -3.0 |"
    )
    assert rows["MAE(pred_maskiou) matched"] == (
        "| MAE(pred_maskiou) matched | n/a | 0.120 ± 0.028 | n/a |"
    )

    table, base = comparison_table(arms, baseline="msrcnn")
    assert base.label == "msrcnn"
    assert "| box AP | 30.70 ± 0.28 | 30.50 ± 0.71 | -0.20 |" in table
    with pytest.raises(KeyError):
        comparison_table(arms, baseline="nope")


def test_cli_prints_table_and_writes_png(runs, tmp_path, capsys):
    from ms_rcnn.analysis.cli import main

    png = tmp_path / "charts" / "cmp.png"
    argv = ["--run", f"base={runs['base', 1]},{runs['base', 2]}"]
    argv += ["--run", f"ms={runs['ms', 1]},{runs['ms', 2]}", "--png", str(png), "--per-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Baseline: base." in out
    assert "| mask AP | 28.50 ± 0.71 | 30.00 ± 0.71 | +1.50 |" in out
    assert f"| ms | {runs['ms', 2]} | 30.90 | 30.50 | 15.25 |" in out
    assert f"Bar chart written to {png}" in out
    assert png.stat().st_size > 1000


def test_cli_positional_runs_are_labelled_by_folder(runs, tmp_path, capsys):
    from ms_rcnn.analysis.cli import main

    png = tmp_path / "cmp.png"
    assert main([runs["base", 1], runs["ms", 1], "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| metric | base_s1 (n=1) | ms_s1 (n=1) | Δ ms_s1 |" in out
    assert "| box AP | 30.00 | 30.50 | +0.50 |" in out
    assert png.is_file()
