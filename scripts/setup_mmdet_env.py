"""Set up the environment `make check-mmdet` compares ms-rcnn against mmdetection in.

A venv of its own (default .venv-mmdet) that sees the project venv's packages (torch, Detectron2,
ms-rcnn) through a .pth line, plus mmdetection, mmengine and mmcv at the versions pinned in
constraints.txt. mmcv publishes no wheel for this torch, so its sdist is compiled here with the
CPU ops (15-25 minutes on 2 cores) and the wheel is cached, keyed by the torch version it was
built against, so a second setup installs in seconds. Two fixes make it build, each explained
where it is made: an older setuptools in the venv, and a newer C++ standard in mmcv's setup.py.
Re-running with nothing changed does nothing.

    python scripts/setup_mmdet_env.py --venv .venv-mmdet --base .venv
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pins import CONSTRAINTS, pinned

REPO = Path(__file__).resolve().parents[1]
# mmcv 2.1.0's setup.py does `from pkg_resources import ...`; setuptools 81 removed
# pkg_resources, so the build (which runs in this venv, without isolation) needs an older one.
BUILD_TOOLS = ["setuptools<81", "wheel"]
# What mmengine and mmdetection import at model build and inference, besides what the project
# venv already has (numpy, matplotlib, pycocotools, shapely, termcolor, OpenCV). Installed by
# name, not through their requirements, because mmengine requires opencv-python, which would
# install a second cv2 over the project's opencv-python-headless.
RUNTIME_DEPS = ["addict", "rich", "yapf", "terminaltables", "scipy", "six"]


def run(*cmd, **kwargs):
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def python_says(python: Path, code: str) -> str:
    """What `python -c code` prints (for the venvs' paths and versions)."""
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def purelib(python: Path) -> str:
    return python_says(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")


def make_venv(venv: Path, base: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        run(sys.executable, "-m", "venv", venv)
    # addsitedir (not a bare path) so the base venv's own .pth files run too: ms-rcnn's
    # editable install is one of them.
    line = f"import site; site.addsitedir({purelib(base / 'bin' / 'python')!r})\n"
    (Path(purelib(python)) / "ms_rcnn_base_venv.pth").write_text(line)
    return python


def patch_mmcv_setup(source: Path) -> None:
    """torch 2.14's C++ headers need C++20; mmcv 2.1.0 compiles its ops with -std=c++17."""
    setup_py = source / "setup.py"
    text = setup_py.read_text()
    if "-std=c++17" not in text:
        sys.exit(f"{setup_py}: no -std=c++17 to replace; is this the pinned mmcv sdist?")
    setup_py.write_text(text.replace("-std=c++17", "-std=c++20"))


def build_mmcv(python: Path, version: str, cache: Path, jobs: int) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    built = sorted(cache.glob(f"mmcv-{version}-*.whl"))
    if built:
        print(f"mmcv {version}: cached wheel {built[-1]}")
        return built[-1]
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        tmp = Path(tmp)
        # --no-build-isolation: pip prepares the sdist's metadata with this venv's setuptools<81
        # (an isolated build would take the newest setuptools and fail on pkg_resources).
        run(python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--no-build-isolation", f"mmcv=={version}", "-d", tmp)  # fmt: skip
        (sdist,) = tmp.glob(f"mmcv-{version}.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        source = tmp / f"mmcv-{version}"
        patch_mmcv_setup(source)
        env = {**os.environ, "MMCV_WITH_OPS": "1", "FORCE_CUDA": "0", "MAX_JOBS": str(jobs)}
        print(f"Compiling mmcv {version} with CPU ops ({jobs} jobs; 15-25 min on 2 cores)")
        run(python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", source,
            "-w", cache, env=env)  # fmt: skip
    (wheel,) = cache.glob(f"mmcv-{version}-*.whl")
    return wheel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-mmdet")
    parser.add_argument("--base", type=Path, default=REPO / ".venv", help="the project venv")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ms-rcnn",
        help="where the compiled mmcv wheel is kept (per torch version)",
    )
    args = parser.parse_args(argv)
    if not (args.base / "bin" / "python").exists():
        sys.exit(f"{args.base}: no project venv there (run `make setup` first)")
    python = make_venv(args.venv.resolve(), args.base.resolve())
    torch = python_says(python, "import torch; print(torch.__version__)")
    versions = {name: pinned(name) for name in ("mmdet", "mmcv", "mmengine")}
    state = json.dumps({"torch": torch, "base": str(args.base.resolve()), **versions})
    stamp = args.venv / ".ms_rcnn_mmdet_stamp"
    if stamp.exists() and stamp.read_text() == state:
        print(f"{args.venv}: mmdet {versions['mmdet']} environment up to date")
        return 0
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    run(*pip, *BUILD_TOOLS)
    wheel = build_mmcv(python, versions["mmcv"], args.cache / "mmcv" / torch, args.jobs)
    run(*pip, "--no-deps", wheel)
    run(*pip, "--no-deps", "-c", CONSTRAINTS, "mmengine", "mmdet")
    run(*pip, "-c", CONSTRAINTS, *RUNTIME_DEPS)
    smoke = (
        "import mmcv, mmdet, mmengine, detectron2, ms_rcnn; from mmcv.ops import RoIAlign, nms; "
        "print('mmdet', mmdet.__version__, 'mmcv', mmcv.__version__, 'mmengine', "
        "mmengine.__version__, 'detectron2', detectron2.__version__)"
    )
    run(python, "-c", smoke)
    stamp.write_text(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
