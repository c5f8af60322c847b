"""scripts/install_detectron2.py: which installed Detectron2 it keeps and which it rebuilds.

It must rebuild a fallback that an older version of the script built (other compat fixes, or
none of today's fingerprint), and keep any Detectron2 installed another way.
"""

import hashlib
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_detectron2.py"


@pytest.fixture(scope="module")
def installer():
    spec = importlib.util.spec_from_file_location("install_detectron2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def patches(installer):
    """scripts/detectron2_patches.py, as the installer imported it."""
    return sys.modules["detectron2_patches"]


def fake_detectron2(root, dist_name, c_module):
    """A site directory with a `detectron2` package and the dist-info that installed it."""
    pkg = root / "detectron2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.6"\n')
    (pkg / "_C.py").write_text(c_module)
    info = root / f"{dist_name.replace('-', '_')}-0.6.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.6\n")
    (info / "RECORD").write_text("detectron2/__init__.py,,\ndetectron2/_C.py,,\n")
    return root


def probe(installer, site, monkeypatch):
    # The installer's probes run in a child interpreter, which puts PYTHONPATH first.
    monkeypatch.setenv("PYTHONPATH", str(site))
    proc = installer.run_python(installer.FALLBACK_PROBE)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), installer.stale_fallback()


def test_fallback_built_by_the_old_script_is_rebuilt(installer, patches, tmp_path, monkeypatch):
    # The old script wrote the stand-in without a fingerprint.
    site = fake_detectron2(tmp_path, "pb1-detectron2", patches.C_STANDIN)
    found, stale = probe(installer, site, monkeypatch)
    assert found == {"fallback": True, "fingerprint": None}
    assert stale


def test_fallback_with_other_fixes_is_rebuilt(installer, patches, tmp_path, monkeypatch):
    site = fake_detectron2(
        tmp_path, "pb1-detectron2", patches.C_STANDIN + "FALLBACK_FINGERPRINT = 'feedc0de'\n"
    )
    found, stale = probe(installer, site, monkeypatch)
    assert found == {"fallback": True, "fingerprint": "feedc0de"}
    assert stale


def test_current_fallback_is_kept(installer, patches, tmp_path, monkeypatch):
    marker = f"FALLBACK_FINGERPRINT = {installer.FALLBACK_FINGERPRINT!r}\n"
    site = fake_detectron2(tmp_path, "pb1-detectron2", patches.C_STANDIN + marker)
    found, stale = probe(installer, site, monkeypatch)
    assert found["fallback"] and not stale


def test_users_own_upstream_build_is_kept(installer, tmp_path, monkeypatch):
    # Compiled ops (no stand-in flag), installed as `detectron2` from a checkout.
    compiled = "def get_compiler_version():\n    return 'GCC 12'\n"
    site = fake_detectron2(tmp_path, "detectron2", compiled)
    found, stale = probe(installer, site, monkeypatch)
    assert found == {"fallback": False, "fingerprint": None}
    assert not stale


def test_stand_in_not_installed_by_the_sdist_is_not_ours(installer, patches, tmp_path, monkeypatch):
    # A checkout built without compiled ops that carries the same stand-in, installed under the
    # name `detectron2`: not the sdist fallback, so its (missing) fingerprint does not matter,
    # even with a pb1-detectron2 dist-info elsewhere on the path.
    site = fake_detectron2(tmp_path / "checkout", "detectron2", patches.C_STANDIN)
    elsewhere = fake_detectron2(tmp_path / "old", "pb1-detectron2", patches.C_STANDIN)
    monkeypatch.setenv("PYTHONPATH", f"{site}:{elsewhere}")
    assert json.loads(installer.run_python(installer.FALLBACK_PROBE).stdout)["fallback"] is False
    assert not installer.stale_fallback()


@pytest.mark.parametrize(
    "force, stale, working, builds",
    [
        (False, False, True, False),  # a current fallback or the user's own build: kept
        (False, True, True, True),  # works, but built with older fixes: rebuilt
        (False, False, False, True),  # fails the smoke test (or absent): built
        (True, False, True, True),  # --force
    ],
)
def test_main_rebuilds_only_when_needed(installer, monkeypatch, force, stale, working, builds):
    calls = []
    monkeypatch.setattr(installer, "install_dependencies", lambda: calls.append("deps"))
    monkeypatch.setattr(installer, "stale_fallback", lambda: stale)
    # After an install (just_installed=True) the real check raises unless the build works.
    monkeypatch.setattr(
        installer,
        "working_detectron2",
        lambda just_installed=False: working or "build" in calls or just_installed,
    )
    monkeypatch.setattr(installer, "build_default", lambda args: calls.append("build") or True)
    monkeypatch.setattr(installer, "check_ops", lambda compiled: calls.append(f"ops {compiled}"))
    monkeypatch.setattr(installer, "check_features", lambda: calls.append("features"))
    installer.main(["--force"] if force else [])
    expected = ["deps"] + (["build", "ops True"] if builds else []) + ["features"]
    assert calls == expected


def test_compat_fix_refuses_a_source_it_was_not_written_for(patches, tmp_path):
    (tmp_path / "detectron2/data").mkdir(parents=True)
    (tmp_path / "detectron2/data/common.py").write_text("cur_idx = self._rng.choice(pool)\n")
    fix = next(f for f in patches.COMPAT_FIXES if getattr(f, "path", "").endswith("common.py"))
    with pytest.raises(SystemExit, match="common.py"):
        fix.apply(tmp_path)


