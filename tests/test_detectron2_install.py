"""The Detectron2 that `make setup` installs works where ms-rcnn needs it.

These guard the v0.6 fixes of scripts/install_detectron2.py (NumPy aliases, Pillow's LINEAR,
pkg_resources, model-zoo configs, the _C stand-in) and check the compiled ops where the build
has them. They pass on every build: stand-in v0.6, compiled v0.6, compiled main.
"""

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, PolygonMasks


def brute_force_polygon_crop(polygon, box, size):
    """Rasterize a polygon in box coordinates at size x size by testing pixel centres."""
    from matplotlib.path import Path

    x0, y0, x1, y1 = box
    xs = x0 + (np.arange(size) + 0.5) * (x1 - x0) / size
    ys = y0 + (np.arange(size) + 0.5) * (y1 - y0) / size
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    return Path(np.asarray(polygon).reshape(-1, 2)).contains_points(grid).reshape(size, size)


def test_polygon_crop_and_resize_matches_rasterization():
    # A right triangle: a polygon path through np.bool-era code in v0.6.
    poly = [0.0, 0.0, 40.0, 0.0, 0.0, 40.0]
    box = [0.0, 0.0, 40.0, 40.0]
    masks = PolygonMasks([[np.array(poly)]]).crop_and_resize(torch.tensor([box]), 20)
    expected = brute_force_polygon_crop(poly, box, 20)
    assert masks.dtype == torch.bool
    # Pixels on the hypotenuse may go either way; everything else must agree.
    disagree = (masks[0].numpy() != expected).sum()
    assert disagree <= 20, disagree
    assert masks[0, 0, 0] and not masks[0, 19, 19]


def test_polygon_to_bitmask_and_area():
    poly = [[np.array([2.0, 2.0, 12.0, 2.0, 12.0, 7.0, 2.0, 7.0])]]
    bit = BitMasks.from_polygon_masks(poly, 20, 20)
    assert bit.tensor.sum() == 50  # 10 x 5 pixels
    assert PolygonMasks(poly).area().item() == pytest.approx(50.0)


def test_transforms_with_bilinear_default():
    image = np.random.RandomState(0).randint(0, 255, (30, 40, 3)).astype(np.uint8)
    out = T.ExtentTransform((0, 0, 40, 30), (15, 20)).apply_image(image)  # its default interp
    assert out.shape == (15, 20, 3)
    aug = T.AugmentationList([T.ResizeShortestEdge(20, 40), T.RandomFlip()])
    aug_input = T.AugInput(image)
    aug(aug_input)
    assert aug_input.image.shape[0] == 20


def test_compiled_ops_are_what_the_build_says():
    """Asks the build (ms_rcnn.env) and checks it against `detectron2._C` itself: the stand-in
    names the missing op; the compiled extension runs one (a rotated-box IoU). CI's compiled
    leg sets MS_RCNN_EXPECT_DETECTRON2_OPS=compiled, so a silent fallback fails there."""
    import os

    from ms_rcnn.env import detectron2_build

    ops = detectron2_build()["ops"]
    expected = os.environ.get("MS_RCNN_EXPECT_DETECTRON2_OPS")
    assert ops == (expected or ops), f"expected {expected} ops, this build has {ops}"
    if ops == "missing":  # a build without _C at all (main made it optional)
        with pytest.raises(ImportError):
            from detectron2 import _C  # noqa: F401
        return
    from detectron2 import _C

    if ops == "stand-in":
        assert "compiled ops" in _C.get_compiler_version()
        with pytest.raises(AttributeError, match="deform_conv_forward"):
            _C.deform_conv_forward  # noqa: B018
        return
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    assert _C.__file__.endswith(".so"), _C.__file__
    # Two 2x2 squares, one shifted by 1 along x: IoU 2/6, whatever their common rotation.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 0.0, 2.0, 2.0, 0.0]])
    iou = pairwise_iou_rotated(RotatedBoxes(boxes), RotatedBoxes(boxes))
    assert iou[0, 1].item() == pytest.approx(1 / 3, abs=1e-5)
    assert iou[0, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_collect_env_and_model_zoo_configs():
    from detectron2 import model_zoo
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()
    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("mask_rcnn_R_50_FPN_1x.yaml")


# The installer's smoke test (scripts/install_detectron2.py), run as `make setup` runs it.


def _installer():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "install_detectron2.py"
    spec = importlib.util.spec_from_file_location("install_detectron2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_test_names_the_pkg_resources_line_and_both_fixes(tmp_path):
    """A user's Detectron2 main whose model_zoo imports pkg_resources (setuptools >= 81 has
    none): the smoke test names that file and line and gives both fixes. Here an import hook
    loads such a model_zoo.py in place of the installed one, with pkg_resources missing."""
    import os

    theirs = tmp_path / "their-detectron2" / "detectron2" / "model_zoo" / "model_zoo.py"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("import os\nimport pkg_resources\n")
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util, sys\n"
        "class TheirModelZoo:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pkg_resources':\n"
        "            raise ModuleNotFoundError(\"No module named 'pkg_resources'\",\n"
        "                                      name='pkg_resources')\n"
        "        if name == 'detectron2.model_zoo.model_zoo':\n"
        f"            return importlib.util.spec_from_file_location(name, {str(theirs)!r})\n"
        "sys.meta_path.insert(0, TheirModelZoo())\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    installer = _installer()
    step, detail, error = installer.run_smoke_test(installer.ROOT, env=env)
    assert step == "model_zoo", error[-2000:]
    advice = installer.what_to_do(step, detail, error)
    assert f"{theirs}, line 2 (`import pkg_resources`)" in advice
    assert "setuptools<81" in advice and "left as it is" in advice
    assert "MODEL_ZOO_FIXES in scripts/detectron2_patches.py" in advice
    assert 'os.path.join(os.path.dirname(__file__), "configs", config_path)' in advice
    assert theirs.read_text() == "import os\nimport pkg_resources\n"  # not touched


def test_smoke_test_passes_our_configs_and_names_one_that_fails(tmp_path):
    """With the installed Detectron2, the smoke test gets through Detectron2's model zoo, our
    evaluator (segm AP 100 for a perfect prediction) and every config of ours, YAML and
    LazyConfig; then it stops at an extra config (sorted last) that this Detectron2 cannot
    load, and names it."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "ms_rcnn").symlink_to(root / "ms_rcnn")
    shutil.copytree(root / "configs", tmp_path / "configs")
    bad = tmp_path / "configs" / "lazy" / "zz_needs_a_newer_detectron2.py"
    bad.write_text("from detectron2.modeling.a_module_this_detectron2_lacks import model\n")
    installer = _installer()
    step, detail, error = installer.run_smoke_test(tmp_path)
    assert (step, detail) == ("project-lazy", str(bad)), error[-3000:]
    assert "a_module_this_detectron2_lacks" in error
    assert str(bad) in installer.what_to_do(step, detail, error)
