"""Generate, cache and describe the synthetic instance-segmentation dataset (COCO format).

Layout on disk::

    root/name/annotations.json   COCO instances; json["info"]["generator"] holds the parameters
    root/name/images/000001.png  one RGB PNG per image, named by its 1-based image id

A dataset directory only ever appears by renaming a finished temporary directory, so an
interrupted run never leaves an ``annotations.json`` that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from .masks import encode_rle, mask_bbox, mask_to_polygons
from .render import SceneConfig, render_scene
from .shapes import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "MASK_FORMATS",
    "dataset_paths",
    "generate_synthetic_dataset",
    "generation_params",
]

# Bump whenever the same parameters would produce different data, so stale caches regenerate.
GENERATOR_VERSION = 1
MASK_FORMATS = ("rle", "polygon")
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"


def dataset_paths(root: str, name: str) -> tuple[str, str]:
    """Return ``(json_file, image_root)`` of dataset `name` under `root`."""
    base = os.path.join(os.path.abspath(root), name)
    return os.path.join(base, "annotations.json"), os.path.join(base, "images")


def generation_params(
    num_images: int,
    seed: int,
    image_size: int = 128,
    mask_format: str = "rle",
    min_instances: int = 1,
    max_instances: int = 6,
) -> dict:
    """The parameters that determine the dataset's content; stored in and compared to the JSON.

    Raises:
        ValueError: on an unknown mask format or out-of-range values.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if num_images < 1 or image_size < 32 or not 1 <= min_instances <= max_instances:
        raise ValueError(
            f"bad parameters: num_images={num_images}, image_size={image_size}, "
            f"instances={min_instances}..{max_instances}"
        )
    return {
        "version": GENERATOR_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "mask_format": mask_format,
        "min_instances": int(min_instances),
        "max_instances": int(max_instances),
        "classes": list(CLASS_NAMES),
    }


def _render_chunk(params: dict, image_dir: str, indices: list[int]) -> list[tuple[int, list]]:
    """Render and save images `indices`; return their annotations without ids (picklable)."""
    cfg = SceneConfig(
        image_size=params["image_size"],
        min_instances=params["min_instances"],
        max_instances=params["max_instances"],
    )
    results = []
    for index in indices:
        # One generator per image, keyed by (seed, index): images are independent of the
        # order and the process they are generated in.
        rng = np.random.default_rng([params["seed"], index])
        image, instances = render_scene(rng, cfg)
        Image.fromarray(image).save(
            os.path.join(image_dir, f"{index + 1:06d}.png"), compress_level=6
        )
        anns = []
        for inst in instances:
            if params["mask_format"] == "rle":
                segm = encode_rle(inst.mask)
            else:
                segm = mask_to_polygons(inst.mask)
            anns.append(
                {
                    "category_id": inst.category + 1,
                    "segmentation": segm,
                    "area": float(inst.mask.sum()),
                    "bbox": mask_bbox(inst.mask),
                    "iscrowd": 0,
                }
            )
        results.append((index, anns))
    return results


def _render_all(params: dict, image_dir: str, num_workers: int) -> list[tuple[int, list]]:
    indices = list(range(params["num_images"]))
    if num_workers <= 1 or len(indices) < 64:
        return _render_chunk(params, image_dir, indices)
    chunks = [indices[i::num_workers] for i in range(num_workers)]
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        n = len(chunks)
        parts = list(pool.map(_render_chunk, [params] * n, [image_dir] * n, chunks))
    return sorted((item for part in parts for item in part), key=lambda item: item[0])


def _coco_json(params: dict, rendered: list[tuple[int, list]]) -> dict:
    size = params["image_size"]
    images, annotations = [], []
    for index, anns in rendered:
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": f"{image_id:06d}.png", "width": size, "height": size}
        )
        for ann in anns:
            # Ids start at 1: COCOeval uses 0 to mean "unmatched".
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return {
        "info": {
            "description": "ms-rcnn synthetic shapes (ms_rcnn.data.generate_synthetic_dataset)",
            "generator": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)
        ],
    }