def test_installed_build_carries_this_scripts_fingerprint(installer, patches):
    """The Detectron2 in this environment: if this script built it, it has today's fixes."""
    proc = subprocess.run(
        [sys.executable, "-c", installer.FALLBACK_PROBE], capture_output=True, text=True
    )
    from ms_rcnn.env import detectron2_build

    build = detectron2_build()
    if json.loads(proc.stdout)["fallback"]:  # the PyPI v0.6 sdist with the stand-in
        found = json.loads(proc.stdout)["fingerprint"]
        assert found == installer.FALLBACK_FINGERPRINT, (
            "this fallback was built by an older install_detectron2.py: run `make setup`"
        )
    elif build["fingerprint"] is not None:  # a checkout or tarball it built
        assert build["fingerprint"] == patches.checkout_fingerprint(), (
            f"this Detectron2 was built from {build['source']} by an older "
            "install_detectron2.py: run `make setup DETECTRON2_SRC=...` again"
        )
    else:
        pytest.skip(f"Detectron2 here was not built by ms-rcnn's installer ({build['path']})")


# ------------------------------------------------- extracting the sdist on any Python 3.9+


@pytest.fixture
def old_python_tarfile(monkeypatch):
    """tarfile as in Python before 3.9.17 / 3.10.12 / 3.11.4: no extraction filters."""
    monkeypatch.delattr(tarfile, "data_filter")
    real = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(
                f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        return real(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def sdist_with(path, extra=()):
    """A .tar.gz like the pb1-detectron2 sdist: a top folder with files; `extra` members
    (name, type, link target) added after them."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("pb1-detectron2-0.6/setup.py", b"# setup\n"),
                           ("pb1-detectron2-0.6/detectron2/__init__.py", b"x = 1\n")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o4777  # setuid, world-writable: not kept
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in extra:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            data = b"" if kind != tarfile.REGTYPE else b"escaped\n"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def build_with(installer, monkeypatch, tmp_path, sdist):
    """Run build_and_install on `sdist` (pip download/install stubbed); returns the files the
    install step saw, relative to the extracted source, with their modes."""
    seen = {}

    def pip(*args):
        if args[0] == "download":
            shutil.copy(sdist, args[args.index("-d") + 1])
        elif args[0] == "wheel":  # the build step: it sees the extracted, patched source
            src = Path(args[-1])
            seen.update({str(p.relative_to(src)): p.stat().st_mode & 0o7777
                         for p in src.rglob("*") if p.is_file()})  # fmt: skip
            Path(args[args.index("-w") + 1], "detectron2-0.6-py3-none-any.whl").write_bytes(b"")
        # uninstall / install of that wheel: nothing to do here

    monkeypatch.setattr(installer, "pip", pip)
    monkeypatch.setattr(installer, "pinned", lambda name: "0.6")
    monkeypatch.setattr(installer, "patch_source", lambda src: ["nothing"])
    monkeypatch.setattr(installer, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    installer.build_and_install()
    return seen


@pytest.mark.parametrize("python", ["with_filters", "before_filters"])
def test_the_sdist_extracts_on_every_supported_python(installer, tmp_path, monkeypatch, request,
                                                      python):  # fmt: skip
    """setup.py says >=3.9; tarfile's filter= argument came with 3.9.17/3.10.12/3.11.4."""
    if python == "before_filters":
        request.getfixturevalue("old_python_tarfile")
    seen = build_with(installer, monkeypatch, tmp_path, sdist_with(tmp_path / "d2.tar.gz"))
    assert set(seen) == {"setup.py", "detectron2/__init__.py"}
    assert all(mode & 0o7022 == 0 for mode in seen.values()), seen  # no setuid, no o/g write


@pytest.mark.parametrize("python", ["with_filters", "before_filters"])
@pytest.mark.parametrize(
    "name,kind,target",
    [("pb1-detectron2-0.6/link", tarfile.SYMTYPE, "/etc/passwd"),
     ("pb1-detectron2-0.6/inner", tarfile.SYMTYPE, "setup.py"),
     ("pb1-detectron2-0.6/hard", tarfile.LNKTYPE, "pb1-detectron2-0.6/setup.py"),
     ("pb1-detectron2-0.6/../../escaped.txt", tarfile.REGTYPE, ""),
     ("/tmp/absolute-escaped.txt", tarfile.REGTYPE, ""),
     ("pb1-detectron2-0.6/dev", tarfile.CHRTYPE, "")],
    ids=["symlink_out", "symlink_in", "hardlink", "dotdot", "absolute", "device"],
)  # fmt: skip
def test_links_and_paths_outside_are_refused(installer, tmp_path, monkeypatch, request, python,
                                              name, kind, target):  # fmt: skip
    if python == "before_filters":
        request.getfixturevalue("old_python_tarfile")
    sdist = sdist_with(tmp_path / "d2.tar.gz", [(name, kind, target)])
    with pytest.raises(SystemExit, match=re.escape(name)):
        build_with(installer, monkeypatch, tmp_path, sdist)
    assert not Path("/tmp/absolute-escaped.txt").exists()
    assert not list(Path(tempfile.gettempdir()).glob("escaped.txt"))
