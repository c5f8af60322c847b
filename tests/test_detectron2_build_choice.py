"""scripts/install_detectron2.py: which Detectron2 it builds, with fakes for the slow parts.

A source and a compiler give the compiled ops; no compiler gives the stand-in with one line
saying so; `--no-ops` always the stand-in; no source: a pinned upstream clone where git reaches
it, else PyPI's v0.6 with one line; and a working Detectron2 it did not build is never
replaced without `--force`. The real compiled build runs in CI's compiled-main leg.
"""

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_detectron2.py"


@pytest.fixture
def installer(monkeypatch):
    """A fresh copy of the installer with every side effect recorded in `installer.calls`."""
    spec = importlib.util.spec_from_file_location("install_detectron2_choice", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = module.calls = []
    monkeypatch.setattr(module, "install_dependencies", lambda: calls.append("deps"))
    monkeypatch.setattr(module, "stale_fallback", lambda: False)
    monkeypatch.setattr(module, "working_detectron2", lambda just_installed=False: just_installed)
    monkeypatch.setattr(module, "may_replace_installed", lambda force: calls.append("may"))
    monkeypatch.setattr(module, "check_features", lambda: None)
    monkeypatch.setattr(module, "check_ops", lambda compiled: calls.append(f"ops {compiled}"))
    monkeypatch.setattr(module, "build_and_install", lambda: calls.append("pypi stand-in"))
    monkeypatch.setattr(
        module,
        "install_checkout",
        lambda src, compiled, editable=False, commit=None: calls.append(
            f"checkout {src} compiled={compiled} editable={editable}"
        ),
    )
    monkeypatch.setattr(module, "find_compiler", lambda: (True, "g++ 12 (/usr/bin/c++)"))
    return module


def no_compiler(installer, monkeypatch):
    why = "no C++ compiler ('c++' is not on PATH; install g++, or set CXX)"
    monkeypatch.setattr(installer, "find_compiler", lambda: (False, why))


def logged(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if "[install_detectron2]" in line]


def test_source_and_compiler_build_the_compiled_ops(installer, capsys):
    installer.main(["--source", "/src/d2"])
    assert installer.calls == ["deps", "may", "checkout /src/d2 compiled=True editable=False",
                               "ops True"]  # fmt: skip
    assert logged(capsys) == []


def test_source_without_compiler_builds_the_stand_in_and_says_so_once(
    installer, monkeypatch, capsys
):
    no_compiler(installer, monkeypatch)
    installer.main(["--source", "/src/d2", "--editable"])
    assert installer.calls == ["deps", "may", "checkout /src/d2 compiled=False editable=True",
                               "ops False"]  # fmt: skip
    (line,) = logged(capsys)
    assert "no C++ compiler" in line and "stand-in" in line and "/src/d2" in line


def test_no_ops_never_compiles(installer, monkeypatch):
    monkeypatch.setattr(installer, "find_compiler", lambda: pytest.fail("no compiler wanted"))
    installer.main(["--source", "/src/d2", "--no-ops"])
    assert "checkout /src/d2 compiled=False editable=False" in installer.calls
    installer.calls.clear()
    installer.main(["--no-ops"])  # nothing installed: today's PyPI build
    assert installer.calls == ["deps", "pypi stand-in", "ops False"]


def test_no_source_clones_the_pinned_commit(installer, monkeypatch):
    fetched = []

    def clone(ref, dest, url=None):
        fetched.append(ref)
        return None

    monkeypatch.setattr(installer, "clone_pinned", clone)
    installer.main(["--ref", "v0.6"])
    assert fetched == ["v0.6"]
    (build,) = [c for c in installer.calls if c.startswith("checkout")]
    assert build.endswith("detectron2 compiled=True editable=False")
    assert installer.calls[-1] == "ops True"


def test_unreachable_upstream_falls_back_to_pypi_in_one_line(installer, monkeypatch, capsys):
    # The real clone_pinned, against a repository that is not there (as github.com is not here).
    monkeypatch.setenv("MS_RCNN_DETECTRON2_GIT_URL", str(Path("/nonexistent/detectron2.git")))
    installer.main([])
    assert installer.calls == ["deps", "pypi stand-in", "ops False"]
    (line,) = logged(capsys)
    assert "cannot fetch upstream Detectron2 main" in line and "/nonexistent" in line
    assert "no DETECTRON2_SRC given" in line and "stand-in" in line


def test_no_compiler_and_no_source_skips_the_clone(installer, monkeypatch, capsys):
    no_compiler(installer, monkeypatch)
    monkeypatch.setattr(installer, "clone_pinned", lambda *a, **k: pytest.fail("no clone"))
    installer.main([])
    assert installer.calls == ["deps", "pypi stand-in", "ops False"]
    (line,) = logged(capsys)
    assert line.startswith("[install_detectron2] no C++ compiler") and "stand-in" in line


def test_a_working_detectron2_is_kept_without_source(installer, monkeypatch, capsys):
    monkeypatch.setattr(installer, "working_detectron2", lambda just_installed=False: True)
    build = {"fingerprint": installer.checkout_fingerprint(), "source": "/src/d2.tar.gz"}
    monkeypatch.setattr(installer, "probe", lambda code: {"build": build})
    installer.main([])
    assert installer.calls == ["deps"] and logged(capsys) == []
    build["fingerprint"] = "older"  # built by an older installer: kept, with how to rebuild
    installer.main([])
    (line,) = logged(capsys)
    assert "older version" in line and "/src/d2.tar.gz" in line and "DETECTRON2_SRC" in line


# may_replace_installed, on fake site directories (the real probe runs in a child interpreter).


def fake_site(root, marker=False, stand_in=False):
    pkg = root / "detectron2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.6"\n')
    if marker:
        (pkg / "_ms_rcnn_build.py").write_text("BUILD = {'ops': 'compiled'}\n")
    if stand_in:
        (pkg / "_C.py").write_text("PURE_PYTHON_STANDIN = True\n")
    return root


@pytest.fixture
def real_installer():
    spec = importlib.util.spec_from_file_location("install_detectron2_replace", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_working_user_detectron2_is_never_replaced_silently(
    real_installer, tmp_path, monkeypatch
):
    site = fake_site(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setattr(real_installer, "run_smoke_test", lambda root: (None, "works", ""))
    with pytest.raises(SystemExit, match="did not build.*--force"):
        real_installer.may_replace_installed(force=False)
    assert real_installer.may_replace_installed(force=True)
    # One whose core does not import is replaced, with a line saying so.
    monkeypatch.setattr(real_installer, "run_smoke_test", lambda root: ("core", "", "Error"))
    assert real_installer.may_replace_installed(force=False)


@pytest.mark.parametrize("kind", ["marker", "stand_in"])
def test_a_build_of_this_script_is_replaced(real_installer, tmp_path, monkeypatch, kind):
    site = fake_site(tmp_path, **{kind: True})
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setattr(real_installer, "run_smoke_test", lambda root: pytest.fail("no smoke"))
    assert real_installer.may_replace_installed(force=False)


def test_replacing_builds_first_then_removes_the_old_distribution(real_installer, monkeypatch):
    """A failed compile must leave the installed Detectron2 in place: wheel first, then
    uninstall, then install; editable: install (pip replaces `detectron2`), then drop the
    other distribution."""
    cmds = []

    def pip(*args):
        cmds.append(args[0])
        if args[0] == "wheel":  # the wheel pip would build
            (Path(args[args.index("-w") + 1]) / "detectron2-0.6-cp311-linux.whl").touch()

    monkeypatch.setattr(real_installer, "pip", pip)
    monkeypatch.setattr(
        real_installer, "probe", lambda code: {"dists": ["pb1-detectron2"], "ours": True}
    )
    real_installer.replace_installed(Path("/tree"), "detectron2")
    assert cmds == ["wheel", "uninstall", "install"]
    cmds.clear()
    real_installer.replace_installed(Path("/tree"), "detectron2", editable=True)
    assert cmds == ["install", "uninstall"]


def test_make_passes_the_options(tmp_path):
    """`make -n setup` turns DETECTRON2_* into the installer's flags."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.fail("make is needed to build ms-rcnn (`make setup`)")
    root = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"
    cmd = ["make", "-n", "-C", str(root), f"VENV={venv}", "DETECTRON2_OPS=no",
           "DETECTRON2_EDITABLE=1", "DETECTRON2_REF=v0.6", "setup"]  # fmt: skip
    # Not the options of a make this test runs under (make test-main passes DETECTRON2_SRC on
    # its command line, which reaches child makes through MAKEFLAGS).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "DETECTRON2_"))}  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    (line,) = [x for x in out.splitlines() if "install_detectron2.py" in x]
    assert line.split("install_detectron2.py")[1].split() == [
        "--ref", "v0.6", "--no-ops", "--editable"
    ]  # fmt: skip
