"""Nothing trained is lost: a run killed with SIGKILL resumes from its last checkpoint with the
same iteration, optimizer and LR schedule, and checkpoints are never seen half-written."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ms_rcnn.checkpoint import MSRCNNCheckpointer, atomic_torch_save

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "demo" / "ms_rcnn_R_18_demo.yaml"
MAX_ITER, PERIOD, STEP, BASE_LR, GAMMA = 40, 10, 25, 0.02, 0.1
# The tiny widths of tests/test_train_net.py, a schedule with one LR drop, frequent checkpoints.
OPTS = [
    "DATASETS.TRAIN", '("synthetic_shapes_tiny_train",)', "DATASETS.TEST", "()",
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", f"({STEP},)", "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
    "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.GAMMA", str(GAMMA),
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_MASKIOU_HEAD.CONV_DIM", "16", "MODEL.ROI_MASKIOU_HEAD.FC_DIM", "32",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def start(tmp_path, out, log, resume=False):
    env = dict(os.environ, MS_RCNN_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(CONFIG),
           *(["--resume"] if resume else []), *OPTS, "OUTPUT_DIR", str(out)]  # fmt: skip
    # Its own process group, so SIGKILL reaches the data-loader workers too.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)  # fmt: skip


def expected_lr(iteration):
    return BASE_LR * (GAMMA if iteration >= STEP else 1.0)


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    target = out / f"model_{2 * PERIOD - 1:07d}.pth"  # the second checkpoint: mid-way
    tag = out / "last_checkpoint"
    deadline = time.time() + 60
    with open(tmp_path / "run.log", "w") as log:
        proc = start(tmp_path, out, log)
        try:
            while not (target.is_file() and tag.is_file() and tag.read_text() == target.name):
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                assert time.time() < deadline, "no mid-way checkpoint within 60 s"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists()

    # Every checkpoint file left behind is whole (writes are atomic), and the tag names one.
    for path in out.glob("model_*.pth"):
        torch.load(path, map_location="cpu", weights_only=False)
    last = out / (out / "last_checkpoint").read_text()
    saved = torch.load(last, map_location="cpu", weights_only=False)
    it = saved["iteration"]
    assert it in (2 * PERIOD - 1, 3 * PERIOD - 1) and saved["trainer"]["iteration"] == it
    assert "_trainer" in saved["trainer"], "optimizer state not saved"

    check_trainer_loads(tmp_path, out, saved)

    with open(tmp_path / "resumed.log", "w") as log:
        proc = start(tmp_path, out, log, resume=True)
        try:
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = (tmp_path / "resumed.log").read_text()
    assert proc.returncode == 0, text[-3000:]
    assert f"Starting training from iteration {it + 1}" in text
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == MAX_ITER - 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    # The LR went on with the schedule: after the drop at STEP it is BASE_LR * GAMMA (a
    # restarted scheduler would be back at BASE_LR).
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    after = [r for r in records if r.get("iteration", -1) > it and "lr" in r]
    assert after and all(r["lr"] == pytest.approx(expected_lr(r["iteration"])) for r in after)
    assert max(r["iteration"] for r in after) == MAX_ITER - 1


def check_trainer_loads(tmp_path, out, saved):
    """The Trainer resuming in OUTPUT_DIR holds exactly the saved optimizer/scheduler state."""
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config
    from ms_rcnn.data import default_root, register_synthetic_datasets
    from ms_rcnn.engine import Trainer

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(OPTS + ["OUTPUT_DIR", str(out)])
    register_synthetic_datasets(str(tmp_path / "datasets"), force=True)
    try:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=True)
    finally:
        register_synthetic_datasets(default_root(), force=True)
    assert trainer.start_iter == saved["iteration"] + 1
    want = saved["trainer"]["_trainer"]["optimizer"]
    got = trainer.optimizer.state_dict()
    assert [g["lr"] for g in got["param_groups"]] == [g["lr"] for g in want["param_groups"]]
    assert want["state"] and got["state"].keys() == want["state"].keys()
    for k, state in want["state"].items():
        assert torch.equal(got["state"][k]["momentum_buffer"], state["momentum_buffer"])
    sched = saved["trainer"]["hooks"]["LRScheduler"]
    # The scheduler stepped after the saved iteration: it stands at the next one.
    assert trainer.scheduler.state_dict()["last_epoch"] == sched["last_epoch"] == trainer.start_iter
    model = trainer.model.state_dict()
    assert all(torch.equal(model[k], v) for k, v in saved["model"].items())


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save interrupted mid-write (here: an exception after half the bytes) leaves the old
    file and the tag as they were, and no temporary file."""
    model = torch.nn.Linear(2, 2)
    ckpt = MSRCNNCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def half_then_die(obj, f):
        f.write(b"\x80" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_die)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_atomic_save_keeps_the_usual_file_mode(tmp_path):
    """The temporary file is private (0600) when created; the checkpoint must not stay so."""
    umask = os.umask(0o022)
    try:
        atomic_torch_save({"x": 1}, str(tmp_path / "m.pth"))
        torch.save({"x": 1}, str(tmp_path / "plain.pth"))
    finally:
        os.umask(umask)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("m.pth") == mode("plain.pth") == 0o644


