"""``python -m pruninglab sapp-imagenet``: block pruning of ResNet-50 on ImageNet (Yasuda et al. 2024, §4.1).

Defined in book/sapp_imagenet.md.

The ImageNet task of the one SA++ driver (:mod:`pruninglab.experiments.sapp`). One run = one cell of
the paper's ImageNet table: ``--method dense|sapp|acdc|magnitude|powerprop``, ``--block B`` (paper:
8, 16, 32, 64), ``--sparsity S`` (nominal per-layer: 0.7, 0.8, 0.9, 0.95). ``--scale full`` is the
paper's recipe (torchvision ResNet-50, 90 epochs, SGD with momentum, cosine LR with peak 0.8, batch
2048, every conv/FC layer with >= 100 blocks pruned uniformly, SA++ attention clipping and logit
weight decay); ``--scale small`` is ResNet-50 at 32x32 pixels for a few dozen steps on a generated
folder. Several GPUs: ``torchrun --nproc_per_node=8 -m pruninglab sapp-imagenet --data /data/imagenet``
(the global batch stays ``--batch-size``; ``--accumulate`` splits it further on fewer GPUs).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import _checks, models
from ..data.imagenet import attach_input_normalization, imagenet_loader, uint8_imagefolder_datasets
from ..train import all_reduce_sum
from . import base, sapp
from .base import option
from .sapp import SappConfig, experiment_name  # noqa: F401  (re-exported for the chapters)

EXPERIMENT = "sapp-imagenet"
ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class ImagenetConfig(SappConfig):
    """One ImageNet run. [P] = the paper's value, [R] = our choice where the paper is silent.

    Defined in book/sapp_imagenet.md.
    """

    block: int = option(16, "block size B (paper: 8, 16, 32, 64)")
    epochs: float = option(90.0, "[P] 90 (ignored when --steps is given)")
    batch_size: int = option(2048, "[P] global batch (all processes, all micro-batches)")
    lr: float = option(0.8, "[P] peak learning rate (cosine schedule)")
    weight_decay: float = option(3.0518e-5, "[R] weight decay (not stated; ACDC's value)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (and at phase changes)")
    workers: int = option(8, "DataLoader worker processes per GPU")
    arch: str = option("resnet50", "[P] torchvision resnet50 (resnet18/34 for quick tests)")
    image_size: int = option(224, "[R] crop size (the usual 224)")
    resize: int = option(256, "[R] shorter side before the validation center crop")
    momentum: float = option(0.875, "[R] SGD momentum (not stated; ACDC's value)")
    warmup_epochs: float = option(5.0, "[R] linear warm-up (not stated; ACDC's 5)")
    label_smoothing: float = option(0.0, "[R] none stated")
    channels_last: bool = option(True, "channels-last memory format on CUDA (speed only)")

    @classmethod
    def full(cls, **overrides) -> "ImagenetConfig":
        """The paper's recipe (values marked [P] in the field help), our choices for the rest."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides) -> "ImagenetConfig":
        """ResNet-50 at 32x32 pixels, batch 8, 42 steps (two per SA++ phase), on a generated folder.

        SA++'s clipping and logit weight decay stay off (a 42-step run is for the mechanics)."""
        # One CPU thread: on a shared 2-core machine idle OpenMP threads spin and burn CPU time.
        base_ = dict(image_size=32, resize=36, steps=42, batch_size=8, lr=0.01, warmup_epochs=0.0,
                     eval_batch_size=32, eval_every=8, checkpoint_every=21, workers=0, cpu_threads=1,
                     clip_attention=False, logit_weight_decay=0.0)
        return cls(**{**base_, **overrides})

    def _check_task(self) -> None:
        _checks.one_of(self.arch, "arch", ARCHS)
        for name in ("image_size", "resize"):
            _checks.positive_int(getattr(self, name), name)
        _checks.fraction(self.label_smoothing, "label_smoothing")
        _checks.nonnegative_float(self.warmup_epochs, "warmup_epochs")
        _checks.nonnegative_float(self.momentum, "momentum")


