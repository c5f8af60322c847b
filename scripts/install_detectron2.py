#!/usr/bin/env python
"""Install Detectron2 into the running Python environment: compiled where it can be.

Detectron2 publishes nothing on PyPI; users build it from a git checkout, which compiles its
C++ extension `detectron2._C`. This script, run by `make setup`:

1. installs the libraries Detectron2 imports only where it needs them and does not declare:
   OpenCV as `opencv-python-headless` unless some OpenCV already imports, and shapely; fvcore
   is brought to the range in constraints.txt;
2. keeps an already working Detectron2 (for example one you built yourself), unless it is a
   stand-in build made by an older version of this script (FALLBACK_FINGERPRINT); it never
   replaces a working Detectron2 it did not build without `--force`;
3. otherwise builds one, with its real compiled ops when it has a source tree and a C++
   compiler (CUDA ops too when torch sees CUDA and a CUDA toolkit):
   - `--source PATH`: a Detectron2 checkout or source tarball (e.g.
     ../shared/detectron2/detectron2-main.tar.gz); copied or extracted, never built in place;
   - no `--source`: a shallow clone of the pinned upstream commit of `--ref` (main by
     default, or v0.6; PINNED_COMMITS in scripts/detectron2_sources.py), where git reaches
     github.com;
   - without sources or compiler (or with `--no-ops`): PyPI's `pb1-detectron2` sdist (upstream
     v0.6's Python package without `detectron2/layers/csrc/`), sha256-checked, built with a
     pure-Python `detectron2/_C.py` standing in for the compiled ops, and a line saying so.
   Every build gets the fixes its tree still needs (COMPAT_FIXES, scripts/detectron2_patches.py:
   v0.6's lines that fail on today's NumPy, Pillow, setuptools, torch; main's pkg_resources)
   and a `detectron2/_ms_rcnn_build.py` recording source, commit and ops.

A smoke test (scripts/detectron2_smoke.py) checks the result, or an already installed
Detectron2: its core, its compiled ops, its model zoo, COCO evaluation, then ms-rcnn's configs
and evaluator from this checkout. A failure names the step and says what to do.

Usage: python scripts/install_detectron2.py [--force] [--source PATH [--commit SHA]]
           [--ref main|v0.6] [--no-ops] [--editable]
"""

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SDIST_NAME = "pb1-detectron2"
DIST_NAMES = ("detectron2", SDIST_NAME)

