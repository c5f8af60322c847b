"""The resize to the input size, in the style of the framework the weights come from.

Converted weights were trained on images resized by their own framework, and small differences
in the resize change their detections (on a random model, a cv2 and a PIL resize of the same
image gave only 20-50 of 100 matching detections). `INPUT.RESIZE_STYLE` chooses the resize:

- "detectron2": Detectron2's `ResizeShortestEdge`, unchanged (the short edge to the chosen size
  unless the long edge would pass the max size; sizes rounded; PIL bilinear for uint8 images).
- "mmdet": mmdetection 3.x's `Resize(scale=(max_size, short_edge), keep_ratio=True)`, i.e.
  mmcv 2.x's `imrescale`: the factor min(long limit / long edge, short limit / short edge), each
  edge int(edge * factor + 0.5) (`rescale_size`, `_scale_size` in mmcv/image/geometric.py), and
  `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` (mmcv's default backend), which does not
  antialias when shrinking, unlike PIL. Masks resize with cv2's nearest, as mmdet's
  `BitmapMasks.rescale`; polygons and boxes scale by new size / old size per axis, as mmdet's
  `PolygonMasks.resize` and `Resize._resize_bboxes`.
- "maskrcnn-benchmark": maskrcnn-benchmark's (and the official MS R-CNN code's) `Resize`
  transform, maskrcnn_benchmark/data/transforms/transforms.py `Resize.get_size`: the short edge
  capped to round(max_size * short / long) when the long edge would pass max_size, the long edge
  truncated with int(), the image unchanged when its short edge already has the size. Its
  image resize is torchvision's `F.resize` on a PIL image, which is PIL's `Image.resize` with
  BILINEAR, what Detectron2's `ResizeTransform` does for uint8 images: only the size differs.

Each style also applies at training time: the short edge is chosen among INPUT.MIN_SIZE_TRAIN
as Detectron2 does (INPUT.MIN_SIZE_TRAIN_SAMPLING), then sized and resized in the style.
"""

import sys
from typing import Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..config import check_resize_style, config_resize_style

__all__ = [
    "CV2ResizeTransform",
    "StyledResizeShortestEdge",
    "build_augmentations",
    "build_dataset_mapper",
    "build_predictor_resize",
    "build_resize_augmentation",
    "check_resize_config",
    "detectron2_output_shape",
    "maskrcnn_benchmark_output_shape",
    "mmdet_output_shape",
    "output_shape",
]


def detectron2_output_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) by Detectron2's rule: `T.ResizeShortestEdge.get_output_shape` itself."""
    return T.ResizeShortestEdge.get_output_shape(h, w, short_edge, max_size)


def mmdet_output_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) by mmcv 2.x's `rescale_size((w, h), scale=(max_size, short_edge))`.

    mmcv takes the larger value of the scale tuple as the long edge's limit and the smaller as
    the short edge's, scales both edges by the one factor that keeps both within their limits,
    and rounds each as int(x + 0.5). Mathematically Detectron2's rule; its floating-point steps
    differ, and for some sizes (e.g. 265 x 530 at 800/1333: 667 x 1333 here, 666 x 1333 by
    Detectron2's) the rounding does too.
    """
    long_limit, short_limit = max(max_size, short_edge), min(max_size, short_edge)
    factor = min(long_limit / max(h, w), short_limit / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def maskrcnn_benchmark_output_shape(
    h: int, w: int, short_edge: int, max_size: int
) -> Tuple[int, int]:
    """(new_h, new_w) by maskrcnn-benchmark's `Resize.get_size` (Python 3 semantics: `round`
    rounds halves to even, `/` is true division).

    The long edge is truncated, not rounded (480 x 640 at 800/1333: 800 x 1066, Detectron2 gives
    800 x 1067), and when the max size caps the long edge it is the short edge that is set first
    (rounded), then the long edge follows from it, so the long edge can miss max_size.
    """
    size = short_edge
    short, long = float(min(h, w)), float(max(h, w))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


_OUTPUT_SHAPE_RULES = {
    "detectron2": detectron2_output_shape,
    "mmdet": mmdet_output_shape,
    "maskrcnn-benchmark": maskrcnn_benchmark_output_shape,
}


def output_shape(style: str, h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) of an h x w image resized to `short_edge` / `max_size` in `style`."""
    return _OUTPUT_SHAPE_RULES[check_resize_style(style)](h, w, short_edge, max_size)


