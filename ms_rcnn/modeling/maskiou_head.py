"""The MaskIoU head (Huang et al., CVPR 2019) and its pure loss/inference functions.

The head predicts, for each RoI and each class, the IoU between the RoI's predicted mask and
its ground-truth instance. Its input is the mask branch's RoI feature (C x S x S, before the
mask convs) concatenated with the predicted mask (M x M probabilities, M = 2S) max-pooled to
S x S.
"""

from typing import Callable, List, Optional, Union

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat, get_norm
from detectron2.structures import Instances
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ROI_MASKIOU_HEAD_REGISTRY",
    "MaskIoUHead",
    "build_maskiou_head",
    "mask_iou_loss",
    "mask_iou_inference",
    "log_maskiou_metrics",
]

ROI_MASKIOU_HEAD_REGISTRY = Registry("ROI_MASKIOU_HEAD")
ROI_MASKIOU_HEAD_REGISTRY.__doc__ = """
Registry for MaskIoU heads: modules that take RoI features (R, C, S, S) and predicted mask
probabilities (R, 1, 2S, 2S) and return predicted mask IoUs (R, num_classes).

The registered object is called with `obj(cfg, input_shape)`, where `input_shape` is the
ShapeSpec of the RoI features.
"""


@ROI_MASKIOU_HEAD_REGISTRY.register()
class MaskIoUHead(nn.Module):
    """Convs (the last with stride 2), fully-connected layers, then one IoU per class.

    With the paper's sizes: 257 x 14 x 14 -> 3 x conv(256) -> conv(256, stride 2) -> 7 x 7 ->
    FC 1024 -> FC 1024 -> FC num_classes. Every layer but the last has a ReLU; the output is
    unbounded (the caller decides whether to clamp it). With `conv_norm`, each conv is followed
    by that normalization (before its ReLU) and has no bias, as in Detectron2's mask and box
    heads; the fully-connected layers have none. Without it (the default, the paper's head) the
    parameters and their checkpoint names are those of a head without the option.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        fc_dims: List[int],
        conv_norm: Union[str, Callable, None] = "",
    ):
        """
        Args:
            input_shape: shape of the RoI features (channels C, height = width = S).
            num_classes: number of foreground classes; one IoU output per class.
            conv_dims: output channels of each 3x3 conv; the last conv has stride 2.
            fc_dims: widths of the hidden fully-connected layers.
            conv_norm: normalization after each conv, as `detectron2.layers.get_norm` takes it:
                "" or None for none, a name ("BN", "SyncBN", "GN", "LN" on Detectron2 versions
                that have it, ...) or a callable from channels to a module (e.g. the LSJ
                recipe's `NaiveSyncBatchNorm(c, stats_mode="N")`).
        """
        super().__init__()
        if input_shape.height != input_shape.width:
            raise ValueError(
                f"MaskIoUHead needs square RoI features, got {input_shape.height}x"
                f"{input_shape.width} (ROI_MASK_HEAD.POOLER_RESOLUTION)"
            )
        if not conv_dims:
            raise ValueError("MODEL.ROI_MASKIOU_HEAD.NUM_CONV must be >= 1")
        if num_classes < 1:
            raise ValueError(f"MaskIoUHead needs num_classes >= 1, got {num_classes}")
        self.input_channels = input_shape.channels
        self.input_resolution = input_shape.height

        # Plain lists: the layers are registered by add_module under stable checkpoint names.
        self.convs = []
        in_channels = input_shape.channels + 1  # RoI feature, then the pooled mask
        for k, out_channels in enumerate(conv_dims):
            stride = 2 if k == len(conv_dims) - 1 else 1
            norm = _conv_norm(conv_norm, out_channels)
            conv = Conv2d(
                in_channels, out_channels, 3, stride=stride, padding=1, bias=norm is None, norm=norm
            )
            self.add_module(f"maskiou_conv{k + 1}", conv)
            self.convs.append(conv)
            in_channels = out_channels
        out_resolution = (input_shape.height + 1) // 2  # a 3x3 conv with stride 2 and pad 1

        self.fcs = []
        in_features = in_channels * out_resolution**2
        for k, width in enumerate(fc_dims):
            fc = nn.Linear(in_features, width)
            self.add_module(f"maskiou_fc{k + 1}", fc)
            self.fcs.append(fc)
            in_features = width
        self.predictor = nn.Linear(in_features, num_classes)
        self._init_weights()

    def _init_weights(self):
        # As the official code: He init for convs, Caffe2 "XavierFill" (kaiming_uniform, a=1)
        # for hidden FCs, and a small normal for the predictor so initial IoUs are near zero.
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.constant_(conv.bias, 0)
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.constant_(fc.bias, 0)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_MASKIOU_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "conv_norm": head.NORM,
        }

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (R, C, S, S) RoI features of the mask branch.
            mask_probs: (R, 1, 2S, 2S) predicted mask probabilities (after sigmoid).

        Returns:
            (R, num_classes) predicted mask IoU per class, unbounded.
        """
        if not torch.jit.is_tracing():  # a traced check is constant-folded away (and warns)
            self._check_inputs(features, mask_probs)
        pooled_mask = F.max_pool2d(mask_probs, kernel_size=2, stride=2)
        x = torch.cat([features, pooled_mask], dim=1)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = torch.flatten(x, start_dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.predictor(x)

    def _check_inputs(self, features, mask_probs):
        s = self.input_resolution
        if features.dim() != 4 or features.shape[1:] != (self.input_channels, s, s):
            raise ValueError(
                f"MaskIoUHead expects RoI features of shape (R, {self.input_channels}, {s}, {s}), "
                f"got {tuple(features.shape)}"
            )
        if mask_probs.dim() != 4 or mask_probs.shape[1:] != (1, 2 * s, 2 * s):
            raise ValueError(
                f"MaskIoUHead expects masks of shape (R, 1, {2 * s}, {2 * s}) (twice "
                f"ROI_MASK_HEAD.POOLER_RESOLUTION), got {tuple(mask_probs.shape)}"
            )
        if features.shape[0] != mask_probs.shape[0]:
            raise ValueError(
                f"MaskIoUHead got {features.shape[0]} RoI features but {mask_probs.shape[0]} masks"
            )


def _conv_norm(norm, channels) -> Optional[nn.Module]:
    """`get_norm(norm, channels)`, refusing an unknown name with the names this Detectron2 has
    (v0.6 has no "LN": Detectron2 added it with ViTDet)."""
    try:
        return get_norm(norm, channels)
    except KeyError:
        raise ValueError(
            f"MaskIoUHead conv_norm={norm!r} (MODEL.ROI_MASKIOU_HEAD.NORM) is not a norm of the "
            'installed Detectron2\'s detectron2.layers.get_norm: use "" (none), BN, SyncBN, '
            "naiveSyncBN, naiveSyncBN_N, FrozenBN, GN, or LN on Detectron2 after v0.6, or a "
            "callable from channels to a module"
        ) from None


def build_maskiou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the MaskIoU head named by `cfg.MODEL.ROI_MASKIOU_HEAD.NAME`."""
    name = cfg.MODEL.ROI_MASKIOU_HEAD.NAME
    if name not in ROI_MASKIOU_HEAD_REGISTRY:
        known = ", ".join(sorted(k for k, _ in ROI_MASKIOU_HEAD_REGISTRY))
        raise KeyError(
            f"MODEL.ROI_MASKIOU_HEAD.NAME={name!r} is not registered in ROI_MASKIOU_HEAD_REGISTRY "
            f"(known: {known}). Import the module that registers it before building the model."
        )
    return ROI_MASKIOU_HEAD_REGISTRY.get(name)(cfg, input_shape)


def check_head_shapes(cfg, input_shape: ShapeSpec, mask_head: nn.Module, head: nn.Module) -> None:
    """Refuse, when the model is built, a mask head or MaskIoU head whose shapes do not chain.

    The MaskIoU head reads S x S RoI features (`input_shape`) and the mask head's 2S x 2S masks.
    A custom mask head with another output size, or a MaskIoU head that does not accept
    `input_shape`, would otherwise fail at the first training step inside torch, without naming a
    config key. The model's own two heads run once on one zero RoI, in eval mode without
    gradients, under a forked RNG: nothing they hold or the random stream changes.
    """
    from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead

    c, s = input_shape.channels, input_shape.height
    keys = (
        f"MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION={s}, RoI feature channels {c} "
        "(MODEL.FPN.OUT_CHANNELS / ROI_HEADS.IN_FEATURES)"
    )
    modes = {m: m.training for m in (mask_head, head)}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if isinstance(mask_head, BaseMaskRCNNHead):
            mask_head.eval()
            try:
                out = mask_head.layers(torch.zeros(1, c, s, s))
            finally:
                mask_head.train(modes[mask_head])
            if out.dim() != 4 or tuple(out.shape[2:]) != (2 * s, 2 * s):
                raise ValueError(
                    f"MODEL.ROI_MASK_HEAD.NAME={cfg.MODEL.ROI_MASK_HEAD.NAME!r} maps {s}x{s} RoI "
                    f"features to masks of shape {tuple(out.shape)}, but "
                    f"MODEL.ROI_MASKIOU_HEAD.NAME={cfg.MODEL.ROI_MASKIOU_HEAD.NAME!r} needs "
                    f"{2 * s}x{2 * s} masks (twice {keys})"
                )
        head.eval()
        try:
            pred = head(torch.zeros(1, c, s, s), torch.zeros(1, 1, 2 * s, 2 * s))
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"MODEL.ROI_MASKIOU_HEAD.NAME={cfg.MODEL.ROI_MASKIOU_HEAD.NAME!r} does not accept "
                f"RoI features of shape (R, {c}, {s}, {s}) and masks (R, 1, {2 * s}, {2 * s}) "
                f"({keys}): {e}"
            ) from e
        finally:
            head.train(modes[head])
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if tuple(pred.shape) != (1, num_classes):
        raise ValueError(
            f"MODEL.ROI_MASKIOU_HEAD.NAME={cfg.MODEL.ROI_MASKIOU_HEAD.NAME!r} returns shape "
            f"{tuple(pred.shape)} per RoI, expected (R, {num_classes}) "
            "(MODEL.ROI_HEADS.NUM_CLASSES)"
        )


def select_class_column(values: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """values (R, K), classes (R,) -> (R,) the column of each row's class."""
    return values.gather(1, classes.long().view(-1, 1)).squeeze(1)


def mask_iou_loss(
    pred_maskiou: torch.Tensor,
    gt_classes: torch.Tensor,
    targets: torch.Tensor,
    counted: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """L2 loss between predicted and target mask IoUs, as the official implementation.

    loss = 0.5 * mean over counted RoIs of (prediction[gt class] - target)^2. By default the
    counted RoIs are those with target > 0: RoIs with target 0 (no overlap, or an empty
    predicted mask) are left out of the sum and of the mean. With no counted RoI the loss is
    0, still connected to `pred_maskiou` so every rank of a distributed run back-propagates
    through the head.

    Args:
        pred_maskiou: (R, K) predicted IoUs.
        gt_classes: (R,) class of each RoI's ground truth, in [0, K).
        targets: (R,) target IoUs in [0, 1] (no gradient).
        counted: optional (R,) bool, the RoIs that enter the loss (default: targets > 0);
            background RoIs trained towards 0 need it.

    Returns:
        A scalar tensor.
    """
    if pred_maskiou.shape[0] != gt_classes.shape[0] or gt_classes.shape != targets.shape:
        raise ValueError(
            f"mask_iou_loss: {pred_maskiou.shape[0]} predictions, {gt_classes.shape[0]} classes "
            f"and {targets.shape[0]} targets"
        )
    positive = targets > 0 if counted is None else counted.to(torch.bool)
    if positive.shape != targets.shape:
        raise ValueError(f"mask_iou_loss: {positive.shape[0]} flags for {targets.shape[0]} targets")
    if not bool(positive.any()):
        return pred_maskiou.sum() * 0.0
    pred = select_class_column(pred_maskiou[positive], gt_classes[positive])
    return 0.5 * F.mse_loss(pred, targets[positive].to(pred.dtype), reduction="mean")


def log_maskiou_metrics(
    pred_maskiou: torch.Tensor, gt_classes: torch.Tensor, targets: torch.Tensor, counted
) -> None:
    """Log maskiou/num_pos, mean_target, mean_pred and abs_error over the `counted` RoIs: the
    ones `mask_iou_loss` counts, so the metrics describe what the loss trains on."""
    from detectron2.utils.events import get_event_storage

    storage = get_event_storage()
    storage.put_scalar("maskiou/num_pos", float(counted.sum()))
    if bool(counted.any()):
        pred = select_class_column(pred_maskiou[counted], gt_classes[counted])
        storage.put_scalar("maskiou/mean_target", float(targets[counted].mean()))
        storage.put_scalar("maskiou/mean_pred", float(pred.mean()))
        storage.put_scalar("maskiou/abs_error", float((pred - targets[counted]).abs().mean()))


def mask_iou_inference(
    pred_maskiou: torch.Tensor,
    pred_instances: List[Instances],
    clamp: bool = True,
    overwrite_scores: bool = False,
) -> None:
    """Write the predicted IoU and the mask score into each image's instances.

    For each detection: `pred_maskiou` = the predicted IoU of its predicted class (clamped to
    [0, 1] if `clamp`), `mask_scores` = `scores` * `pred_maskiou`. `scores` stays the box
    predictor's (the classification score, or the Soft-NMS-decayed one) unless
    `overwrite_scores`. Detections are not re-sorted.

    Args:
        pred_maskiou: (R, K) predictions for the R detections of all images, in order.
        pred_instances: one Instances per image with `scores` and `pred_classes`; their
            lengths add up to R. Modified in place.
        clamp: clamp predicted IoUs to [0, 1] (an IoU outside it has no meaning; an
            unclamped negative value would turn a confident detection into the lowest score).
        overwrite_scores: also set `scores` = `mask_scores`.
    """
    # Sizes from `.shape`, not len(): under torch.jit.trace they stay symbolic, so a traced
    # model splits by each input's own detection counts (len() would freeze the traced ones).
    num_per_image = [x.pred_classes.shape[0] for x in pred_instances]
    if not torch.jit.is_tracing() and sum(num_per_image) != pred_maskiou.shape[0]:
        raise ValueError(
            f"mask_iou_inference: {pred_maskiou.shape[0]} predictions for "
            f"{sum(num_per_image)} detections"
        )
    if not pred_instances:
        return
    maskiou = select_class_column(pred_maskiou, cat([x.pred_classes for x in pred_instances]))
    if clamp:
        maskiou = maskiou.clamp(0.0, 1.0)
    for instances, iou in zip(pred_instances, maskiou.split(num_per_image)):
        instances.pred_maskiou = iou
        instances.mask_scores = instances.scores * iou
        if overwrite_scores:
            instances.scores = instances.mask_scores
