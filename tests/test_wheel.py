"""The wheel as users get it: built with `python -m build`, installed (not the checkout) into an
environment that has Detectron2, and used from a folder outside the repository through the
console commands, with model zoo names: generate data, train 2 iterations, evaluate, predict,
convert a synthetic official checkpoint, compare."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("ms-rcnn-train", "ms-rcnn-predict", "ms-rcnn-convert", "ms-rcnn-compare",
            "ms-rcnn-make-dataset", "ms-rcnn-demo")  # fmt: skip
TINY = [
    "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "1000",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(bin folder, env vars): a new venv that sees this environment's packages (torch,
    Detectron2) through a .pth line, with the freshly built wheel installed into it. Lines in a
    .pth added this way are plain paths: the checkout's editable-install hook is not run."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    venv = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "outer_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the outer environment's editable ms-rcnn is visible and must stay.
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
         "--disable-pip-version-check", str(wheels[0])],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MS_RCNN_DATASETS")}
    env["OMP_NUM_THREADS"] = "1"
    return {"bin": venv / "bin", "env": env, "wheel": wheels[0], "sdist": sdists[0],
            "site": site}  # fmt: skip


def run(wheel_env, cwd, *argv):
    exe = wheel_env["bin"] / argv[0]
    proc = subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True,
                          cwd=cwd, env=wheel_env["env"])  # fmt: skip
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_and_sdist_carry_the_configs_and_the_commands(wheel_env):
    names = set(zipfile.ZipFile(wheel_env["wheel"]).namelist())
    shipped = ("demo/ms_rcnn_R_18_demo.yaml", "demo/Base-Demo-CPU.yaml",
               "COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yaml",
               "PointRend/ms_rcnn_pointrend_R_50_FPN_1x.yaml",
               "lazy/ms_rcnn_R_50_FPN_1x.py")  # fmt: skip
    for config in shipped:
        assert f"ms_rcnn/model_zoo/configs/{config}" in names, config
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel_env["wheel"]).read(entry_points).decode()
    for command in COMMANDS:
        assert command in text
    shown = subprocess.run(
        [str(wheel_env["bin"] / "python"), "-m", "pip", "show", "-f", "ms-rcnn"],
        capture_output=True, text=True, env=wheel_env["env"],
    ).stdout  # fmt: skip
    assert f"Location: {wheel_env['site']}" in shown
    assert "ms_rcnn/model_zoo/configs/demo/ms_rcnn_R_18_demo.yaml" in shown


def test_commands_answer_version_and_help_with_an_example(wheel_env, tmp_path):
    for command in COMMANDS:
        version = run(wheel_env, tmp_path, command, "--version").stdout
        assert version.startswith("ms-rcnn 0.") and "detectron2 " in version, command
        helped = run(wheel_env, tmp_path, command, "--help").stdout
        assert "example" in helped and f"{command} --" in helped, command


@pytest.mark.slow
def test_train_predict_convert_compare_from_outside_the_checkout(wheel_env, tmp_path):
    py = str(wheel_env["bin"] / "python")
    where = subprocess.run(
        [py, "-c", "import ms_rcnn; print(ms_rcnn.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=wheel_env["env"],
    )  # fmt: skip
    assert where.stdout.strip().startswith(wheel_env["site"]), where.stdout + where.stderr

    run(wheel_env, tmp_path, "ms-rcnn-make-dataset", "--root", "data", "--name", "tiny",
        "--num-images", "4", "--seed", "3", "--image-size", "64")  # fmt: skip
    data = ["--register-coco", "tiny", "data/tiny/annotations.json", "data/tiny/images"]
    datasets = ["DATASETS.TRAIN", "('tiny',)", "DATASETS.TEST", "('tiny',)"]
    trained = run(wheel_env, tmp_path, "ms-rcnn-train", "--config-file",
                  "demo/ms_rcnn_R_18_demo.yaml", *data, *datasets, *TINY,
                  "OUTPUT_DIR", "out")  # fmt: skip
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Using model zoo config demo/ms_rcnn_R_18_demo.yaml" in log
    assert "detectron2 " in log and "ms-rcnn 0." in log
    assert (tmp_path / "out" / "model_final.pth").is_file()
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert "segm" in json.dumps(results), trained.stdout[-2000:]

    predicted = run(wheel_env, tmp_path, "ms-rcnn-predict", "--config-file", "out/config.yaml",
                    "--input", "data/tiny/images", "--output", "drawn",
                    "--confidence-threshold", "0",
                    "MODEL.WEIGHTS", "out/model_final.pth")  # fmt: skip
    records = json.loads((tmp_path / "drawn" / "predictions.json").read_text())
    assert records and all("mask_score" in r for r in records), predicted.stdout
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4

    sys.path.insert(0, str(ROOT / "tests"))
    from peer_checkpoints import peer_checkpoint

    peer, _ = peer_checkpoint("official")
    torch.save({"model": peer, "iteration": 90000}, tmp_path / "model_0090000.pth")
    converted = run(wheel_env, tmp_path, "ms-rcnn-convert", "--source", "maskrcnn-benchmark",
                    "model_0090000.pth", "converted.pth")  # fmt: skip
    assert "loads strictly into" in converted.stdout
    assert "ms-rcnn-train --config-file COCO-InstanceSegmentation/" in converted.stdout

    compared = run(wheel_env, tmp_path, "ms-rcnn-compare", "out", "--png", "cmp.png")
    assert "segm" in compared.stdout or "mask" in compared.stdout.lower()
