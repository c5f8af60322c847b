"""Command line of `ms-rcnn-make-dataset` (tools/make_synthetic_dataset.py): generate (or reuse)
a synthetic instance-segmentation dataset in COCO format."""

import argparse
import os
import time

from ..env import add_version_argument

__all__ = ["main"]

EXAMPLES = """example:
  %(prog)s --root datasets --name shapes --num-images 1000 --seed 1 --preview preview.png
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate (or reuse) a synthetic instance-segmentation dataset in COCO format.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_version_argument(parser)
    parser.add_argument("--root", default="datasets", help="directory that holds datasets")
    parser.add_argument("--name", required=True, help="dataset directory name under --root")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--mask-format", choices=("rle", "polygon"), default="rle")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--max-instances", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if cached")
    parser.add_argument("--preview", metavar="PNG", help="also write a preview grid here")
    args = parser.parse_args(argv)

    # Imported on use: --help and --version need neither renderer.
    from .preview import render_preview
    from .synthetic import dataset_paths, generate_synthetic_dataset

    json_path, image_root = dataset_paths(args.root, args.name)
    before = os.path.getmtime(json_path) if os.path.exists(json_path) else None
    start = time.perf_counter()
    json_file = generate_synthetic_dataset(
        args.root,
        args.name,
        num_images=args.num_images,
        seed=args.seed,
        image_size=args.image_size,
        mask_format=args.mask_format,
        max_instances=args.max_instances,
        num_workers=args.workers,
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - start
    reused = before is not None and os.path.getmtime(json_file) == before
    print(f"annotations: {json_file}")
    print(f"images:      {image_root}")
    action = "reused the cached dataset" if reused else f"generated {args.num_images} images"
    print(f"{action} in {elapsed:.2f} s")
    if args.preview:
        print(f"preview:     {render_preview(json_file, image_root, args.preview)}")
    return 0
