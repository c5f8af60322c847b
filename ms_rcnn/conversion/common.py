"""What every source's converter shares: reading the container, the rename engine, the result.

A source module describes its checkpoints as rules: each rule is a regular expression over the
peer's tensor names, the Detectron2 name it maps to, and optionally a layout change (moving or
dropping the background class). A tensor the rules neither map nor drop with a reason is an
error: nothing is skipped silently.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..weights_config import RECORD_KEY

__all__ = [
    "ConversionError",
    "Rule",
    "Drop",
    "Converted",
    "unwrap_checkpoint",
    "apply_rules",
    "resnet_rules",
    "BN_TENSORS",
]

# The four tensors of a (Frozen)BatchNorm that Detectron2's FrozenBatchNorm2d holds.
BN_TENSORS = r"(weight|bias|running_mean|running_var)"

SUPPORTED_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly; the message names the tensors."""


@dataclass(frozen=True)
class Rule:
    """Peer names matching `pattern` (re.fullmatch) become `target(match)`, then `change`."""

    pattern: str
    target: Callable[[re.Match], str]
    change: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    change_doc: str = ""


@dataclass(frozen=True)
class Drop:
    """Peer names matching `pattern` are left out on purpose, for `reason`; `check(name, value)`
    may raise ConversionError when leaving the tensor out would not be right."""

    pattern: str
    reason: str
    check: Optional[Callable[[str, torch.Tensor], None]] = None


@dataclass
class Converted:
    """A converted state dict in Detectron2 names, with what was done to get it."""

    source: str
    model: Dict[str, torch.Tensor]
    mapped: List[Tuple[str, str, tuple, tuple, str]]  # peer name, D2 name, shapes, change
    dropped: Dict[str, str]  # peer name -> reason
    depth: int = 0
    num_classes: int = 0
    mask_scoring: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def config_file(self) -> str:
        """The config (relative to the repository) that reproduces the source at test time."""
        arch = "ms_rcnn" if self.mask_scoring else "mask_rcnn"
        suffix = {"maskrcnn-benchmark": "maskrcnn_benchmark", "mmdet": "mmdet_caffe"}[self.source]
        return f"configs/COCO-InstanceSegmentation/{arch}_R_{self.depth}_FPN_1x_{suffix}.yaml"

    def config_overrides(self) -> List[str]:
        return (
            [] if self.num_classes == 80 else ["MODEL.ROI_HEADS.NUM_CLASSES", str(self.num_classes)]
        )

    def checkpoint(self, input_path: str = "", record: Optional[dict] = None) -> dict:
        """What to torch.save: Detectron2 loads "model" as is, with no name heuristics;
        `record` (from `ms_rcnn.weights_config.weights_config` on `config_file`), stored under
        RECORD_KEY, holds the config keys the weights need, checked when they are loaded."""
        data = {
            "model": self.model,
            "__author__": f"ms-rcnn convert_checkpoint.py --source {self.source} {input_path}",
            "matching_heuristics": False,
        }
        if record is not None:
            data[RECORD_KEY] = record
        return data

    def report(self) -> str:
        lines = [
            f"Converted {len(self.mapped)} tensors from {self.source} "
            f"(R-{self.depth}-FPN, {'MS R-CNN' if self.mask_scoring else 'Mask R-CNN'}, "
            f"{self.num_classes} classes); left out {len(self.dropped)}:"
        ]
        reasons: Dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  {n} x {reason}" for reason, n in reasons.items()]
        changed: Dict[str, list] = {}
        for m in self.mapped:
            if m[4]:
                changed.setdefault(m[4], []).append(m)
        lines.append(f"Layout changes ({sum(map(len, changed.values()))} tensors):")
        for change, group in changed.items():
            if len(group) > 2:  # the FrozenBN variances: one line, not 53
                lines.append(f"  {len(group)} x {change}, e.g. {group[0][0]} -> {group[0][1]}")
            else:
                lines += [f"  {p} {s} -> {d} {t}: {c}" for p, d, s, t, c in group]
        lines.append("Renamed as is: " + _rename_summary(self.mapped))
        lines += [f"Note: {n}" for n in self.notes]
        overrides = " ".join(self.config_overrides())
        lines.append(f"Config: {self.config_file}" + (f" with {overrides}" if overrides else ""))
        return "\n".join(lines)


def _rename_summary(mapped) -> str:
    groups: Dict[str, int] = {}
    for _, d2_name, _, _, change in mapped:
        if not change:
            group = re.sub(r"\d+$", "*", ".".join(d2_name.split(".")[:2]))
            groups[group] = groups.get(group, 0) + 1
    return ", ".join(f"{g} ({n})" for g, n in groups.items())


def unwrap_checkpoint(obj, what: str = "checkpoint") -> Tuple[Dict[str, torch.Tensor], dict]:
    """The state dict and the metadata of a peer checkpoint, `module.` prefixes removed.

    Accepts {"model": state_dict, ...} (maskrcnn-benchmark, Detectron2), {"meta", "state_dict"}
    (mmcv / mmdetection) and a bare state dict.
    """
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{what}: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), Mapping):
        state, meta = obj["state_dict"], dict(obj.get("meta") or {})
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
        meta = {k: v for k, v in obj.items() if k in ("iteration", "__author__")}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise ConversionError(
            f"{what}: no state dict in it (top-level keys: {sorted(map(str, obj))}); expected "
            '{"model": ...}, {"meta": ..., "state_dict": ...} or a bare state dict'
        )
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{what}: {key} is a {type(value).__name__}, not a tensor")
        if name in out:
            raise ConversionError(f"{what}: {key} and another key both give {name}")
        out[name] = value
    return out, meta


