"""mmdetection 3.x checkpoint files as mmengine's Runner writes them: the config text under
meta["cfg"] (2.x: meta["config"]) and, before publish_model.py strips them, pickled training
objects (message_hub) next to meta and state_dict."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from peer_checkpoints import peer_checkpoint

from ms_rcnn.conversion import ConversionError, convert_state_dict
from ms_rcnn.conversion.cli import main

# The parts of an mmengine `Config.pretty_text` the converter reads, laid out as mmengine
# prints them (nested dicts, one key per line); the real files were checked against mmdet 3.3's
# configs/ms_rcnn/*.py by scripts/check_mmdet_parity.py's setup.
PYTORCH_STYLE_CFG = textwrap.dedent(
    """\
    model = dict(
        backbone=dict(
            depth=50,
            norm_cfg=dict(requires_grad=True, type='BN'),
            style='pytorch',
            type='ResNet'),
        data_preprocessor=dict(
            bgr_to_rgb=True,
            mean=[123.675, 116.28, 103.53],
            pad_size_divisor=32,
            std=[58.395, 57.12, 57.375],
            type='DetDataPreprocessor'),
        type='MaskScoringRCNN')
    """
)
CAFFE_STYLE_CFG = (
    PYTORCH_STYLE_CFG.replace("style='pytorch'", "style='caffe'")
    .replace("bgr_to_rgb=True", "bgr_to_rgb=False")
    .replace("mean=[123.675, 116.28, 103.53]", "mean=[103.53, 116.28, 123.675]")
    .replace("std=[58.395, 57.12, 57.375]", "std=[1.0, 1.0, 1.0]")
)


@pytest.fixture(scope="module")
def mmdet_peer():
    peer, _ = peer_checkpoint("mmdet", mask_scoring=True)
    return peer


def test_a_pytorch_style_model_under_meta_cfg_is_refused_by_name(mmdet_peer, tmp_path, capsys):
    """Before: meta["cfg"] was not read, so this converted with a note only."""
    meta = {"cfg": PYTORCH_STYLE_CFG, "mmengine_version": "0.10.7"}
    with pytest.raises(ConversionError, match=r"meta\['cfg'\] says style='pytorch'.*to_rgb=True"):
        convert_state_dict(mmdet_peer, "mmdet", meta)
    path = tmp_path / "ms-rcnn_r50_fpn_1x_coco.pth"
    torch.save({"meta": meta, "state_dict": mmdet_peer}, path)
    assert main(["--source", "mmdet", "--no-verify", str(path), str(tmp_path / "o.pth")]) == 1
    assert "style='pytorch'" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def test_a_caffe_style_model_under_meta_cfg_converts_and_says_where_it_looked(mmdet_peer):
    meta = {"cfg": CAFFE_STYLE_CFG, "mmengine_version": "0.10.7"}
    converted = convert_state_dict(mmdet_peer, "mmdet", meta)
    assert "mmengine_version 0.10.7, caffe-style BGR (from meta['cfg'])" in converted.notes


def test_either_config_text_can_refuse(mmdet_peer):
    """A file with both keys is refused if either one describes a pytorch-style model."""
    meta = {"config": CAFFE_STYLE_CFG, "cfg": PYTORCH_STYLE_CFG}
    with pytest.raises(ConversionError, match=r"meta\['cfg'\]"):
        convert_state_dict(mmdet_peer, "mmdet", meta)


FAKE_MESSAGE_HUB = """\
class MessageHub:
    def __init__(self):
        self.log_scalars = {"loss": [1.0, 0.5]}
"""


@pytest.fixture
def runner_checkpoint(tmp_path, mmdet_peer):
    """A checkpoint holding an object of `mmengine.logging.message_hub.MessageHub`, written by a
    process that can import it (a stand-in package) and read by this one, which cannot."""
    if importlib.util.find_spec("mmengine") is not None:
        pytest.skip("mmengine is importable here: the file would load")
    fake = tmp_path / "fake_site" / "mmengine" / "logging"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "message_hub.py").write_text(FAKE_MESSAGE_HUB)
    state = tmp_path / "state.pth"
    torch.save(mmdet_peer, state)
    path = tmp_path / "epoch_12.pth"
    save = (
        "import torch; from mmengine.logging.message_hub import MessageHub; "
        f"torch.save({{'meta': {{'cfg': {CAFFE_STYLE_CFG!r}, 'epoch': 12}}, "
        f"'state_dict': torch.load({str(state)!r}), 'message_hub': MessageHub()}}, {str(path)!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(fake.parent.parent)}
    subprocess.run([sys.executable, "-c", save], check=True, env=env)
    return path, env


def test_a_runner_checkpoint_is_refused_with_the_way_to_strip_it(runner_checkpoint, capsys):
    """Before: the safe load said only 'pass --unsafe-load', and --unsafe-load then crashed with
    a ModuleNotFoundError traceback."""
    path, env = runner_checkpoint
    out = path.parent / "converted.pth"
    for extra in ([], ["--unsafe-load"]):
        assert main(["--source", "mmdet", *extra, str(path), str(out)]) == 1
        err = capsys.readouterr().err
        assert "pickles objects of mmengine" in err, err
        assert "publish_model.py" in err and "meta and state_dict" in err
    assert not out.exists()
    # The command the message gives, run where mmengine imports, makes a file that converts
    # without --unsafe-load.
    command = re.search(r'python -c "(.*)"', err).group(1)
    subprocess.run([sys.executable, "-c", command], check=True, env=env, cwd=path.parent)
    assert main(["--source", "mmdet", str(path.parent / "stripped.pth"), str(out)]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert torch.equal(
        converted["roi_heads.maskiou_head.predictor.weight"],
        torch.load(path.parent / "state.pth")["roi_head.mask_iou_head.fc_mask_iou.weight"],
    )