def _is_cached(json_file: str, image_root: str, params: dict) -> bool:
    try:
        with open(json_file) as f:
            info = json.load(f).get("info", {})
        count = sum(1 for entry in os.scandir(image_root) if entry.name.endswith(".png"))
    except (OSError, ValueError):
        return False
    return info.get("generator") == params and count == params["num_images"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: str, name: str) -> None:
    """Delete leftovers of interrupted runs (temp dirs whose writing process has died)."""
    # Anchored, so that leftovers of a dataset called e.g. "shapes-2" never match "shapes".
    pattern = re.compile(
        f"(?:{re.escape(_TMP_PREFIX)}|{re.escape(_OLD_PREFIX)}){re.escape(name)}-(\\d+)-[0-9a-f]{{8}}"
    )
    for entry in os.scandir(root):
        match = pattern.fullmatch(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)


def generate_synthetic_dataset(
    root: str,
    name: str,
    num_images: int,
    seed: int,
    image_size: int = 128,
    mask_format: str = "rle",
    min_instances: int = 1,
    max_instances: int = 6,
    num_workers: int = 1,
    overwrite: bool = False,
) -> str:
    """Generate dataset `name` under `root`, or reuse it if it already matches the parameters.

    The content depends only on the parameters below (not on `root`, `name` or
    `num_workers`): the same seed gives a byte-identical JSON and identical images, another
    seed gives other data.

    Args:
        root: directory that holds datasets; created if missing.
        name: dataset directory name.
        num_images: number of images.
        seed: random seed.
        image_size: side of the square images in pixels.
        mask_format: ``"rle"`` (compressed COCO RLE) or ``"polygon"``. Both are exact: polygon
            masks keep holes and split pieces through keyhole polygons that pycocotools
            rasterizes back to the identical mask (see `ms_rcnn.data.masks`).
        min_instances: fewest instances per image.
        max_instances: most shapes drawn per image; occlusion may remove some.
        num_workers: processes to render with; the output does not depend on it.
        overwrite: regenerate even if a matching dataset exists.

    Returns:
        Path of ``root/name/annotations.json``.
    """
    params = generation_params(
        num_images, seed, image_size, mask_format, min_instances, max_instances
    )
    json_file, image_root = dataset_paths(root, name)
    if not overwrite and _is_cached(json_file, image_root, params):
        return json_file

    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    _remove_stale(root, name)
    tag = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_dir = os.path.join(root, _TMP_PREFIX + tag)
    os.makedirs(os.path.join(tmp_dir, "images"))
    try:
        rendered = _render_all(params, os.path.join(tmp_dir, "images"), num_workers)
        with open(os.path.join(tmp_dir, "annotations.json"), "w") as f:
            json.dump(_coco_json(params, rendered), f, separators=(",", ":"))
        _publish(
            tmp_dir,
            os.path.dirname(json_file),
            os.path.join(root, _OLD_PREFIX + tag),
            lambda: _is_cached(json_file, image_root, params),
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_file


def _publish(tmp_dir: str, final_dir: str, old_dir: str, is_current) -> None:
    """Move the finished `tmp_dir` to `final_dir`, replacing an outdated dataset there."""
    if os.path.exists(final_dir):
        if is_current():
            return  # a concurrent run published the same data first
        extra = set(os.listdir(final_dir)) - {"annotations.json", "images"}
        if extra:
            # Never delete a directory that this module did not write.
            raise FileExistsError(f"{final_dir} exists and holds other files: {sorted(extra)}")
        # Renames are atomic; in the moment where neither directory exists, a reader finds no
        # dataset and regenerates, it never trusts a partial one.
        with contextlib.suppress(FileNotFoundError):
            os.rename(final_dir, old_dir)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if not is_current():
            raise
    finally:
        shutil.rmtree(old_dir, ignore_errors=True)
