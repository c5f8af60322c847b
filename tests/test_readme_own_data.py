"""Every command of the README's "Train on your own data" section, run as written, in order.

Each runs in its own process, as the console command of this environment (`ms-rcnn-*`, put on
the PATH by installing ms-rcnn), from a scratch folder with no configs/ or tools/ in it: the
configs come from the model zoo. To keep the test short, options are appended (later ones win,
for argparse and for Detectron2's KEY VALUE overrides): a few images per dataset, and for
training a narrow model and a few iterations. Nothing in the commands themselves is changed.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_eval_results

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SECTION = re.search(r"^## Train on your own data\n(.*?)^## ", README, flags=re.M | re.S).group(1)
BLOCKS = re.findall(r"^```sh\n(.*?)^```$", SECTION, flags=re.M | re.S)

SMALL_DATASET = ["--num-images", "4"]
SHORT_TRAINING = [
    "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "1000", "DATALOADER.NUM_WORKERS", "0",
    # Multiples of 32: the demo configs use GroupNorm with 32 groups.
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]  # fmt: skip


def commands():
    """The section's commands: continuation lines joined, comments skipped, split like a shell."""
    found = []
    for block in BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(shlex.split(line))
    return found


COMMANDS = ("ms-rcnn-make-dataset", "ms-rcnn-train", "ms-rcnn-compare", "ms-rcnn-predict")


def test_section_covers_the_whole_path():
    used = [argv[0] for argv in commands()]
    assert set(used) == set(COMMANDS), used
    assert any("--eval-only" in argv for argv in commands())
    assert all("--register-coco" in argv for argv in commands() if argv[0] == "ms-rcnn-train")


@pytest.mark.slow
def test_every_command_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    for argv in commands():
        script = argv[0]
        extra = []
        if script == "ms-rcnn-make-dataset":
            extra = SMALL_DATASET
        elif script == "ms-rcnn-train" and "--eval-only" not in argv:
            extra = SHORT_TRAINING
        assert (bin_dir / script).is_file(), f"{script}: not installed in {bin_dir} (make setup)"
        cmd = [str(bin_dir / script), *argv[1:], *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
        log = proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{log}"
        if script == "ms-rcnn-compare":
            assert "shapes_ms" in proc.stdout and "mask AP" in proc.stdout, proc.stdout

    out = tmp_path / "output"
    for run in ("shapes_ms", "shapes_mask_rcnn", "shapes_ms_eval"):
        results = json.loads((out / run / "eval_results.json").read_text())
        assert "segm" in json.dumps(results), run
    # Evaluating the saved checkpoint again gives what the run measured when it ended.
    assert_same_eval_results(
        json.loads((out / "shapes_ms_eval" / "eval_results.json").read_text()),
        json.loads((out / "shapes_ms" / "eval_results.json").read_text()),
    )
    assert (out / "shapes_compare.png").is_file()
    val_images = sorted(p.name for p in (tmp_path / "datasets/shapes_val/images").iterdir())
    drawn = sorted(p.name for p in (out / "shapes_predictions").iterdir())
    assert drawn == sorted([*val_images, "predictions.json"])
    records = json.loads((out / "shapes_predictions" / "predictions.json").read_text())
    assert isinstance(records, list)
