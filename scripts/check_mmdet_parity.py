"""Does a converted mmdetection MS R-CNN predict what mmdetection predicts? Run `make check-mmdet`.

For R-50 and R-101 caffe-style MS R-CNN, built from mmdetection's own config files: seeded random
weights that detect (scripts/mmdet_parity_peer.py), saved as an mmdetection 3.x checkpoint,
converted by `ms-rcnn-convert --source mmdet`, loaded strictly by ms-rcnn's MSRCNNPredictor. Both
run real COCO photos (../shared/data/coco_tiny val2017) and one photo enlarged 2.5x, which the
test resize shrinks (where PIL's antialiasing and cv2 differ most), in three ways:

- same-tensor: Detectron2 gets mmdetection's preprocessed input tensor, so only the models differ;
- resize=mmdet: each framework reads and resizes the file itself, ms-rcnn with INPUT.RESIZE_STYLE
  "mmdet" (the converted configs' setting): the whole pipelines are compared;
- resize=detectron2: the same with Detectron2's own PIL resize (what a plain Detectron2
  pipeline does), reported to show what the switch changes, with no tolerance.

Stages: input tensor, FPN (P2-P6), RPN proposals, detections (boxes, labels, class scores, mask
scores = class score x IoU), pasted masks. Exit status 1 if a checked mode is out of tolerance.
Runs only where mmdetection imports (scripts/setup_mmdet_env.py); not part of `make test`.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mmdet_parity_peer as peer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
D2_CONFIG = "COCO-InstanceSegmentation/ms_rcnn_R_{depth}_FPN_1x_mmdet_caffe.yaml"
# Tolerances of the checked modes (same-tensor, resize=mmdet). Float32 convolutions in two
# implementations may differ in the last bits; boxes are compared in pixels.
TOLERANCES = {
    "input_max_abs": 0.0,  # pixel levels: the same decode and resize give the same bytes
    "fpn_max_rel": 1e-5,  # max |diff| / max |value|, over P2-P6
    # The 1000 proposals as sets: paired boxes and their scores, unpaired ones explained
    # (_compare_proposals).
    "proposal_box_px": 1e-3,
    "box_px": 1e-3,  # detections at the original size, matched in rank order
    "score_abs": 1e-5,  # class score and mask score
    "mask_pixel_frac": 1e-3,  # differing pasted-mask pixels / mask pixels, over all detections
}
MODES = ("same-tensor", "resize=mmdet", "resize=detectron2")
CHECKED = MODES[:2]


def d2_predictor(depth: int, weights: str, style: str):
    from ms_rcnn.model_zoo import get_config
    from ms_rcnn.predict.predictor import MSRCNNPredictor

    cfg = get_config(D2_CONFIG.format(depth=depth))
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.RESIZE_STYLE = style
    return MSRCNNPredictor(cfg)


def d2_run(predictor, path: str, same: "peer.PeerStages" = None) -> dict:
    """Detectron2's stages for one file, through the predictor's own resize; or, with `same`,
    from mmdetection's preprocessed tensor. The end result is checked against predictor(image)."""
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import ImageList

    model = predictor.model
    if same is None:
        image = read_image(path, format=predictor.input_format)
        height, width = image.shape[:2]
        resized = predictor.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        batched = [{"image": tensor, "height": height, "width": width}]
        images = model.preprocess_image(batched)
    else:
        batched = [{"height": same.original_size[0], "width": same.original_size[1]}]
        images = ImageList(same.inputs[None], [same.image_size])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        results, _ = model.roi_heads(images, features, proposals, None)
        final = model._postprocess(results, batched, images.image_sizes)[0]["instances"]
        if same is None:
            whole = predictor(image)["instances"]
            for key in ("pred_boxes", "scores", "mask_scores", "pred_masks"):
                a, b = final.get(key), whole.get(key)
                a, b = (a.tensor, b.tensor) if key == "pred_boxes" else (a, b)
                if not torch.equal(a, b):
                    raise RuntimeError(f"stage-by-stage run differs from the predictor in {key}")
    h, w = images.image_sizes[0]
    return {
        "inputs": images.tensor[0],
        "image_size": (h, w),
        "features": [features[k][0] for k in ("p2", "p3", "p4", "p5", "p6")],
        "proposal_boxes": proposals[0].proposal_boxes.tensor,
        "proposal_scores": proposals[0].objectness_logits.sigmoid(),
        "boxes": final.pred_boxes.tensor,
        "labels": final.pred_classes,
        "class_scores": final.scores,
        "mask_scores": final.mask_scores,
        "masks": final.pred_masks,
    }