# The helpers live next to this script (scripts/ is on sys.path when it runs as a script; added
# here for the tests, which load it by file path).
if str(pathlib.Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from detectron2_patches import (  # noqa: E402
    FALLBACK_FINGERPRINT,
    SDIST_SHA256,
    checkout_fingerprint,
    patch_checkout,
    patch_source,
    write_build_marker,
)
from detectron2_smoke import (  # noqa: E402, F401  (the tests reach them through here)
    FALLBACK_PROBE,
    FEATURES_TEST,
    INSTALLED_PROBE,
    run_smoke_test,
    what_to_do,
)
from detectron2_sources import (  # noqa: E402
    PINNED_COMMITS,
    clone_pinned,
    cuda_plan,
    find_compiler,
    prepare_source,
)
from pins import CONSTRAINTS, pinned  # noqa: E402

# Detectron2 imports these lazily, where it needs them, and does not declare them. Module name
# -> the package installed (with its constraints.txt pin) when the module does not import. A
# user's own OpenCV build (opencv-python, opencv-contrib-python) is kept: a second OpenCV
# package would overwrite its cv2.
OPTIONAL_DEPENDENCIES = {"cv2": "opencv-python-headless", "shapely": "shapely"}


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def probe(code):
    proc = run_python(code)
    if proc.returncode != 0:
        raise SystemExit("could not inspect the installed Detectron2:\n" + proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def working_detectron2(just_installed=False):
    """True if this interpreter imports a Detectron2 that passes the smoke test.

    False if there is none, or one whose core is broken (then ours replaces it). A Detectron2
    whose core works but that fails a later step is the user's own choice to keep: stop and
    say what to do instead of replacing it.
    """
    step, detail, error = run_smoke_test(ROOT)
    if step is None:
        log("found a working " + detail)
        return True
    if step == "core" and not just_installed:
        if "No module named 'detectron2'" not in error:
            log("an installed Detectron2 fails the smoke test; replacing it:\n" + error[-2000:])
        return False
    where = f"{step} {detail}".strip()
    raise SystemExit(
        f"{error[-2500:]}\n[install_detectron2] Detectron2 fails the smoke test at step "
        f"'{where}'.\nWhat to do: {what_to_do(step, detail, error)}"
        + ("" if just_installed else "\n(`--force` replaces it with a new build instead.)")
    )


def stale_fallback():
    """True if the installed Detectron2 is a fallback built with other fixes than this script's."""
    found = probe(FALLBACK_PROBE)
    if found["fallback"] and found["fingerprint"] != FALLBACK_FINGERPRINT:
        log(
            f"the installed {SDIST_NAME} fallback was built by an older version of this script "
            f"(fingerprint {found['fingerprint']}, now {FALLBACK_FINGERPRINT}); rebuilding it"
        )
        return True
    return False


def warn_if_stale_build():
    """A checkout build this script made with other fixes than today's: say how to rebuild it
    (its source may be gone, e.g. a clone's temporary folder, so it is not rebuilt here)."""
    build = probe(INSTALLED_PROBE)["build"]
    if build and build.get("fingerprint") != checkout_fingerprint():
        log(
            f"warning: the installed Detectron2 was built from {build.get('source')} by an older "
            "version of this script (other fixes); rebuild it: make setup DETECTRON2_SRC=<that "
            "source> (or --source PATH --force)"
        )


def may_replace_installed(force):
    """Before building from --source: True unless a Detectron2 this script did not build is
    installed and its core works (then refuse, naming it, unless --force)."""
    found = probe(INSTALLED_PROBE)
    if not found["present"] or found["ours"] or force:
        if found["present"]:
            log(f"replacing the Detectron2 at {found['path']}" + (" (--force)" if force else ""))
        return True
    step, _, _ = run_smoke_test(ROOT)
    if step == "core":
        log(f"the Detectron2 at {found['path']} does not import; replacing it")
        return True
    raise SystemExit(
        f"[install_detectron2] a working Detectron2 that this script did not build is installed "
        f"at {found['path']}; it is left as it is. Use another venv (VENV=... for make), or pass "
        "--force to replace it with the build from --source."
    )


def install_dependencies():
    missing = [
        package
        for module, package in OPTIONAL_DEPENDENCIES.items()
        if run_python(f"import {module}").returncode != 0
    ]
    # fvcore too: a kept Detectron2 may sit beside an fvcore older than constraints.txt allows.
    pip("install", "-c", str(CONSTRAINTS), "fvcore", *missing)


def check_features():
    """Visualizer, PointRend and polygon crops work; a failure is fatal only for our builds."""
    proc = run_python(FEATURES_TEST)
    if proc.returncode == 0:
        return
    msg = "Detectron2's Visualizer, PointRend or polygon crop fails:\n" + proc.stderr[-2000:]
    if probe(INSTALLED_PROBE)["ours"]:
        raise SystemExit(msg)
    log("warning (your own Detectron2 build is kept as it is): " + msg)


def check_ops(compiled):
    """After a build: the ops are what was built (the smoke test already ran a compiled one)."""
    code = "import json, ms_rcnn.env as e; print(json.dumps(e.detectron2_build()))"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", code]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path)
    )
    build = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    want = "compiled" if compiled else "stand-in"
    if build.get("ops") != want:
        raise SystemExit(
            f"[install_detectron2] built Detectron2 with {want} ops, but detectron2._C is "
            f"{build.get('ops', 'not importable')}:\n{proc.stderr[-2000:]}"
        )


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True)


