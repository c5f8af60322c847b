"""The configs for converted peer weights differ from the current COCO configs exactly where the
peers differ from Detectron2, and nowhere else."""

from pathlib import Path

import pytest
from conftest import flatten_config
from detectron2.config import get_cfg

import ms_rcnn

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "COCO-InstanceSegmentation"


def flat(name):
    cfg = get_cfg()
    ms_rcnn.add_ms_rcnn_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    return flatten_config(cfg)


def differences(peer_config, current_config):
    peer, current = flat(peer_config), flat(current_config)
    return {k: peer[k] for k in peer if peer[k] != current[k]}


COMMON = {"MODEL.WEIGHTS": "", "MODEL.ROI_MASKIOU_HEAD.CLAMP_PREDICTION": False}


@pytest.mark.parametrize("arch", ["ms_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("depth", [50, 101])
def test_mmdet_caffe_configs_are_the_current_ones(arch, depth):
    """mmdetection's caffe models run at Detectron2's defaults: pixel mean, BGR, ROIAlignV2,
    anchors. Only the weights, the unclamped mask score and the resize (as mmdetection) differ."""
    name = f"{arch}_R_{depth}_FPN_1x"
    assert differences(f"{name}_mmdet_caffe.yaml", f"{name}.yaml") == {
        **COMMON,
        "INPUT.RESIZE_STYLE": "mmdet",
    }


@pytest.mark.parametrize("arch", ["ms_rcnn", "mask_rcnn"])
@pytest.mark.parametrize("depth", [50, 101])
def test_maskrcnn_benchmark_configs_change_mean_anchors_and_roialign(arch, depth):
    name = f"{arch}_R_{depth}_FPN_1x"
    assert differences(f"{name}_maskrcnn_benchmark.yaml", f"{name}.yaml") == {
        **COMMON,
        "MODEL.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
        "MODEL.ANCHOR_GENERATOR.NAME": "MaskrcnnBenchmarkAnchorGenerator",
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlign",
        "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2,
        "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlign",
        "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 2,
        "INPUT.RESIZE_STYLE": "maskrcnn-benchmark",
    }
