"""Training and evaluation wiring: Detectron2's DefaultTrainer with ms-rcnn's evaluator and TTA.

`tools/train_net.py` is a thin command line over `main(args)`; other code can register its
datasets and call `main` (or use `Trainer` directly) the same way.
"""

import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from . import data  # noqa: F401  (registers the synthetic_shapes datasets for YAML configs)
from .checkpoint import MSRCNNCheckpointer
from .config import add_ms_rcnn_config, check_pointrend_config
from .data.resize import build_dataset_mapper, check_resize_config
from .data.user_datasets import check_config_datasets, register_coco_from_args
from .env import detectron2_line
from .evaluation import build_ms_rcnn_evaluator, save_eval_results
from .model_zoo import merge_config_file, resolve_config_file
from .modeling.box_predictor import SoftNMSFastRCNNOutputLayers
from .modeling.tta import MaskScoringRCNNWithTTA, check_tta_resize_style, check_tta_supported
from .version import __version__

__all__ = ["Trainer", "setup", "main", "freeze_all_but_maskiou"]

logger = logging.getLogger(__name__)


def freeze_all_but_maskiou(model) -> int:
    """Freeze every parameter outside the MaskIoU head; return how many stay trainable.

    A frozen model must compute exactly what the checkpoint it started from did, so trainable
    BatchNorm layers outside the head become FrozenBatchNorm2d: in training mode they would
    otherwise keep updating their running statistics. With no parameter needing a gradient
    outside the head, autograd records nothing there (whatever DETACH_MASK/DETACH_FEATURES
    say), so a step back-propagates through the head only.
    """
    roi_heads = getattr(model, "roi_heads", None)
    head = getattr(roi_heads, "maskiou_head", None)
    if head is None:
        raise ValueError(
            "MODEL.ROI_MASKIOU_HEAD.TRAIN_ONLY_MASKIOU=True needs a model with a MaskIoU head "
            "(MODEL.ROI_HEADS.NAME: MaskScoringROIHeads)"
        )
    for name, child in list(model.named_children()):
        if child is not roi_heads:
            setattr(model, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))
    for name, child in list(roi_heads.named_children()):
        if child is not head:
            setattr(roi_heads, name, FrozenBatchNorm2d.convert_frozen_batchnorm(child))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in head.parameters())


def check_soft_nms_supported(cfg, model) -> None:
    """Refuse TEST.SOFT_NMS.ENABLED on ROI heads that would silently ignore it."""
    if not cfg.TEST.SOFT_NMS.ENABLED:
        return
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if not isinstance(predictor, SoftNMSFastRCNNOutputLayers):
        raise ValueError(
            f"TEST.SOFT_NMS.ENABLED=True, but MODEL.ROI_HEADS.NAME={cfg.MODEL.ROI_HEADS.NAME} "
            "runs Detectron2's hard NMS and would ignore it. Use MaskScoringROIHeads, or "
            "SoftNMSROIHeads for a plain Mask R-CNN baseline."
        )


class Trainer(DefaultTrainer):
    """DefaultTrainer that evaluates with MaskScoringCOCOEvaluator and saves the results.

    Its checkpoints are written atomically and hold the optimizer state (Detectron2 0.6's
    DefaultTrainer saves only the iteration and the scheduler, so a resumed run restarted
    SGD momentum from zero); resuming refuses a checkpoint that does not fit the model.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        # With the config: checkpoints record the config keys the weights need, and starting
        # from MODEL.WEIGHTS made for other values of them is a warning naming each.
        self.checkpointer = MSRCNNCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), config=cfg
        )
        for hook in self._hooks:  # the periodic saver was built with Detectron2's checkpointer
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

    # Detectron2 main's DefaultTrainer (since PR #3686) has its own state_dict/load_state_dict
    # with the optimizer under "_trainer", and its loader requires that key; v0.6's has none.
    # Both methods here start from TrainerBase's (the iteration and hook states, identical in
    # both versions) and handle "_trainer" themselves, so resuming behaves the same on either
    # version: a checkpoint without optimizer state loads with a warning, and the optimizer
    # state of one that has it is loaded exactly once.
    def state_dict(self):
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()  # the optimizer (and AMP's grad scaler)
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning(
                "The checkpoint has no optimizer state (written by Detectron2's DefaultTrainer): "
                "resuming with fresh SGD momentum"
            )

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        check_soft_nms_supported(cfg, model)
        if cfg.TEST.AUG.ENABLED:  # refuse now, not after training when the TTA eval starts
            check_tta_supported(model)
            check_tta_resize_style(cfg)
        if cfg.MODEL.ROI_MASKIOU_HEAD.TRAIN_ONLY_MASKIOU:
            n = freeze_all_but_maskiou(model)
            logger.info(f"TRAIN_ONLY_MASKIOU: training only the MaskIoU head ({n} parameters)")
        return model

    # Detectron2's loaders with its DatasetMapper, whose resize follows INPUT.RESIZE_STYLE (with
    # "detectron2" the mapper is exactly the one Detectron2 builds without a mapper argument).
    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = build_dataset_mapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_ms_rcnn_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            save_eval_results(results, cfg.OUTPUT_DIR)
        return results

    @classmethod
    def test_with_TTA(cls, cfg, model):
        logger.info("Running inference with test-time augmentation ...")
        model = MaskScoringRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = DefaultTrainer.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in results.items()})


def setup(args):
    """Config from `args.config_file` and trailing `KEY VALUE` overrides, then default_setup.

    Datasets given with --register-coco are registered first, here rather than in the command
    line script, so that every worker process started by `launch` registers them too.
    """
    registered = register_coco_from_args(args)
    cfg = get_cfg()
    add_ms_rcnn_config(cfg)
    if not args.config_file:
        raise ValueError("--config-file is required (e.g. demo/ms_rcnn_R_18_demo.yaml)")
    # A model zoo name becomes its file's path: default_setup reads and copies the file.
    args.config_file, config_source = resolve_config_file(args.config_file)
    merge_config_file(cfg, args.config_file)  # with PointRend's keys when the file needs them
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE}, but torch sees no GPU here; add `MODEL.DEVICE cpu`"
        )
    check_config_datasets(cfg, registered)
    check_pointrend_config(cfg)
    check_resize_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures Detectron2's loggers only; ms-rcnn's (the evaluator's COCO backend
    # and why, TRAIN_ONLY_MASKIOU, ...) go to the same console and log.txt.
    # Unlike Detectron2's, it keeps propagating: handlers set up by the caller still see it.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ms_rcnn").propagate = True
    logger.info("Using %s", config_source)
    logger.info("Running on " + detectron2_line())
    logger.info(f"ms-rcnn {__version__}")
    if cfg.MODEL.DEVICE == "cpu":
        # Tiny values (denormal floats) appear in weights and gradients as training goes on;
        # CPUs process them up to 100x slower, which made CPU steps grow from 0.5 s to 5 s.
        torch.set_flush_denormal(True)
    return cfg


def main(args):
    """Train, or evaluate with --eval-only; returns the evaluation results (or training's)."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Strict: evaluating a model with re-initialized layers, or weights made for another
        # pixel mean, anchors or RoIAlign (MODEL.WEIGHTS_CONFIG_CHECK), would be a silent wrong
        # result.
        checkpointer = MSRCNNCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True, config=cfg)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs trained weights: set MODEL.WEIGHTS (or --resume with a "
                f"checkpoint in OUTPUT_DIR={cfg.OUTPUT_DIR}); it would evaluate random weights"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()
