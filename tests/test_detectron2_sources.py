"""scripts/detectron2_sources.py and patch_checkout: where a Detectron2 tree comes from, what is
known about it, whether it can be compiled, and the fixes each upstream tree gets."""

import hashlib
import io
import py_compile
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "detectron2"
sys.path.insert(0, str(ROOT / "scripts"))
import detectron2_patches as patches  # noqa: E402
import detectron2_sources as sources  # noqa: E402

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=test"]


def fake_tree(root):
    """The smallest folder prepare_source accepts as a Detectron2 tree."""
    (root / "detectron2").mkdir(parents=True)
    (root / "detectron2" / "__init__.py").write_text('__version__ = "0.6"\n')
    (root / "setup.py").write_text("# setup\n")
    return root


def git_repo(root):
    fake_tree(root)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*GIT, "-C", str(root), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(root), "commit", "-qm", "one"], check=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
    return head.stdout.decode().strip()


def make_tarball(path, tree, top="detectron2-main"):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree, arcname=top)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkout_is_copied_with_its_commit_and_without_build_leftovers(tmp_path):
    commit = git_repo(tmp_path / "checkout")
    (tmp_path / "checkout" / "detectron2" / "_C.cpython-311-x86_64-linux-gnu.so").write_text("")
    info = sources.prepare_source(tmp_path / "checkout", tmp_path / "build")
    assert info["commit"] == commit and info["local_changes"] is False
    assert not list((tmp_path / "build").rglob("_C*.so")) and not (tmp_path / "build/.git").exists()
    (tmp_path / "checkout" / "setup.py").write_text("# changed\n")
    info = sources.prepare_source(tmp_path / "checkout", tmp_path / "build2")
    assert info["local_changes"] is True


def test_tarball_commit_is_known_by_its_sha256(tmp_path, monkeypatch):
    digest = make_tarball(tmp_path / "d2.tar.gz", fake_tree(tmp_path / "tree"))
    info = sources.prepare_source(tmp_path / "d2.tar.gz", tmp_path / "a", commit="abc")
    assert info["commit"] == "abc" and info["ref"] is None  # unknown tarball: the user's word
    assert (tmp_path / "a" / "setup.py").is_file()
    monkeypatch.setitem(sources.KNOWN_TARBALLS, digest, ("main", "f" * 40))
    info = sources.prepare_source(tmp_path / "d2.tar.gz", tmp_path / "b")
    assert (info["ref"], info["commit"]) == ("main", "f" * 40)
    with pytest.raises(SystemExit, match="not the given"):
        sources.prepare_source(tmp_path / "d2.tar.gz", tmp_path / "c", commit="abc")


def test_tarball_that_does_not_match_its_sha256sums_is_refused(tmp_path):
    make_tarball(tmp_path / "d2.tar.gz", fake_tree(tmp_path / "tree"))
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  d2.tar.gz\n")
    with pytest.raises(SystemExit, match="damaged"):
        sources.prepare_source(tmp_path / "d2.tar.gz", tmp_path / "out")


def test_not_a_detectron2_tree(tmp_path):
    with tarfile.open(tmp_path / "x.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("other/README")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(SystemExit, match="not a Detectron2 source tree"):
        sources.prepare_source(tmp_path / "x.tar.gz", tmp_path / "out")
    with pytest.raises(SystemExit, match="neither"):
        sources.prepare_source(tmp_path / "missing", tmp_path / "out2")


def test_clone_fetches_exactly_the_pinned_commit(tmp_path, monkeypatch):
    """A clone of a local repository stands in for github.com: the pinned commit, not the
    branch tip, is what gets built."""
    pinned = git_repo(tmp_path / "upstream")
    (tmp_path / "upstream" / "later.txt").write_text("a later commit\n")
    subprocess.run([*GIT, "-C", str(tmp_path / "upstream"), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(tmp_path / "upstream"), "commit", "-qm", "two"], check=True)
    monkeypatch.setitem(sources.PINNED_COMMITS, "main", pinned)
    url = f"file://{tmp_path / 'upstream'}"
    assert sources.clone_pinned("main", tmp_path / "clone", url=url) is None
    info = sources.prepare_source(tmp_path / "clone", tmp_path / "build")
    assert info["commit"] == pinned and not (tmp_path / "build" / "later.txt").exists()


def test_clone_from_an_unreachable_host_says_why_in_one_line(tmp_path):
    why = sources.clone_pinned("main", tmp_path / "clone", url=str(tmp_path / "no-such-repo"))
    assert why and "\n" not in why and "no-such-repo" in why


def test_find_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    found, why = sources.find_compiler()
    assert not found and "no-such-compiler-xyz" in why and "install g++" in why
    monkeypatch.delenv("CXX")
    found, why = sources.find_compiler()
    assert found == (shutil.which("c++") is not None), why


def test_cuda_plan_says_which_ops():
    import torch

    cuda, why = sources.cuda_plan()
    if not torch.cuda.is_available():
        assert not cuda and why.startswith("CPU ops only")


# The fixes each real upstream tree gets (the snapshots in ../shared/detectron2/).


def shared_tree(name, tmp_path):
    tarball = SHARED / f"detectron2-{name}.tar.gz"
    if not tarball.is_file():
        pytest.skip(f"{tarball} is not here (CI and the project machine have it)")
    info = sources.prepare_source(tarball, tmp_path / name)
    assert info["commit"] == sources.PINNED_COMMITS[name]  # known by its sha256
    return tmp_path / name


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", ["main", "v0.6"])
def test_upstream_trees_get_only_the_fixes_they_need(tmp_path, name, compiled):
    tree = shared_tree(name, tmp_path)
    changed = patches.patch_checkout(tree, compiled=compiled)
    files = {getattr(fix, "path", None) or fix.glob for fix in patches.COMPAT_FIXES}
    expected = {"detectron2/model_zoo/model_zoo.py"} if name == "main" else files
    assert set(changed) - {"_C stand-in", "no extension"} == expected
    assert ("_C stand-in" in changed) == (not compiled)
    assert ("ext_modules=get_extensions()" in (tree / "setup.py").read_text()) == compiled
    assert "pkg_resources" not in (tree / "detectron2/model_zoo/model_zoo.py").read_text()
    for path in (tree / "detectron2").rglob("*.py"):  # every patched file still parses
        py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    assert patches.patch_checkout(tree, compiled=True) == []  # nothing left to fix
