"""Shared test fixtures: tiny CPU models, so the suite stays fast on two cores."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")

# The device of the device-dependent tests (marked `device`, they take the `device` fixture):
# the CPU unless MS_RCNN_TEST_DEVICE says otherwise. scripts/check_gpu.py runs them with
# MS_RCNN_TEST_DEVICE=cuda (`pytest -m device`) on the first machine with a GPU.
TEST_DEVICE = os.environ.get("MS_RCNN_TEST_DEVICE", "cpu")


def pytest_configure(config):
    if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(
            f"MS_RCNN_TEST_DEVICE={TEST_DEVICE}, but torch {torch.__version__} sees no CUDA "
            "device here; unset it to test on the CPU"
        )


@pytest.fixture
def device():
    """torch.device for the device-dependent tests ($MS_RCNN_TEST_DEVICE, default cpu)."""
    return torch.device(TEST_DEVICE)


def tiny_cfg(roi_heads="StandardROIHeads", mask_format="polygon", num_classes=3, device="cpu"):
    """A Detectron2 config for a tiny R-50-FPN Mask R-CNN: a few channels, a few RoIs.

    The model is the same graph as the real one (every layer kind, FPN levels, heads), only
    narrow, so tests exercise the real code paths in well under a second per step.
    """
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    here = os.path.dirname(os.path.abspath(__file__))
    cfg.merge_from_file(os.path.join(here, "..", "configs", "Base-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASKIOU_HEAD.FC_DIM = 16
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def flatten_config(node, prefix=""):
    """{"A.B.C": value} for a nested config (a CfgNode or the dict of a YAML file)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def assert_same_eval_results(got, want, rel=1e-6):
    """Two eval_results.json contents hold the same keys and the same figures.

    Figures are compared to `rel` (relative), not bit for bit: the same weights evaluated in two
    processes may differ in the last float32 bit of a few outputs, since MKL promises bitwise
    equal results across runs only in its "conditional numerical reproducibility" mode. CI once
    saw mae_pred_maskiou_all at 0.024262733381 after training and 0.024262733343 with
    --eval-only (relative 1.6e-9; not reproduced here in 12 fresh processes). A checkpoint that
    loads wrongly moves these figures by far more than 1e-6.
    """
    assert isinstance(got, dict) and isinstance(want, dict), (got, want)
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for key, value in want.items():
        if isinstance(value, dict):
            assert_same_eval_results(got[key], value, rel)
        elif isinstance(value, float) and isinstance(got[key], float):
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        else:
            assert got[key] == value, key


def square_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_batch(mask_format="polygon", image_size=64, num_instances=(2, 1), seed=0):
    """Model inputs (list of dicts) with boxes, classes and masks in the given format."""
    from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

    g = torch.Generator().manual_seed(seed)
    batch = []
    for n in num_instances:
        image = torch.randint(0, 255, (3, image_size, image_size), generator=g, dtype=torch.uint8)
        inst = Instances((image_size, image_size))
        boxes, polys = [], []
        for _ in range(n):
            x0, y0 = torch.randint(0, image_size // 2, (2,), generator=g).tolist()
            w, h = torch.randint(8, image_size // 2, (2,), generator=g).tolist()
            boxes.append([x0, y0, x0 + w, y0 + h])
            polys.append(square_polygon(x0, y0, x0 + w, y0 + h))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=g)
        if mask_format == "polygon":
            inst.gt_masks = PolygonMasks(polys)
        else:
            inst.gt_masks = BitMasks.from_polygon_masks(polys, image_size, image_size)
        batch.append({"image": image, "instances": inst, "height": image_size, "width": image_size})
    return batch


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return 0


@pytest.fixture(autouse=True)
def _restore_denormals():
    """`ms_rcnn.engine.setup` flushes denormal floats process-wide on the CPU (training speed);
    keep that from leaking into later tests (hypothesis refuses to run with it on)."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def predict_setup(tmp_path_factory):
    """Images, COCO JSON and tiny checkpoints for the predict tests (tests/predict_helpers.py)."""
    from predict_helpers import make_predict_setup

    return make_predict_setup(tmp_path_factory.mktemp("predict"))