def import_cv2(why: str = 'INPUT.RESIZE_STYLE "mmdet"'):
    """cv2, or an ImportError naming the package to install (setup.py does not require OpenCV:
    opencv-python and opencv-python-headless both provide cv2, and either may be installed)."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            f"{why} resizes images with OpenCV as mmdetection does, but cv2 cannot be imported "
            f"({e}); install it: pip install opencv-python-headless"
        ) from e
    return cv2


class CV2ResizeTransform(T.Transform):
    """Resize an h x w image to new_h x new_w with OpenCV, as mmcv's `imresize` (cv2 backend):
    bilinear for images, nearest for segmentations. Coordinates scale by new / old per axis,
    as Detectron2's `ResizeTransform` and mmdet's box and polygon rescaling do."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def _resize(self, img: np.ndarray, interpolation: int) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), (img.shape, (self.h, self.w))
        cv2 = import_cv2()
        is_bool = img.dtype == np.bool_
        if is_bool:  # cv2 has no boolean images; 0/1 survive a nearest resize
            img = img.astype(np.uint8)
        # cv2 wants a positive-stride array (Detectron2's BGR images are reversed views);
        # copying does not change any value.
        size = (self.new_w, self.new_h)
        out = cv2.resize(np.ascontiguousarray(img), size, interpolation=interpolation)
        if img.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of length 1
            out = out[:, :, None]
        return out.astype(bool) if is_bool else out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._resize(img, import_cv2().INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._resize(segmentation, import_cv2().INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self) -> "CV2ResizeTransform":
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class StyledResizeShortestEdge(T.ResizeShortestEdge):
    """Detectron2's `ResizeShortestEdge` (same arguments, same random choice of the short edge)
    whose size rule and image resize are those of `style` (one of
    `ms_rcnn.config.RESIZE_STYLES`; see this module's docstring). Usable from a LazyConfig:
    ``L(StyledResizeShortestEdge)(short_edge_length=800, max_size=1333, style="mmdet")``.

    With style "detectron2" it behaves as `ResizeShortestEdge`. `interp` is the PIL filter of the
    "detectron2" and "maskrcnn-benchmark" styles; "mmdet" resizes with cv2 bilinear only.
    """

    def __init__(
        self,
        short_edge_length,
        max_size=sys.maxsize,
        sample_style="range",
        interp=Image.BILINEAR,
        style="detectron2",
    ):
        check_resize_style(style)
        if style == "mmdet":
            import_cv2()  # refused here, not in a data loader worker
            if interp != Image.BILINEAR:
                raise ValueError(
                    f'INPUT.RESIZE_STYLE "mmdet" resizes with cv2 bilinear (mmdetection\'s '
                    f"default); interp={interp} has no cv2 equivalent here"
                )
        super().__init__(short_edge_length, max_size, sample_style, interp)
        self.style = style

    def _sample_short_edge(self) -> int:
        # The draw of Detectron2's get_transform, so a seed picks the same size in every style.
        if self.is_range:
            low, high = self.short_edge_length
            return int(np.random.randint(low, high + 1))
        return int(np.random.choice(self.short_edge_length))

    def get_transform(self, image):
        if self.style == "detectron2":
            return super().get_transform(image)
        h, w = image.shape[:2]
        size = self._sample_short_edge()
        if size == 0:  # Detectron2's way to turn the resize off
            return T.NoOpTransform()
        new_h, new_w = output_shape(self.style, h, w, size, self.max_size)
        if self.style == "mmdet":
            return CV2ResizeTransform(h, w, new_h, new_w)
        # maskrcnn-benchmark: torchvision's PIL resize is Detectron2's uint8 resize
        return T.ResizeTransform(h, w, new_h, new_w, self.interp)


def resize_shortest_edge(
    short_edge_length, max_size, sample_style: str, style: str
) -> T.ResizeShortestEdge:
    """A ResizeShortestEdge of `style`: for "detectron2" Detectron2's own class, so that
    everything (the transforms, the augmentation's repr in the logs) is exactly as without the
    key; otherwise a StyledResizeShortestEdge."""
    if check_resize_style(style) == "detectron2":
        return T.ResizeShortestEdge(short_edge_length, max_size, sample_style)
    return StyledResizeShortestEdge(short_edge_length, max_size, sample_style, style=style)


def build_resize_augmentation(cfg, is_train: bool) -> T.ResizeShortestEdge:
    """The resize of Detectron2's `detection_utils.build_augmentation`, in the config's style:
    at training MIN_SIZE_TRAIN (sampled by MIN_SIZE_TRAIN_SAMPLING) and MAX_SIZE_TRAIN, at test
    MIN_SIZE_TEST and MAX_SIZE_TEST."""
    if is_train:
        sizes, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        sizes, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    return resize_shortest_edge(sizes, max_size, sample_style, config_resize_style(cfg))


def _with_styled_resize(cfg, augmentations: list, is_train: bool) -> list:
    """`augmentations` (built by Detectron2 from `cfg`) with its one ResizeShortestEdge replaced
    by the config's style. Replacing rather than rebuilding the list keeps whatever else
    Detectron2 adds (flip, crop) exactly as it builds it."""
    if config_resize_style(cfg) == "detectron2":
        return augmentations
    resizes = [i for i, a in enumerate(augmentations) if type(a) is T.ResizeShortestEdge]
    if len(resizes) != 1:
        raise RuntimeError(f"expected one ResizeShortestEdge among {augmentations}")
    augmentations = list(augmentations)
    augmentations[resizes[0]] = build_resize_augmentation(cfg, is_train)
    return augmentations


def build_augmentations(cfg, is_train: bool) -> list:
    """Detectron2's `detection_utils.build_augmentation(cfg, is_train)` (the resize, then at
    training the random flip) with the resize in the config's style."""
    return _with_styled_resize(cfg, utils.build_augmentation(cfg, is_train), is_train)


def build_dataset_mapper(cfg, is_train: bool):
    """Detectron2's `DatasetMapper(cfg, is_train)` with the resize in the config's style (its
    other arguments, random crop included, as Detectron2 builds them from the config)."""
    from detectron2.data import DatasetMapper

    kwargs = DatasetMapper.from_config(cfg, is_train)
    kwargs["augmentations"] = _with_styled_resize(cfg, kwargs["augmentations"], is_train)
    return DatasetMapper(**kwargs)


def build_predictor_resize(cfg) -> T.ResizeShortestEdge:
    """The resize of Detectron2's `DefaultPredictor` (`ResizeShortestEdge([MIN_SIZE_TEST,
    MIN_SIZE_TEST], MAX_SIZE_TEST)`), in the config's style."""
    size = cfg.INPUT.MIN_SIZE_TEST
    return resize_shortest_edge(
        [size, size], cfg.INPUT.MAX_SIZE_TEST, "range", config_resize_style(cfg)
    )


def check_resize_config(cfg) -> None:
    """Refuse, where the config is set up, an unknown INPUT.RESIZE_STYLE and the "mmdet" style
    without OpenCV, rather than when the first image is resized."""
    if config_resize_style(cfg) == "mmdet":
        import_cv2()