def replace_installed(tree, dist_name, editable=False):
    """pip-install the source tree `tree` (distribution `dist_name`), then remove the other
    Detectron2 distribution if one is installed (the v0.6 fallback when a compiled main comes
    in, or the reverse): two owners of the same files would break each other's uninstall.

    Whatever is installed stays until the new build has compiled: a regular build is made into
    a wheel first; an editable one writes nothing into site-packages' detectron2/ folder, so the
    other distribution can go after it.
    """
    # --no-build-isolation: setup.py imports torch. --use-pep517: with pip 23.2 and setuptools
    # >= 80, `-e` otherwise goes through setuptools' `develop`, which re-runs pip with build
    # isolation (no torch there) and fails before compiling.
    flags = ["--no-build-isolation", "--use-pep517", "-c", str(CONSTRAINTS)]
    if editable:
        pip("install", *flags, "-e", str(tree))  # replaces a `detectron2` install itself
        others = [name for name in probe(INSTALLED_PROBE)["dists"] if name != dist_name]
        if others:
            pip("uninstall", "-y", *others)
        return
    with tempfile.TemporaryDirectory(prefix="d2-wheel-") as wheels:
        pip("wheel", "--no-deps", *flags, "-w", wheels, str(tree))
        # All of them: pip would keep an installed detectron2 of the same version number.
        installed = probe(INSTALLED_PROBE)["dists"]
        if installed:
            pip("uninstall", "-y", *installed)
        (wheel,) = pathlib.Path(wheels).glob("*.whl")
        pip("install", "-c", str(CONSTRAINTS), str(wheel))


def new_editable_tree():
    """A new folder for an editable build's tree, inside the venv like pip's own src/ (the one
    installed now stays until the new one is built; `drop_old_editable_trees` removes it)."""
    parent = pathlib.Path(sys.prefix) / "src"
    parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix="detectron2-", dir=parent)) / "detectron2"


def drop_old_editable_trees(keep=None):
    for old in (pathlib.Path(sys.prefix) / "src").glob("detectron2-*"):
        if keep is None or old != keep.parent:
            shutil.rmtree(old, ignore_errors=True)


def install_tree(tree, info, compiled, editable):
    """Patch the tree (a copy), record what it is, and pip-install it."""
    changed = patch_checkout(tree, compiled=compiled)
    log("patched the copy: " + (", ".join(changed) or "nothing needed"))
    cuda = False
    if compiled:
        cuda, why = cuda_plan()
        log(f"compiling detectron2._C ({why}; about 2 min on 2 cores)")
    write_build_marker(
        tree, ops="compiled" if compiled else "stand-in", cuda_ops=cuda, editable=editable,
        **{k: info[k] for k in ("source", "ref", "commit", "local_changes")},
    )  # fmt: skip
    replace_installed(tree, "detectron2", editable=editable)


def install_checkout(source, compiled, editable=False, commit=None):
    """Build the Detectron2 checkout or tarball `source`, from a copy (never in place)."""
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        tree = new_editable_tree() if editable else pathlib.Path(tmp) / "detectron2"
        info = prepare_source(source, tree, commit=commit)
        where = f" at commit {info['commit'][:12]}" if info["commit"] else ""
        log(f"building {info['source']}{where}" + (f" (editable, in {tree})" if editable else ""))
        install_tree(tree, info, compiled, editable)
    drop_old_editable_trees(keep=tree if editable else None)


def install_clone(ref, editable=False):
    """Clone the pinned upstream commit of `ref` and build it with compiled ops. Returns None,
    or why it could not be fetched (then nothing was changed)."""
    with tempfile.TemporaryDirectory(prefix="d2-clone-") as tmp:
        clone = pathlib.Path(tmp) / "detectron2"
        why = clone_pinned(ref, clone)
        if why:
            return f"cannot fetch upstream Detectron2 {ref} ({why})"
        install_checkout(clone, compiled=True, editable=editable)
        return None


