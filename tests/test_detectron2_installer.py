"""scripts/install_detectron2.py: which installed Detectron2 it keeps and which it rebuilds.

It must rebuild a fallback that an older version of the script built (other compat fixes, or
none of today's fingerprint), and keep any Detectron2 installed another way.
"""

import importlib.util
import json
import subprocess
import sys
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
