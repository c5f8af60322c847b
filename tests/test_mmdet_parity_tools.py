"""The pieces of `make check-mmdet` that run without mmdetection: the mmcv build fix, the pins it
reads, and the comparison that decides whether a row is within tolerance. The run itself needs
mmcv compiled (15-25 min), so it is not in the suite; its figures are in
docs/PUBLISHED_WEIGHTS.md."""

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import check_mmdet_parity as parity  # noqa: E402
import setup_mmdet_env  # noqa: E402
from mmdet_parity_peer import PeerStages  # noqa: E402


def test_the_pins_come_from_constraints_txt():
    text = (SCRIPTS.parent / "constraints.txt").read_text()
    for name in ("mmdet", "mmcv", "mmengine"):
        assert f"{name}=={setup_mmdet_env.pinned(name)}\n" in text


def test_the_mmcv_build_fix_replaces_every_cxx17_flag_and_refuses_another_sdist(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text("a = ['-std=c++17']\nb = ['-Wall', '-std=c++17']\nc = ['-std=c++14']\n")
    setup_mmdet_env.patch_mmcv_setup(tmp_path)
    assert setup_py.read_text() == (
        "a = ['-std=c++20']\nb = ['-Wall', '-std=c++20']\nc = ['-std=c++14']\n"
    )
    with pytest.raises(SystemExit, match="no -std=c\\+\\+17 to replace"):
        setup_mmdet_env.patch_mmcv_setup(tmp_path)


def _stages(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 4, generator=g) * 100
    boxes[:, 2:] += boxes[:, :2]
    masks = torch.zeros(n, 20, 30, dtype=torch.bool)
    masks[:, 5:15, 5:25] = True
    return PeerStages(
        inputs=torch.rand(3, 32, 32, generator=g),
        image_size=(30, 31),
        original_size=(20, 30),
        features=[torch.rand(4, 8 >> i, 8 >> i, generator=g) for i in range(3)],
        proposal_boxes=boxes.clone(),
        proposal_scores=torch.rand(n, generator=g),
        boxes=boxes,
        labels=torch.arange(n),
        class_scores=torch.rand(n, generator=g),
        mask_scores=torch.rand(n, generator=g),
        masks=masks,
    )


def _ours(theirs: PeerStages) -> dict:
    return {
        "inputs": theirs.inputs.clone(),
        "image_size": theirs.image_size,
        "features": [f.clone() for f in theirs.features],
        "proposal_boxes": theirs.proposal_boxes.clone(),
        "proposal_scores": theirs.proposal_scores.clone(),
        "boxes": theirs.boxes.clone(),
        "labels": theirs.labels.clone(),
        "class_scores": theirs.class_scores.clone(),
        "mask_scores": theirs.mask_scores.clone(),
        "masks": theirs.masks.clone(),
    }


def test_identical_stages_pass_and_each_kind_of_difference_fails():
    theirs = _stages()
    row = parity.compare(theirs, _ours(theirs))
    assert parity.within_tolerance(row)
    assert row["matched_1px"] == 3 and row["mask_pixels_differing"] == 0

    def perturbed(change):
        ours = _ours(theirs)
        change(ours)
        return parity.compare(theirs, ours)

    cases = {
        "input": lambda o: o["inputs"].__setitem__((0, 0, 0), o["inputs"][0, 0, 0] + 1),
        "fpn": lambda o: o["features"][2].mul_(1.001),
        "proposal": lambda o: o["proposal_boxes"].__setitem__((1, 2), 0.0),
        "box": lambda o: o["boxes"].__setitem__((2, 3), o["boxes"][2, 3] + 0.01),
        "label": lambda o: o["labels"].__setitem__(0, 7),
        "mask score": lambda o: o["mask_scores"].add_(1e-4),
        "count": lambda o: o.update({k: o[k][:2] for k in ("boxes", "labels", "masks")}),
        "masks": lambda o: o["masks"][:, 5:15, 5:20].fill_(False),
    }
    for name, change in cases.items():
        assert not parity.within_tolerance(perturbed(change)), name
    # One pasted pixel of 600 is a fraction of 1/600, above the 1e-3 tolerance.
    ours = _ours(theirs)
    ours["masks"][0, 5, 5] = False
    assert not parity.within_tolerance(parity.compare(theirs, ours))


def test_proposals_compare_as_a_set_so_tied_scores_in_another_order_pass():
    theirs = _stages()
    ours = _ours(theirs)
    order = torch.tensor([2, 0, 1])
    ours["proposal_boxes"] = ours["proposal_boxes"][order]
    ours["proposal_scores"] = ours["proposal_scores"][order]
    row = parity.compare(theirs, ours)
    assert row["proposals_moved"] == 3 and row["proposal_box_px"] == 0.0
    assert parity.within_tolerance(row)
    ours["proposal_scores"] = ours["proposal_scores"] * 0.9  # another score is not a reordering
    assert not parity.within_tolerance(parity.compare(theirs, ours))


def _proposals(stages_or_dict, boxes, scores):
    boxes, scores = torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores)
    if isinstance(stages_or_dict, dict):
        stages_or_dict.update(proposal_boxes=boxes, proposal_scores=scores)
    else:
        stages_or_dict.proposal_boxes, stages_or_dict.proposal_scores = boxes, scores


@pytest.mark.parametrize("iou_box, explained", [([0, 0, 10, 7], True), ([0, 0, 10, 5], False)])
def test_a_proposal_only_one_side_kept_is_allowed_only_at_the_nms_threshold(iou_box, explained):
    """mmdetection keeps a box whose IoU with a higher-scored box is 0.7 (the NMS threshold:
    rounding decides), Detectron2 suppresses it and takes one more box at the end instead. A
    box kept by one side at IoU 0.5 has no such excuse."""
    theirs = _stages()
    ours = _ours(theirs)
    high, tail = [0, 0, 10, 10], [50, 50, 60, 60]
    _proposals(theirs, [high, iou_box, [20, 20, 30, 30]], [0.9, 0.8, 0.7])
    _proposals(ours, [high, [20, 20, 30, 30], tail], [0.9, 0.7, 0.6])
    row = parity.compare(theirs, ours)
    assert row["proposals_unpaired"] == 2
    assert (row["proposals_unexplained"] == 0) == explained
    assert parity.within_tolerance(row) == explained


def test_reordered_detections_fail_rank_order_but_still_count_as_matched():
    theirs = _stages()
    ours = _ours(theirs)
    order = torch.tensor([1, 0, 2])
    for key in ("boxes", "labels", "class_scores", "mask_scores", "masks"):
        ours[key] = ours[key][order]
    row = parity.compare(theirs, ours)
    assert not parity.within_tolerance(row)
    assert row["matched_1px"] == 3
