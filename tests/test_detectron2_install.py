"""The Detectron2 that `make setup` installs works where ms-rcnn needs it.

These guard the v0.6 fixes of scripts/install_detectron2.py (NumPy aliases, Pillow's LINEAR,
pkg_resources, model-zoo configs, the _C stand-in). With an upstream build they pass as well.
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


def test_compiled_ops_standin_names_the_missing_op():
    from detectron2 import _C

    if not getattr(_C, "PURE_PYTHON_STANDIN", False):
        pytest.skip("Detectron2 with real compiled ops")
    assert "compiled ops" in _C.get_compiler_version()
    with pytest.raises(AttributeError, match="deform_conv_forward"):
        _C.deform_conv_forward  # noqa: B018


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


def test_smoke_test_names_pkg_resources_and_the_fix(tmp_path):
    """Detectron2 main's model_zoo imports pkg_resources, which setuptools >= 81 lacks. Here an
    import hook makes detectron2.model_zoo fail the way it does there."""
    import os

    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoPkgResources:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'detectron2.model_zoo':\n"
        "            raise ModuleNotFoundError(\"No module named 'pkg_resources'\",\n"
        "                                      name='pkg_resources')\n"
        "sys.meta_path.insert(0, NoPkgResources())\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    installer = _installer()
    step, detail, error = installer.run_smoke_test(env=env)
    assert step == "model_zoo", error[-2000:]
    advice = installer.what_to_do(step, detail, error)
    assert "setuptools<81" in advice and "--source PATH" in advice


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
    step, detail, error = installer.run_smoke_test(root=tmp_path)
    assert (step, detail) == ("project-lazy", str(bad)), error[-3000:]
    assert "a_module_this_detectron2_lacks" in error
    assert str(bad) in installer.what_to_do(step, detail, error)