def extract_sdist(sdist, dest):
    """Extract the sdist into `dest`, on every Python setup.py allows (>=3.9).

    Each member is checked first, whatever the Python: only files and folders, with relative
    paths that stay inside `dest` (an sdist needs no link or device; a link, an absolute path,
    a `..` that leaves `dest` is an error naming the member). tarfile's "data" filter, in
    Python 3.12 and the 3.9.17 / 3.10.12 / 3.11.4 patch releases, then applies on top; older
    patch releases have no `filter` argument, so this does what the filter would do to the
    checked members: no setuid/setgid/sticky bit nor group/other write permission, and the
    files owned by whoever runs the script.
    """
    dest = pathlib.Path(dest).resolve()
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
        for member in members:
            if not (member.isfile() or member.isdir()):
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise SystemExit(f"{sdist.name}: refused: member {member.name} is a {kind}")
            target = (dest / member.name).resolve()
            if pathlib.PurePath(member.name).is_absolute() or not target.is_relative_to(dest):
                raise SystemExit(
                    f"{sdist.name}: refused: member {member.name} would be written outside {dest}"
                )
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
            return
        for member in members:
            member.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
            member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        tar.extractall(dest, members=members)


def build_and_install():
    """PyPI's v0.6 sdist, patched, with the pure-Python `_C` stand-in."""
    version = pinned(SDIST_NAME)
    with tempfile.TemporaryDirectory(prefix="d2-build-") as tmp:
        tmp = pathlib.Path(tmp)
        # --no-build-isolation: pip prepares the sdist's metadata with setup.py, which imports
        # torch; torch is installed in this environment (make setup does it first).
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "-d", str(tmp), f"{SDIST_NAME}=={version}")  # fmt: skip
        (sdist,) = tmp.glob("*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise SystemExit(f"{sdist.name}: sha256 {digest}, expected {SDIST_SHA256}")
        extract_sdist(sdist, tmp)
        src = next(p for p in tmp.iterdir() if p.is_dir())
        log("patched: " + ", ".join(patch_source(src)))
        replace_installed(src, SDIST_NAME)
    drop_old_editable_trees()


STAND_IN = "installing PyPI's Detectron2 v0.6 with the pure-Python stand-in for its compiled ops"


def build_default(args):
    """No --source: clone and compile the pinned commit where possible, else the PyPI build.
    Returns whether the ops are compiled."""
    if args.no_ops:
        log(f"--no-ops: {STAND_IN}")
    else:
        compiler, about = find_compiler()
        why = about if not compiler else install_clone(args.ref, editable=args.editable)
        if why is None:
            return True
        if compiler:
            why += " and no DETECTRON2_SRC given"
        log(f"{why}: {STAND_IN}")
    build_and_install()
    return False


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--force", action="store_true", help="build even if a working Detectron2 is installed, "
        "and replace one this script did not build",
    )  # fmt: skip
    parser.add_argument(
        "--source", metavar="PATH", help="build this Detectron2 checkout or source tarball "
        "(e.g. ../shared/detectron2/detectron2-main.tar.gz); always (re)builds",
    )  # fmt: skip
    parser.add_argument(
        "--commit", help="the commit of --source, where the tree cannot tell (no .git, a tarball "
        "this script does not know); recorded in the build",
    )  # fmt: skip
    parser.add_argument(
        "--ref", choices=sorted(PINNED_COMMITS), default="main",
        help="without --source: the pinned upstream commit to clone and compile (default main)",
    )  # fmt: skip
    parser.add_argument(
        "--no-ops", action="store_true", help="build without compiled ops (the pure-Python "
        "stand-in for detectron2._C), even where a compiler is there",
    )  # fmt: skip
    parser.add_argument(
        "--editable", action="store_true", help="install the built tree in editable mode "
        "(`pip install -e`, as from a checkout); the tree is kept in <venv>/src/detectron2",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    install_dependencies()
    compiled = None  # None: nothing built, a working Detectron2 kept
    if args.source:
        compiler, about = (False, "--no-ops") if args.no_ops else find_compiler()
        if not compiler:
            log(f"{about}: building {args.source} with the pure-Python stand-in for its ops")
        may_replace_installed(args.force)
        install_checkout(args.source, compiler, editable=args.editable, commit=args.commit)
        compiled = compiler
    elif args.force or stale_fallback() or not working_detectron2():
        compiled = build_default(args)
    else:
        warn_if_stale_build()
    working_detectron2(just_installed=True)
    if compiled is not None:
        check_ops(compiled)
    check_features()


if __name__ == "__main__":
    main()
