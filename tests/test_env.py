"""ms_rcnn.env: the one answer to "which Detectron2 is this", checked against the build itself."""

import importlib

import pytest

from ms_rcnn import env


def test_build_answers_agree_with_detectron2_itself():
    import detectron2

    build = env.detectron2_build()
    assert build["version"] == detectron2.__version__
    assert build["ops"] in ("compiled", "stand-in", "missing")
    if build["ops"] != "missing":
        ops = importlib.import_module("detectron2._C")
        assert getattr(ops, "PURE_PYTHON_STANDIN", False) == (build["ops"] == "stand-in")
        assert build["cuda_ops"] in ("yes", "no")
    if build["editable"] == "yes":  # pip -e of a checkout: the package is in its source tree
        assert build["install"] == "source checkout"
    if build["distribution"] == "pb1-detectron2":  # PyPI's v0.6: known without a .git
        assert build["ref"] == "v0.6" and build["commit"].startswith("d1e04565")
    if build["fingerprint"]:  # built by ms-rcnn's installer, which records where from
        assert build["source"]


def test_version_text_names_the_build():
    build = env.detectron2_build()
    lines = env.version_text().splitlines()
    assert lines[0].startswith("ms-rcnn ") and lines[2].startswith("torch ")
    assert lines[1] == env.detectron2_line(build)
    word = {"compiled": "compiled ops", "stand-in": "stand-in", "missing": "no _C"}[build["ops"]]
    assert word in lines[1]
    if build["commit"]:
        assert build["commit"][:12] in lines[1]


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, "detectron2 0.6 at commit 02b5c4e295e9 (main): compiled ops (CPU only); "
             "pip install, site-packages /venv/detectron2"),
        ({"cuda_ops": "yes", "editable": "yes", "install": "source checkout", "ref": None},
         "detectron2 0.6 at commit 02b5c4e295e9: compiled ops (CPU and CUDA); "
         "editable install, source checkout /venv/detectron2"),
        ({"ops": "stand-in", "cuda_ops": "no", "commit": None, "editable": None},
         "detectron2 0.6: no compiled ops (ms-rcnn's pure-Python stand-in); "
         "not pip-installed, site-packages /venv/detectron2"),
    ],
)  # fmt: skip
def test_detectron2_line(changes, expected):
    build = {"version": "0.6", "path": "/venv/detectron2", "install": "site-packages",
             "editable": "no", "commit": "02b5c4e295e990042a714712c21dc79b731e8833",
             "ref": "main", "ops": "compiled", "cuda_ops": "no"}  # fmt: skip
    assert env.detectron2_line({**build, **changes}) == expected


def test_commit_from_the_installers_marker_when_there_is_no_git(monkeypatch):
    """A tarball or a copied tree has no .git: the commit the installer recorded is reported."""
    marker = {"commit": "a" * 40, "ref": "main", "source": "/shared/detectron2-main.tar.gz",
              "fingerprint": "0123"}  # fmt: skip
    monkeypatch.setattr(env, "_build_marker", lambda: marker)
    monkeypatch.setattr(env, "_git_commit", lambda folder: None)
    build = env.detectron2_build()
    if build["distribution"] != "pb1-detectron2":  # that one is known as v0.6 either way
        assert (build["commit"], build["ref"]) == ("a" * 40, "main")
    assert build["source"] == marker["source"] and build["fingerprint"] == "0123"
