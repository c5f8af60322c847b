#!/usr/bin/env python
"""Packaging for ms-rcnn. Pure Python: no torch import here, no compiled extension.

Detectron2 is a runtime requirement that cannot be listed: it is not on PyPI. `make setup`
installs it (scripts/install_detectron2.py), or bring your own build; `import ms_rcnn` checks
for it and says how to install it.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    """Copy the repository's configs/ into the built package as ms_rcnn/model_zoo/configs, so a
    wheel carries them (one copy in the repository; `ms_rcnn.model_zoo` finds either)."""

    def run(self):
        super().run()
        source = HERE / "configs"
        if not source.is_dir():  # an sdist always has it (MANIFEST.in); a broken tree does not
            raise FileNotFoundError(f"{source}: ms-rcnn's configs are missing from the source")
        target = Path(self.build_lib) / "ms_rcnn" / "model_zoo" / "configs"
        for path in sorted(source.rglob("*")):
            if (
                path.is_file()
                and path.suffix in (".yaml", ".py")
                and "__pycache__" not in path.parts
            ):
                dest = target / path.relative_to(source)
                self.mkpath(str(dest.parent))
                self.copy_file(str(path), str(dest), preserve_mode=False)


def read_version():
    # The one version source is ms_rcnn/version.py; read it as text to avoid importing torch.
    text = (HERE / "ms_rcnn" / "version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


setup(
    name="ms-rcnn",
    version=read_version(),
    description="Mask Scoring R-CNN heads for Detectron2 (a plugin, not a fork)",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["ms_rcnn", "ms_rcnn.*"]),
    cmdclass={"build_py": BuildPyWithConfigs},
    entry_points={
        "console_scripts": [
            "ms-rcnn-train = ms_rcnn.train_cli:main",
            "ms-rcnn-predict = ms_rcnn.predict.cli:main",
            "ms-rcnn-convert = ms_rcnn.conversion.cli:main",
            "ms-rcnn-compare = ms_rcnn.analysis.cli:main",
            "ms-rcnn-make-dataset = ms_rcnn.data.cli:main",
            "ms-rcnn-demo = ms_rcnn.demo:main",
        ]
    },
    install_requires=[
        # torch, torchvision and detectron2 are prerequisites installed by `make setup`
        # (see README: torch has CPU/CUDA builds pip cannot choose; detectron2 is not on PyPI).
        "torch>=1.12",  # Tensor.scatter_reduce (MaskIoU targets); tested with 2.14.1
        "torchvision",
        "numpy",
        "pillow",
        "pycocotools>=2.0.2",
        "fvcore",
        "matplotlib",
        # Not listed: OpenCV, which tools/predict.py needs (Detectron2's Visualizer draws mask
        # contours with it). opencv-python and opencv-python-headless both install `cv2`, so
        # requiring one here would install it over the other a user already has;
        # scripts/install_detectron2.py installs the headless one only where no cv2 imports,
        # and predict names the missing package otherwise.
        "tqdm",  # tools/predict.py's progress bar (fvcore depends on it already)
    ],
    extras_require={
        # COCO evaluation 3-6x faster than pycocotools' when Detectron2 has no compiled ops,
        # with the same numbers (ms_rcnn/evaluation/cocoeval_backend.py); optional.
        "fast-eval": ["faster-coco-eval>=1.6,<2"],
        # build: the wheel test makes the wheel and sdist as a release would (python -m build).
        "dev": [
            "pytest>=7",
            "pytest-timeout",
            "hypothesis",
            "ruff",
            "faster-coco-eval>=1.6,<2",
            "build",
        ],
    },
)