def resolve_data(data: str | None) -> Path:
    """The ImageNet root: ``--data DIR``, else ``$PRUNINGLAB_DATA/imagenet``."""
    if data is None:
        base = os.environ.get("PRUNINGLAB_DATA")
        if not base:
            raise ValueError(
                "data: no ImageNet folder given; pass --data DIR (with DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG, "
                "or one written by `python -m pruninglab make-imagefolder DIR`) or set $PRUNINGLAB_DATA"
            )
        data = str(Path(base) / "imagenet")
    return Path(data)


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A torchvision ResNet (random init) with ``num_classes`` outputs.
    """
    _checks.one_of(arch, "arch", ARCHS)
    return models.build_model(arch, num_classes=num_classes)


def make_evaluate(val_ds, config: ImagenetConfig, dev: torch.device):
    """Top-1 / top-5 accuracy and loss on the validation set, split over torchrun processes and all-reduced.

    Rank ``r`` of ``W`` evaluates images ``r, r+W, ...``, so
    every image counts exactly once (no padding as with ``DistributedSampler``). Batches are uint8;
    the model's input hook (:func:`~pruninglab.data.imagenet.attach_input_normalization`) normalises
    them on the device.
    """
    loader = imagenet_loader(val_ds, config.eval_batch_size, seed=config.seed, num_workers=config.workers,
                             pin_memory=dev.type == "cuda", prefetch_factor=2)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        was_training = model.training
        model.eval()  # batch-norm running statistics, whoever calls this
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top-1, top-5, images
        for (images, flips), labels in loader:
            images, labels = (images.to(dev, non_blocking=True), flips), labels.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16) if (config.amp and dev.type == "cuda") \
                    else contextlib.nullcontext():
                logits = model(images)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums[0] += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += (top[:, 0] == labels).sum().double()
            sums[2] += (top == labels[:, None]).any(dim=1).sum().double()
            sums[3] += labels.numel()
        model.train(was_training)
        sums = all_reduce_sum(sums)
        n = float(sums[3])
        return {"val_loss": float(sums[0]) / n, "val_top1": float(sums[1]) / n, "val_top5": float(sums[2]) / n}

    return evaluate


def setup(config: ImagenetConfig, root: Path, dev: torch.device, world: int) -> sapp.TaskSetup:
    """Data, model, optimizer and evaluation of one ImageNet run."""
    train_ds, val_ds = uint8_imagefolder_datasets(root, config.image_size, config.resize, seed=config.seed)
    micro = base.per_rank_batch(config.batch_size, world, config.accumulate)
    # Workers decode and crop to uint8; flip, float conversion and normalisation run on the device.
    loader = imagenet_loader(train_ds, micro, seed=config.seed, num_workers=config.workers,
                             pin_memory=dev.type == "cuda")
    net = build_model(config.arch, len(train_ds.classes)).to(dev)
    channels_last = config.channels_last and dev.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    attach_input_normalization(net, channels_last=channels_last)

    def make_optimizer(model: nn.Module, total_steps: int, steps_per_epoch: int):
        groups = sapp.parameter_groups(model, config.weight_decay, config.logit_weight_decay)
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, base.lr_lambda_cosine(total_steps, warmup))

    def loss_fn(logits, labels):
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)

    return sapp.TaskSetup(
        net=net, train_data=loader, evaluate=make_evaluate(val_ds, config, dev), make_optimizer=make_optimizer,
        loss_fn=loss_fn, stored={"num_classes": len(train_ds.classes)},
        data_metrics=lambda: {"train_images": len(train_ds), "val_images": len(val_ds)}, samples_name="images",
        log_every_cap=100, default_eval_every=lambda spe: max(1, 10 * spe))


TASK = sapp.SappTask(
    name=EXPERIMENT, config_cls=ImagenetConfig, schedule="imagenet", resolve_data=resolve_data, setup=setup,
    headline="val_top1", summary="val top-1 {val_top1:.4f}, top-5 {val_top5:.4f}, {pruned_layers} layers "
                                 "pruned, effective sparsity {effective_sparsity:.4f}",
    description="SA++ / ACDC / magnitude / PowerProp block pruning of ResNet-50 on an ImageNet folder "
                "(Yasuda et al. 2024, §4.1).")
run, EXPERIMENT_SPEC, main = sapp.entry_points(TASK)
