"""ms_rcnn.model_zoo: every shipped config by name, near matches for a wrong name, a local file
winning over a zoo name, and the keys and heads a loaded config needs."""

import subprocess
import sys
from pathlib import Path

import pytest

from ms_rcnn import model_zoo
from ms_rcnn.model_zoo import ConfigNotFoundError

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_of_the_repository_has_a_zoo_name():
    on_disk = sorted(
        p.relative_to(ROOT / "configs").as_posix()
        for p in (ROOT / "configs").rglob("*")
        if p.suffix in (".yaml", ".py")
    )
    assert model_zoo.list_configs() == on_disk
    for name in on_disk:
        assert (
            Path(model_zoo.get_config_file(name)).read_bytes()
            == (ROOT / "configs" / name).read_bytes()
        )
    # As the README writes them, with the repository's folder in front.
    assert model_zoo.get_config_file("configs/demo/ms_rcnn_R_18_demo.yaml").endswith(
        "demo/ms_rcnn_R_18_demo.yaml"
    )


@pytest.mark.parametrize(
    "wrong, expected",
    [
        ("demo/ms_rcnn_R_18_dmeo.yaml", "demo/ms_rcnn_R_18_demo.yaml"),  # a typo
        ("ms_rcnn_R_18_demo.yaml", "demo/ms_rcnn_R_18_demo.yaml"),  # no folder
        ("COCO-InstanceSegmentation/ms_rcnn_R_50_FPN_1x.yml", "ms_rcnn_R_50_FPN_1x.yaml"),
    ],
)
def test_an_unknown_name_lists_the_near_matches(wrong, expected):
    with pytest.raises(ConfigNotFoundError) as e:
        model_zoo.get_config_file(wrong)
    message = str(e.value)
    assert repr(wrong) in message and "near matches" in message and expected in message


def test_a_file_wins_over_a_zoo_name_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, what = model_zoo.resolve_config_file("demo/ms_rcnn_R_18_demo.yaml")
    assert what.startswith("model zoo config demo/ms_rcnn_R_18_demo.yaml")
    assert Path(path).is_file() and Path(path).is_relative_to(model_zoo.configs_root())
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "ms_rcnn_R_18_demo.yaml").write_text("MODEL:\n  MASK_ON: True\n")
    path, what = model_zoo.resolve_config_file("demo/ms_rcnn_R_18_demo.yaml")
    assert path == "demo/ms_rcnn_R_18_demo.yaml" and what.startswith("config file")
    with pytest.raises(ConfigNotFoundError, match="'nothing.yaml': no such file, and"):
        model_zoo.resolve_config_file("nothing.yaml")
    with pytest.raises(ConfigNotFoundError, match="is a folder"):
        model_zoo.resolve_config_file("demo")


def test_get_config_adds_the_keys_and_merges_the_file():
    cfg = model_zoo.get_config("demo/ms_rcnn_R_18_demo.yaml")
    assert cfg.MODEL.ROI_HEADS.NAME == "MaskScoringROIHeads"
    assert cfg.MODEL.RESNETS.DEPTH == 18  # from the file, not Detectron2's default 50
    assert "ROI_MASKIOU_HEAD" in cfg.MODEL
    lazy = model_zoo.get_config("lazy/ms_rcnn_R_50_FPN_1x.py")
    assert lazy.model.roi_heads._target_.__name__ == "MaskScoringROIHeads"


def test_a_pointrend_config_by_name_builds_in_a_fresh_process():
    # merge_config_file must add PointRend's keys and register ms-rcnn's PointRend heads:
    # in a fresh interpreter nothing else has imported ms_rcnn.modeling.pointrend.
    pytest.importorskip("cv2")
    code = (
        "import sys\n"
        "from detectron2.modeling import ROI_HEADS_REGISTRY\n"
        "from ms_rcnn import model_zoo\n"
        "assert 'ms_rcnn.modeling.pointrend' not in sys.modules\n"
        "cfg = model_zoo.get_config('demo/ms_rcnn_pointrend_R_18_demo.yaml')\n"
        "assert cfg.MODEL.POINT_HEAD.NUM_CLASSES == cfg.MODEL.ROI_HEADS.NUM_CLASSES\n"
        "print(ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "PointRendMaskScoringROIHeads"


def test_a_source_tarball_as_detectron2_src_gives_its_projects(tmp_path, monkeypatch):
    # CI builds Detectron2 main from a tarball (DETECTRON2_SRC=...tar.gz): the ViTDet configs
    # must come from that same file. A tiny tarball shaped like upstream's `git archive`.
    import io
    import tarfile

    from ms_rcnn.model_zoo.upstream import detectron2_checkout

    tarball = tmp_path / "detectron2-main.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in [
            ("detectron2-main/setup.py", b"# setup\n"),
            ("detectron2-main/projects/ViTDet/configs/COCO/x.py", b"a = 1\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("detectron2-main/projects/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DETECTRON2_SRC", str(tarball))
    root = detectron2_checkout()
    assert (root / "projects/ViTDet/configs/COCO/x.py").read_text() == "a = 1\n"
    assert not (root / "projects/escape").exists() and not (root / "setup.py").exists()
    assert detectron2_checkout() == root  # unpacked once, then reused
