"""Helpers shared by the benchmarks: interleaved median timing, machine line, R-50-FPN models.

The benchmarks import this as `common` (they put their own folder on sys.path when run as
scripts from the repository root).
"""

import contextlib
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def median_ms(fns, repeats, min_sample_s=0.05):
    """Median milliseconds per call of each function in `fns` (name -> callable).

    The functions take turns within each repeat, so a change in machine load (the cores are
    shared) hits all of them alike. A sample is the mean over enough calls to last about
    `min_sample_s`, so millisecond calls are not dominated by timer and scheduler noise.
    """
    number = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()  # warm-up and calibration
        number[name] = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-6)))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / number[name])
    return {name: 1000 * statistics.median(times) for name, times in samples.items()}


@contextlib.contextmanager
def timed_calls(owner, name, sink):
    """While active, each call of `owner.<name>` (a module's function or an object's method)
    appends its wall time in seconds to the list `sink`; afterwards the attribute is as before.
    """
    original = getattr(owner, name)
    had_own = name in vars(owner)  # a module's function; an object's method lives on its class

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sink.append(time.perf_counter() - start)
        return out

    setattr(owner, name, timed)
    try:
        yield sink
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


def machine():
    """One line: CPU model and count, OS, torch version and threads, load average."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}; {platform.system()} {platform.release()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load:.1f} at start"
    )


def command():
    return "python " + " ".join(sys.argv)


def r50_fpn_cfg(roi_heads="StandardROIHeads", score_thresh=0.05):
    """Full-width R-50-FPN Mask R-CNN config (80 classes, CPU, random weights)."""
    from detectron2.config import get_cfg

    from ms_rcnn import add_ms_rcnn_config

    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    return cfg


def build_r50_fpn(score_thresh, roi_heads="StandardROIHeads"):
    from detectron2.modeling import build_model

    cfg = r50_fpn_cfg(roi_heads, score_thresh)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def calibrate_frozen_bn(model, inputs):
    """Set every FrozenBatchNorm's statistics to its input's, in one pass (data-dependent init).

    With random weights and identity BN statistics, the activations of a 50-layer ResNet blow
    up, the RPN's boxes all cover the whole image and NMS leaves a single proposal. Normalized
    activations give the usual ~1000 diverse proposals, so the heads see a realistic load.
    """
    from detectron2.layers import FrozenBatchNorm2d

    def set_stats(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [
        m.register_forward_pre_hook(set_stats)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    with torch.no_grad():
        model(inputs)
    for h in hooks:
        h.remove()


def random_image_inputs(height=800, width=1333, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    return [{"image": image, "height": height, "width": width}]