def compare(theirs: "peer.PeerStages", ours: dict) -> dict:
    """Stage-by-stage differences; detections are compared in rank order (both sort by class
    score), so a reordering shows as a box difference, not hidden by matching."""
    out = {"size_mmdet": list(theirs.image_size), "size_d2": list(ours["image_size"])}
    if theirs.inputs.shape == ours["inputs"].shape:
        diff = (theirs.inputs - ours["inputs"]).abs()
        out["input_max_abs"] = float(diff.max())
        out["input_frac_differing"] = float((diff > 0).float().mean())
    else:
        out["input_max_abs"] = float("inf")
    rel = 0.0
    for a, b in zip(theirs.features, ours["features"]):
        if a.shape != b.shape:
            rel = float("inf")
            break
        rel = max(rel, float((a - b).abs().max() / a.abs().max().clamp(min=1e-12)))
    out["fpn_max_rel"] = rel
    out["proposals"] = [len(theirs.proposal_boxes), len(ours["proposal_boxes"])]
    out.update(_compare_proposals(theirs, ours))
    out["detections"] = [len(theirs.boxes), len(ours["boxes"])]
    n = min(out["detections"])
    out["box_px"] = _max_abs(theirs.boxes[:n], ours["boxes"][:n])
    out["labels_equal"] = int((theirs.labels[:n] == ours["labels"][:n]).sum())
    out["class_score_abs"] = _max_abs(theirs.class_scores[:n], ours["class_scores"][:n])
    out["mask_score_abs"] = _max_abs(theirs.mask_scores[:n], ours["mask_scores"][:n])
    out["matched_1px"] = _matched(theirs, ours)
    a, b = theirs.masks[:n].bool(), ours["masks"][:n].bool()
    if a.shape == b.shape:
        out["mask_pixels_differing"] = int((a ^ b).sum())
        out["mask_pixels"] = int((a | b).sum())
        out["masks_differing"] = int((a ^ b).flatten(1).any(1).sum()) if n else 0
    return out


def _max_abs(a, b) -> float:
    return float((a - b).abs().max()) if len(a) else 0.0


def _compare_proposals(theirs, ours) -> dict:
    """Proposals as sets: each box paired with the nearest of the other framework's (within
    1 px), the pairs' largest box and score differences, and the boxes without a pair that
    nothing explains. Two things legitimately make the sets differ: an IoU within 1e-5 of the
    RPN's NMS threshold (float32 rounding decides it; mmcv's nms and torchvision's compute the
    IoU in different orders), and the tail slots such a decision frees or takes. Scores tied to
    the last bit also order the lists differently: counted as `proposals_moved`, no error."""
    a, score_a = theirs.proposal_boxes, theirs.proposal_scores
    b, score_b = ours["proposal_boxes"], ours["proposal_scores"]
    n = min(len(a), len(b))
    moved = int(((a[:n] - b[:n]).abs().amax(1) > 1e-3).sum()) if n else 0
    if not len(a) or not len(b):
        unpaired = len(a) + len(b)
        return {"proposal_box_px": 0.0, "proposal_score_abs": 0.0, "proposals_moved": moved,
                "proposals_unpaired": unpaired, "proposals_unexplained": unpaired}  # fmt: skip
    dist = (a[:, None, :] - b[None, :, :]).abs().amax(-1)
    nearest_b, j = dist.min(1)
    paired = nearest_b <= 1.0
    box_px = float(nearest_b[paired].max()) if paired.any() else 0.0
    score_abs = float((score_a[paired] - score_b[j[paired]]).abs().max()) if paired.any() else 0.0
    only_a = torch.nonzero(~paired).flatten()
    only_b = torch.nonzero(dist.min(0).values > 1.0).flatten()
    unexplained = _unexplained(a, score_a, only_a, b, score_b) + _unexplained(
        b, score_b, only_b, a, score_a
    )
    return {
        "proposal_box_px": box_px,
        "proposal_score_abs": score_abs,
        "proposals_moved": moved,
        "proposals_unpaired": len(only_a) + len(only_b),
        "proposals_unexplained": unexplained,
    }


RPN_NMS_THRESH = 0.7  # MODEL.RPN.NMS_THRESH of the converted configs; mmdetection's rpn nms iou