@pytest.mark.parametrize("proc", [True, False], ids=["proc_status", "no_proc"])
def test_atomic_save_never_changes_the_process_umask(tmp_path, monkeypatch, proc):
    """Setting the umask to 0 to read it, even for a moment, lets another thread create a
    world-writable file; the save must apply the umask without ever setting it."""
    import ms_rcnn.checkpoint as checkpoint

    old = os.umask(0o027)
    try:
        if not proc:  # e.g. macOS: no /proc/self/status to read the umask from
            monkeypatch.setattr(checkpoint, "_PROC_STATUS", str(tmp_path / "absent"))
            monkeypatch.setattr(checkpoint, "_UMASK_AT_IMPORT", 0o027)
        calls = []
        real_umask = os.umask
        monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real_umask(mask))
        atomic_torch_save({"x": 1}, str(tmp_path / "m.pth"))
        with open(tmp_path / "plain", "w"):
            pass
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert calls == []
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("m.pth") == mode("plain") == 0o640


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "model_0000009.pth"
    atomic_torch_save({"model": torch.nn.Linear(2, 2).state_dict()}, str(path))
    path.write_bytes(path.read_bytes()[:50])  # as a non-atomic writer killed mid-way leaves it
    with pytest.raises(RuntimeError, match="model_0000009.pth.*truncated"):
        MSRCNNCheckpointer(torch.nn.Linear(2, 2)).load(str(path))


def _main_branch_trainer_state(monkeypatch):
    """Give DefaultTrainer the state-dict methods of Detectron2 main (PR #3686), on v0.6 too.

    Main's DefaultTrainer saves its inner SimpleTrainer's state (the optimizer) under
    "_trainer" and, when loading, requires that key and loads it. These two functions have that
    behaviour (written from its description, not copied), so the suite reproduces main on the
    v0.6 that CI installs.
    """
    from detectron2.engine import DefaultTrainer, TrainerBase

    def state_dict(self):
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])  # KeyError without it

    monkeypatch.setattr(DefaultTrainer, "state_dict", state_dict, raising=False)
    monkeypatch.setattr(DefaultTrainer, "load_state_dict", load_state_dict, raising=False)


def _bare_trainer():
    """A Trainer with only what the state-dict logic touches (no model or data)."""
    from types import SimpleNamespace

    from ms_rcnn.engine import Trainer

    loaded = []
    trainer = object.__new__(Trainer)
    trainer._hooks = []
    trainer.iter = 0
    trainer._trainer = SimpleNamespace(
        load_state_dict=loaded.append, state_dict=lambda: {"optimizer": "saved state"}
    )
    return trainer, loaded


@pytest.mark.parametrize("detectron2_trainer", ["installed", "main-branch"])
def test_checkpoint_without_optimizer_state_resumes_with_a_warning(
    caplog, monkeypatch, detectron2_trainer
):
    """Checkpoints of Detectron2 v0.6's DefaultTrainer hold no optimizer state: resuming from
    one keeps the iteration and says that momentum restarts, with the parent class of either
    Detectron2 version (main's raised KeyError: '_trainer' through super())."""
    import logging

    if detectron2_trainer == "main-branch":
        _main_branch_trainer_state(monkeypatch)
    trainer, loaded = _bare_trainer()
    with caplog.at_level(logging.WARNING):
        trainer.load_state_dict({"iteration": 7})
    assert trainer.iter == 7 and loaded == []
    assert "no optimizer state" in caplog.text


@pytest.mark.parametrize("detectron2_trainer", ["installed", "main-branch"])
def test_optimizer_state_is_saved_and_loaded_exactly_once(monkeypatch, detectron2_trainer):
    """Our checkpoints (and main's plain DefaultTrainer's) hold the optimizer under "_trainer";
    resuming loads it once, not once in the parent and again here."""
    if detectron2_trainer == "main-branch":
        _main_branch_trainer_state(monkeypatch)
    trainer, loaded = _bare_trainer()
    trainer.iter = 4
    saved = trainer.state_dict()
    assert saved == {"iteration": 4, "_trainer": {"optimizer": "saved state"}}
    trainer.iter = 0
    trainer.load_state_dict({"iteration": 9, "_trainer": {"optimizer": "state"}})
    assert trainer.iter == 9 and loaded == [{"optimizer": "state"}]
