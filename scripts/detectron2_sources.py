"""Where the installer gets a Detectron2 source tree, and whether it can compile one.

A source tree comes from a checkout folder, a source tarball (such as the `git archive`
snapshots in ../shared/detectron2/), or a clone of a pinned upstream commit. The tree is always
copied or extracted into a build folder first: the user's checkout is never patched or built in
place. `find_compiler` and `cuda_plan` say whether (and with which ops) `detectron2._C` can be
compiled here. No pip and no Detectron2 import here; `scripts/install_detectron2.py` decides.
"""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sysconfig
import tarfile

UPSTREAM_URL = "https://github.com/facebookresearch/detectron2.git"
# The upstream commits the installer clones when no source is given (`--ref`, default main):
# the two ms-rcnn's suite is run on (docs/DETECTRON2_VERSIONS.md). Move a pin only together
# with that build matrix, after running the suite on the new commit.
PINNED_COMMITS = {
    "main": "02b5c4e295e990042a714712c21dc79b731e8833",  # 2026-06-06
    "v0.6": "d1e04565d3bec8719335b88be9e9b961bf3ec464",  # tag v0.6
}
# Source tarballs whose commit is known (a `git archive` has no .git to ask): sha256 -> (ref,
# commit). These are the snapshots in ../shared/detectron2/ (its README lists the same).
KNOWN_TARBALLS = {
    "ea059d0b69d9f1392b74f35a4cf57d485fe254b445337a84b08bc49f333f0218": (
        "main",
        PINNED_COMMITS["main"],
    ),
    "c046e937dea4cc77770fd514c9e47cde9011eb1b26103bc0e87a55e7dc4ffc2c": (
        "v0.6",
        PINNED_COMMITS["v0.6"],
    ),
}
# Seconds for the whole fetch of one commit (a shallow fetch is ~10 MB); an unreachable host
# fails within a second or two, well before this.
CLONE_TIMEOUT = 600
# Build leftovers and VCS data that must not travel from a user's checkout into the build.
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "*.egg-info", "_C*.so", "__pycache__")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tarball(path):
    """sha256 of the tarball, checked against a SHA256SUMS file beside it when there is one."""
    path = pathlib.Path(path)
    digest = sha256_of(path)
    sums = path.parent / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == path.name and parts[0] != digest:
                raise SystemExit(
                    f"{path}: sha256 {digest}, but {sums} says {parts[0]}; the file is damaged "
                    "or not the one listed: fetch it again"
                )
    return digest


def git_commit(folder):
    """(commit, has local changes) of a git checkout, or (None, False)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)

    if not (pathlib.Path(folder) / ".git").exists() or shutil.which("git") is None:
        return None, False
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None, False
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return head.stdout.strip(), dirty


def prepare_source(spec, dest, commit=None):
    """Copy the checkout or extract the tarball `spec` into `dest` (which must not exist).

    Returns what is known about it: {"source", "ref", "commit", "local_changes"}; `commit`
    (given by the user) is used when the tree itself cannot tell.
    """
    spec = pathlib.Path(spec).expanduser().resolve()
    dest = pathlib.Path(dest)
    info = {"source": str(spec), "ref": None, "commit": None, "local_changes": False}
    if spec.is_dir():
        info["commit"], info["local_changes"] = git_commit(spec)
        shutil.copytree(spec, dest, ignore=COPY_IGNORE, symlinks=True)
    elif spec.is_file() and tarfile.is_tarfile(spec):
        digest = check_tarball(spec)
        info["ref"], info["commit"] = KNOWN_TARBALLS.get(digest, (None, None))
        extract_tree(spec, dest)
    else:
        raise SystemExit(
            f"DETECTRON2_SRC={spec}: neither a Detectron2 checkout folder nor a source tarball"
        )
    if commit and info["commit"] and commit != info["commit"]:
        raise SystemExit(f"{spec} is at commit {info['commit']}, not the given {commit}")
    info["commit"] = info["commit"] or commit
    if not (dest / "setup.py").is_file() or not (dest / "detectron2" / "__init__.py").is_file():
        raise SystemExit(f"{spec} is not a Detectron2 source tree (no setup.py or detectron2/)")
    return info


def extract_tree(tarball, dest):
    """Extract a tarball holding one top folder (`detectron2-main/`) as `dest`."""
    dest = pathlib.Path(dest)
    unpack = dest.parent / (dest.name + ".unpack")
    with tarfile.open(tarball) as tar:
        tar.extractall(unpack, filter="data")
    tops = list(unpack.iterdir())
    top = tops[0] if len(tops) == 1 and tops[0].is_dir() else unpack
    shutil.move(str(top), str(dest))
    shutil.rmtree(unpack, ignore_errors=True)


def clone_pinned(ref, dest, url=None):
    """Fetch the pinned commit of `ref` into `dest`: None on success, else why not (one line).

    A shallow fetch of exactly that commit (GitHub serves any commit by its id), so the tree
    is the pinned one even after the branch moves on.
    """
    url = url or os.environ.get("MS_RCNN_DETECTRON2_GIT_URL", UPSTREAM_URL)
    commit = PINNED_COMMITS[ref]
    if shutil.which("git") is None:
        return "git is not installed"
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # fail instead of asking for a password
    steps = [
        ["git", "init", "-q", str(dest)],
        ["git", "-C", str(dest), "fetch", "-q", "--depth", "1", url, commit],
        ["git", "-C", str(dest), "checkout", "-q", "FETCH_HEAD"],
    ]
    for cmd in steps:
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=CLONE_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return f"git fetch from {url} took more than {CLONE_TIMEOUT} s"
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            return f"{url}: " + (lines[-1].strip() if lines else f"git exited {proc.returncode}")
    return None


def find_compiler():
    """(True, "g++ 12.2.0 (/usr/bin/c++)") if a C++ compiler and Python's headers are here,
    else (False, why not). torch's extension builder uses $CXX, else `c++`."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        return False, f"no C++ compiler ({name!r} is not on PATH; install g++, or set CXX)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{path} does not run ({e})"
    if out.returncode != 0:
        return False, f"{path} --version exited {out.returncode}"
    header = pathlib.Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return False, f"no Python headers ({header} is missing; install python3-dev)"
    first = (out.stdout.splitlines() or ["?"])[0]
    return True, f"{first} ({path})"


def cuda_plan():
    """(CUDA ops will be built, one line saying why). Detectron2's setup.py builds them when
    torch sees a CUDA device and a CUDA toolkit (CUDA_HOME), or when FORCE_CUDA=1."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA") == "1":
        return True, f"FORCE_CUDA=1: building CUDA ops too (toolkit: {CUDA_HOME})"
    if not torch.cuda.is_available():
        return False, f"CPU ops only: torch {torch.__version__} sees no CUDA device"
    if CUDA_HOME is None:
        return False, (
            f"CPU ops only: torch sees CUDA {torch.version.cuda} but no CUDA toolkit (nvcc; "
            "set CUDA_HOME) to compile the CUDA ops with"
        )
    return True, f"CUDA ops too: torch sees CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"