def _unexplained(boxes, scores, only, other_boxes, other_scores) -> int:
    """How many of `only` (boxes one framework kept and the other did not) are neither at the
    NMS threshold with a higher-scored box the other kept, nor in the tail slots freed."""
    from torchvision.ops import box_iou

    count = 0
    for i in only.tolist():
        higher = other_boxes[other_scores > scores[i]]
        iou = box_iou(boxes[i : i + 1].double(), higher.double())
        at_threshold = iou.numel() > 0 and float((iou - RPN_NMS_THRESH).abs().min()) < 1e-5
        in_tail = i >= len(boxes) - len(only)
        count += not (at_threshold or in_tail)
    return count


def _matched(theirs, ours) -> int:
    """How many of mmdetection's detections have a Detectron2 detection of the same class within
    1 px on every coordinate (in any order): the overlap when the rank-order check fails."""
    if not len(theirs.boxes) or not len(ours["boxes"]):
        return 0
    close = (theirs.boxes[:, None, :] - ours["boxes"][None, :, :]).abs().amax(-1) <= 1.0
    close &= theirs.labels[:, None] == ours["labels"][None, :]
    return int(close.any(1).sum())


def within_tolerance(row: dict) -> bool:
    t = TOLERANCES
    mask_frac = row.get("mask_pixels_differing", np.inf) / max(row.get("mask_pixels", 1), 1)
    return (
        row["input_max_abs"] <= t["input_max_abs"]
        and row["fpn_max_rel"] <= t["fpn_max_rel"]
        and row["proposals"][0] == row["proposals"][1]
        and row["proposal_box_px"] <= t["proposal_box_px"]
        and row["detections"][0] == row["detections"][1]
        and row["labels_equal"] == row["detections"][0]
        and row["box_px"] <= t["box_px"]
        and max(row["class_score_abs"], row["mask_score_abs"]) <= t["score_abs"]
        and row["proposal_score_abs"] <= t["score_abs"]
        and row["proposals_unexplained"] == 0
        and mask_frac <= t["mask_pixel_frac"]
    )