def apply_rules(
    state: Mapping[str, torch.Tensor], rules: List[Rule], drops: List[Drop], source: str
) -> Converted:
    """Rename every tensor by the first rule that matches it, or drop it by a Drop rule."""
    model: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    mapped, dropped, unmapped = [], {}, []
    for name, value in state.items():
        drop = next((d for d in drops if re.fullmatch(d.pattern, name)), None)
        if drop is not None:
            if drop.check is not None:
                drop.check(name, value)
            dropped[name] = drop.reason
            continue
        for rule in rules:
            match = re.fullmatch(rule.pattern, name)
            if match:
                break
        else:
            unmapped.append(name)
            continue
        target = rule.target(match)
        if target in model:
            raise ConversionError(f"{origin[target]} and {name} both map to {target}")
        try:
            new = rule.change(value) if rule.change else value
        except ConversionError as e:
            raise ConversionError(f"{name}: {e}") from e
        # A fresh, contiguous float tensor: slices must not keep the whole peer tensor alive.
        model[target] = new.detach().clone().contiguous()
        origin[target] = name
        mapped.append((name, target, tuple(value.shape), tuple(new.shape), rule.change_doc))
    if unmapped:
        raise ConversionError(
            f"{len(unmapped)} {source} tensors have no Detectron2 counterpart known to this "
            f"converter (is --source right?): {', '.join(sorted(unmapped))}"
        )
    return Converted(source=source, model=model, mapped=mapped, dropped=dropped)


def resnet_rules(prefix: str, stem_conv: str, stem_bn: str) -> List[Rule]:
    """A torchvision-style ResNet under `prefix` (layer1..4, convK/bnK, downsample.0/.1) to
    Detectron2's ResNet (res2..5, convK + convK.norm, shortcut + shortcut.norm)."""
    p = re.escape(prefix)
    d2 = "backbone.bottom_up."

    def stage(m):
        return f"{d2}res{int(m.group(1)) + 1}.{m.group(2)}"

    return [
        Rule(p + re.escape(stem_conv) + r"\.weight", lambda m: d2 + "stem.conv1.weight"),
        Rule(
            p + re.escape(stem_bn) + r"\." + BN_TENSORS,
            lambda m: f"{d2}stem.conv1.norm.{m.group(1)}",
        ),
        Rule(
            p + r"layer([1-4])\.(\d+)\.conv([1-3])\.weight",
            lambda m: f"{stage(m)}.conv{m.group(3)}.weight",
        ),
        Rule(
            p + r"layer([1-4])\.(\d+)\.bn([1-3])\." + BN_TENSORS,
            lambda m: f"{stage(m)}.conv{m.group(3)}.norm.{m.group(4)}",
        ),
        Rule(
            p + r"layer([1-4])\.(0)\.downsample\.0\.weight", lambda m: f"{stage(m)}.shortcut.weight"
        ),
        Rule(
            p + r"layer([1-4])\.(0)\.downsample\.1\." + BN_TENSORS,
            lambda m: f"{stage(m)}.shortcut.norm.{m.group(3)}",
        ),
    ]


def describe_architecture(converted: Converted) -> None:
    """Fill depth, class count and MS R-CNN-ness from the converted names and shapes."""
    model = converted.model
    blocks = []
    for stage in range(2, 6):
        indices = {
            int(k.split(".")[3]) for k in model if k.startswith(f"backbone.bottom_up.res{stage}.")
        }
        blocks.append(max(indices) + 1 if indices else 0)
    depth = SUPPORTED_DEPTHS.get(tuple(blocks))
    if depth is None:
        raise ConversionError(
            f"{converted.source} checkpoint has ResNet stages of {blocks} blocks; this converter "
            "has configs for R-50 [3, 4, 6, 3] and R-101 [3, 4, 23, 3] FPN only"
        )
    converted.depth = depth
    cls = model.get("roi_heads.box_predictor.cls_score.weight")
    if cls is None:
        raise ConversionError(
            f"{converted.source} checkpoint has no box classifier: not a Mask R-CNN"
        )
    converted.num_classes = int(cls.shape[0]) - 1
    converted.mask_scoring = any(k.startswith("roi_heads.maskiou_head.") for k in model)
    expected = {
        "roi_heads.box_predictor.bbox_pred.weight": 4 * converted.num_classes,
        "roi_heads.mask_head.predictor.weight": converted.num_classes,
        "roi_heads.maskiou_head.predictor.weight": converted.num_classes,
    }
    wrong = [
        f"{k} has {model[k].shape[0]} outputs after conversion, expected {n}"
        for k, n in expected.items()
        if k in model and model[k].shape[0] != n
    ]
    if wrong:
        raise ConversionError(
            f"{converted.source} checkpoint's class-dependent layers disagree with its box "
            f"classifier ({converted.num_classes} classes + background): " + "; ".join(wrong)
        )