def enlarged_photo(path: str, folder: str, factor: float = 2.5) -> str:
    """A lossless PNG of the photo enlarged `factor` times, so the test resize shrinks it."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    size = (round(image.width * factor), round(image.height * factor))
    out = os.path.join(folder, Path(path).stem + f"_x{factor}.png")
    image.resize(size, Image.Resampling.LANCZOS).save(out)
    return out


def convert(mmdet_file: str, out: str) -> None:
    from ms_rcnn.conversion.cli import main as convert_main

    if convert_main(["--source", "mmdet", mmdet_file, out]) != 0:
        raise SystemExit(f"ms-rcnn-convert failed on {mmdet_file}")


def check_depth(depth: int, args, images, calibration, folder) -> list:
    started = time.perf_counter()
    model, cfg, config_path = peer.build(depth, args.seed, calibration)
    print(f"\n== R-{depth}: mmdetection's own {config_path.split('.mim/')[-1]}")
    mmdet_file = os.path.join(folder, f"mmdet_ms_rcnn_r{depth}.pth")
    peer.save_checkpoint(model, cfg, mmdet_file)
    converted = os.path.join(folder, f"converted_r{depth}.pth")
    convert(mmdet_file, converted)
    predictors = {
        "resize=mmdet": d2_predictor(depth, converted, "mmdet"),
        "resize=detectron2": d2_predictor(depth, converted, "detectron2"),
    }
    predictors["same-tensor"] = predictors["resize=mmdet"]
    rows = []
    for path in images:
        theirs = peer.run(model, peer.preprocess(model, cfg, path))
        for mode in MODES:
            same = theirs if mode == "same-tensor" else None
            row = compare(theirs, d2_run(predictors[mode], path, same))
            row.update(depth=depth, image=os.path.basename(path), mode=mode)
            row["pass"] = within_tolerance(row) if mode in CHECKED else None
            rows.append(row)
    print(f"R-{depth}: {len(images)} images x {len(MODES)} modes in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    return rows


def print_table(rows) -> None:
    head = (
        "| R | image | mode | input max|d| | FPN rel | proposals | prop. px (moved, unpaired) | "
        "dets | rank-order box px | labels | cls score | mask score | matched <=1px | "
        "mask px differing | ok |"
    )
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    for r in rows:
        masks = r.get("mask_pixels_differing")
        ok = {True: "yes", False: "NO", None: "(info)"}[r["pass"]]
        print(
            f"| {r['depth']} | {r['image']} | {r['mode']} | {r['input_max_abs']:.3g} | "
            f"{r['fpn_max_rel']:.2g} | {r['proposals'][0]}/{r['proposals'][1]} | "
            f"{r['proposal_box_px']:.3g} ({r['proposals_moved']}, {r['proposals_unpaired']}) | "
            f"{r['detections'][0]}/{r['detections'][1]} | "
            f"{r['box_px']:.3g} | {r['labels_equal']} | {r['class_score_abs']:.2g} | "
            f"{r['mask_score_abs']:.2g} | {r['matched_1px']}/{r['detections'][0]} | "
            f"{masks} of {r.get('mask_pixels')} | {ok} |"
        )


# The stages print_summary reports by their worst image.
TABLE_MAXIMA = ("input_max_abs", "fpn_max_rel", "proposal_box_px", "box_px", "class_score_abs",
                "mask_score_abs")  # fmt: skip


def print_summary(rows) -> None:
    """One line per depth and mode, over all images: the worst difference of each stage, and
    the detections and mask pixels in total."""
    print("\n| R | mode | images | input max|d| | FPN rel | proposals px | dets equal | box px | "
          "score | mask px differing | matched <=1px | ok |")  # fmt: skip
    print("|" + "---|" * 12)
    for depth in sorted({r["depth"] for r in rows}):
        for mode in MODES:
            group = [r for r in rows if r["depth"] == depth and r["mode"] == mode]
            if not group:
                continue
            worst = {k: max(r[k] for r in group) for k in TABLE_MAXIMA}
            dets = sum(r["detections"][0] for r in group)
            same = sum(r["labels_equal"] for r in group if r["box_px"] <= TOLERANCES["box_px"])
            matched = sum(r["matched_1px"] for r in group)
            unpaired = sum(r["proposals_unpaired"] for r in group)
            differing = sum(r.get("mask_pixels_differing", 0) for r in group)
            pixels = sum(r.get("mask_pixels", 0) for r in group)
            ok = (
                "(info)"
                if mode not in CHECKED
                else ("yes" if all(r["pass"] for r in group) else "NO")
            )
            print(
                f"| {depth} | {mode} | {len(group)} | {worst['input_max_abs']:.3g} | "
                f"{worst['fpn_max_rel']:.2g} | {worst['proposal_box_px']:.3g} ({unpaired}) | "
                f"{same if mode in CHECKED else '-'}/{dets} | {worst['box_px']:.3g} | "
                f"{max(worst['class_score_abs'], worst['mask_score_abs']):.2g} | "
                f"{differing} of {pixels} | {matched}/{dets} | {ok} |"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101], choices=[50, 101])
    parser.add_argument(
        "--data", default=os.environ.get("MS_RCNN_REAL_DATA", REPO.parent / "shared" / "data")
    )
    parser.add_argument("--images", type=int, default=6, help="val2017 photos to run")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(REPO / "output" / "mmdet_parity.json"))
    args = parser.parse_args(argv)
    root = Path(args.data) / "coco_tiny" / "images"
    photos = sorted((root / "val2017").glob("*.jpg"))[: args.images]
    calibration = [str(p) for p in sorted((root / "train2017").glob("*.jpg"))]
    if not photos or not calibration:
        sys.exit(f"no COCO photos under {root} (set --data or MS_RCNN_REAL_DATA)")
    import detectron2
    import mmcv
    import mmdet

    from ms_rcnn.env import detectron2_line

    print(f"mmdet {mmdet.__version__}, mmcv {mmcv.__version__}; {detectron2_line()}")
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmdet-parity-") as folder:
        images = [str(p) for p in photos] + [enlarged_photo(str(photos[0]), folder)]
        rows = []
        for depth in args.depths:
            rows += check_depth(depth, args, images, calibration[: args.calibration_images], folder)
    print_table(rows)
    print_summary(rows)
    failed = [r for r in rows if r["pass"] is False]
    print(f"\nTolerances of the checked modes ({', '.join(CHECKED)}): {TOLERANCES}")
    seconds = time.perf_counter() - started
    print(f"{len(rows) - len(failed)} of {len(rows)} rows within tolerance or informational; "
          f"{seconds:.0f} s in all; Detectron2 {detectron2.__version__}")  # fmt: skip
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"tolerances": TOLERANCES, "rows": rows}, f, indent=1)
    print(f"Rows written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
