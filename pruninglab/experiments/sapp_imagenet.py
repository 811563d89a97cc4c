"""``python -m pruninglab sapp-imagenet``: block pruning of ResNet-50 on ImageNet (Yasuda et al. 2024, §4.1).

Defined in book/sapp_imagenet.md.

One run = one cell of the paper's ImageNet table: ``--method dense|sapp|acdc|magnitude|powerprop``,
``--block B`` (paper: 8, 16, 32, 64), ``--sparsity S`` (nominal per-layer: 0.7, 0.8, 0.9, 0.95).
``--scale full`` is the paper's recipe (torchvision ResNet-50, 90 epochs, SGD with momentum,
cosine LR with peak 0.8, batch 2048, every conv/FC layer with >= 100 blocks pruned uniformly);
``--scale small`` is ResNet-50 at 32x32 pixels for a few dozen steps on a generated folder.
Several GPUs: ``torchrun --nproc_per_node=8 -m pruninglab sapp-imagenet --data /data/imagenet``
(the global batch stays ``--batch-size``; ``--accumulate`` splits it further on fewer GPUs).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import runtime
from ..cli import add_common_arguments
from ..data.imagenet import imagefolder_datasets
from ..train import all_reduce_sum, dist_info, distributed_device, init_distributed, make_loader, train
from . import sapp_common as common

EXPERIMENT = "sapp-imagenet"
ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclass(frozen=True)
class ImagenetConfig:
    """One ImageNet run. [P] = the paper's value, [R] = our choice where the paper is silent.

    Defined in book/sapp_imagenet.md.
    """

    method: str = field(default="sapp", metadata={"help": "dense|sapp|acdc|magnitude|powerprop"})
    block: int = field(default=16, metadata={"help": "block size B (paper: 8, 16, 32, 64)"})
    sparsity: float = field(default=0.9, metadata={"help": "nominal per-layer block sparsity"})
    arch: str = field(default="resnet50", metadata={"help": "[P] torchvision resnet50 (resnet18/34 for quick tests)"})
    image_size: int = field(default=224, metadata={"help": "[R] crop size (the usual 224)"})
    resize: int = field(default=256, metadata={"help": "[R] shorter side before the validation center crop"})
    epochs: float = field(default=90.0, metadata={"help": "[P] 90 (ignored when --steps is given)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    batch_size: int = field(default=2048, metadata={"help": "[P] global batch (all processes, all micro-batches)"})
    accumulate: int = field(default=1, metadata={"help": "micro-batches per optimizer step (e.g. 8 on one GPU)"})
    lr: float = field(default=0.8, metadata={"help": "[P] peak learning rate (cosine schedule)"})
    momentum: float = field(default=0.875, metadata={"help": "[R] SGD momentum (not stated; ACDC's value)"})
    weight_decay: float = field(default=3.0518e-5, metadata={"help": "[R] weight decay (not stated; ACDC's value)"})
    warmup_epochs: float = field(default=5.0, metadata={"help": "[R] linear warm-up (not stated; ACDC's 5)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "[R] none stated"})
    eval_batch_size: int = field(default=256, metadata={"help": "images per evaluation batch and process"})
    eval_every: int | None = field(default=None, metadata={"help": "evaluate every N steps (default: every 10 epochs)"})
    checkpoint_every: int = field(default=1000, metadata={"help": "checkpoint every N steps (and at phase changes)"})
    min_blocks: int = field(default=100, metadata={"help": "[P] layers with fewer blocks stay dense"})
    ramp_c: float = field(default=4.0, metadata={"help": "[P] SA++ sparsification ramp constant c"})
    workers: int = field(default=8, metadata={"help": "DataLoader worker processes per GPU"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (ignored on CPU)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format on CUDA (speed only)"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch CPU threads during the run (default: leave as is)"})

    @classmethod
    def full(cls) -> "ImagenetConfig":
        """The paper's recipe (values marked [P] in the field help), our choices for the rest."""
        return cls()

    @classmethod
    def small(cls) -> "ImagenetConfig":
        """ResNet-50 at 32x32 pixels, batch 8, 42 steps (two per SA++ phase), on a generated folder."""
        # One CPU thread: on a shared 2-core machine idle OpenMP threads spin and burn CPU time.
        return cls(image_size=32, resize=36, steps=42, batch_size=8, lr=0.01, warmup_epochs=0.0,
                   eval_batch_size=32, eval_every=8, checkpoint_every=21, workers=0, cpu_threads=1)

    def validate(self) -> None:
        common.check_method(self.method)
        if self.arch not in ARCHS:
            raise ValueError(f"arch: expected one of {', '.join(ARCHS)}, got {self.arch!r}")
        common.check_positive_int("block", self.block)
        common.check_fraction("sparsity", self.sparsity)
        common.check_positive_int("steps", self.steps, allow_none=True)
        for name in ("batch_size", "accumulate", "eval_batch_size", "checkpoint_every", "image_size", "resize"):
            common.check_positive_int(name, getattr(self, name))
        common.check_positive_int("eval_every", self.eval_every, allow_none=True)
        common.check_positive_int("cpu_threads", self.cpu_threads, allow_none=True)
        common.check_fraction("label_smoothing", self.label_smoothing)
        if not self.epochs > 0:
            raise ValueError(f"epochs: expected a positive number, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs: expected a non-negative number, got {self.warmup_epochs!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers: expected a non-negative integer, got {self.workers!r}")


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

    Defined in book/sapp_imagenet.md.
    """
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    # A forward pre-hook rather than a wrapper module: state_dict keys stay those of the ResNet.
    return (args[0].contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def make_evaluate(val_ds, config: ImagenetConfig, dev: torch.device):
    """Top-1 / top-5 accuracy and loss on the validation set, split over torchrun processes and all-reduced.

    Defined in book/sapp_imagenet.md. Rank ``r`` of ``W`` evaluates images ``r, r+W, ...``, so
    every image counts exactly once (no padding as with ``DistributedSampler``).
    """
    rank, _, world = dist_info()
    shard = torch.utils.data.Subset(val_ds, list(range(rank, len(val_ds), world)))
    loader = torch.utils.data.DataLoader(shard, batch_size=config.eval_batch_size, shuffle=False,
                                         num_workers=config.workers, pin_memory=dev.type == "cuda")

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        was_training = model.training
        model.eval()  # batch-norm running statistics, whoever calls this
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top-1, top-5, images
        for images, labels in loader:
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
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


def run(
    config: ImagenetConfig,
    data: str | None = None,
    *,
    out: str | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str | None = None,
    scale_name: str | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train, prune and evaluate one ImageNet configuration; store and return the final metrics.

    Defined in book/sapp_imagenet.md. Returns ``{"experiment", "completed", "metrics", "result_path",
    "run_dir", "model", "masks", "pruner_layers"}``; with ``stop_after`` the run may end early
    (``completed=False``, nothing stored), as a crash would; rerun with ``resume=True``.
    """
    config.validate()
    with common.cpu_threads(config.cpu_threads):
        return _run(config, data, out=out, resume=resume, seed=seed, device=device, scale_name=scale_name,
                    progress=progress, stop_after=stop_after)


def _run(config, data, *, out, resume, seed, device, scale_name, progress, stop_after) -> dict:
    sc = runtime.scale(scale_name)
    t_start = time.perf_counter()
    root = resolve_data(data)
    dev = distributed_device(device)
    rank, world = init_distributed(dev)
    runtime.seed_everything(seed)

    train_ds, val_ds = imagefolder_datasets(root, config.image_size, config.resize, seed=seed)
    micro = common.per_rank_batch(config.batch_size, world, config.accumulate)
    loader = make_loader(train_ds, micro, seed=seed, num_workers=config.workers, pin_memory=dev.type == "cuda")
    steps_per_epoch = len(loader) // config.accumulate
    if steps_per_epoch < 1:
        raise ValueError(f"accumulate: {config.accumulate} micro-batches per step exceed the {len(loader)} of an epoch")
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    net = build_model(config.arch, len(train_ds.classes)).to(dev)
    pruner = common.build_pruner(
        net, config.method, sparsity=config.sparsity, block=config.block, total_steps=total_steps,
        schedule="imagenet", min_blocks=config.min_blocks, ramp_c=config.ramp_c,
    )
    model: nn.Module = net
    if config.channels_last and dev.type == "cuda":
        net.to(memory_format=torch.channels_last)
        net.register_forward_pre_hook(_to_channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, common.lr_lambda_cosine(total_steps, warmup_steps))
    evaluate = make_evaluate(val_ds, config, dev)

    experiment = common.experiment_name(EXPERIMENT, config.method, config.block, config.sparsity)
    run_dir = Path(out) if out is not None else common.default_run_dir(experiment, sc)
    stored_config = {**dataclasses.asdict(config), "data": str(root), "seed": seed, "scale": sc,
                     "total_steps": total_steps, "num_classes": len(train_ds.classes)}

    def loss_fn(logits, labels):
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)

    res = train(
        model, loss_fn, loader, optimizer, steps=total_steps, scheduler=scheduler,
        hooks=[pruner] if pruner is not None else [], evaluate=evaluate,
        eval_every=config.eval_every or max(1, 10 * steps_per_epoch), log_every=max(1, min(100, steps_per_epoch)),
        out_dir=run_dir, checkpoint_every=config.checkpoint_every, resume=resume, config=stored_config,
        dev=dev, amp=config.amp, progress=progress, stop_after=stop_after, desc=experiment,
        accumulate=config.accumulate, distributed_eval=True,
    )
    info = {"experiment": experiment, "completed": res.step == total_steps, "run_dir": run_dir, "model": net,
            "masks": {}, "metrics": {}, "result_path": None,
            "pruner_layers": list(pruner.layouts) if pruner is not None else []}
    if res.step < total_steps:
        return info

    in_loop = dict(res.metrics)
    pruned = common.finish_pruning(net, pruner)
    final = evaluate(model)  # the finalized model: plain weights with exact zeros
    images = res.steps_run * config.batch_size
    metrics = {
        **final,
        "val_top1_before_finalize": in_loop.get("val_top1"),
        "effective_sparsity": pruned["effective_sparsity"],
        "pruned_layers": pruned["pruned_layers"],
        "layer_sparsity": pruned["layer_sparsity"],
        "steps": total_steps,
        "train_images": len(train_ds),
        "val_images": len(val_ds),
        "world_size": world,
        "train_images_per_s": images / res.train_time_s if res.steps_run and res.train_time_s else None,
    }
    info.update(metrics=metrics, masks=pruned["masks"])
    if rank == 0:
        info["result_path"] = common.store_result(
            experiment, metrics, stored_config, scale_name=sc, dev=dev,
            wall_time_s=time.perf_counter() - t_start, run_dir=run_dir, masks=pruned["masks"])
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab sapp-imagenet --data DIR --method M --block B --sparsity S [--scale small|full] [--resume]``.

    Defined in book/sapp_imagenet.md.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pruninglab sapp-imagenet",
        description="SA++ / ACDC / magnitude / PowerProp block pruning of ResNet-50 on an ImageNet folder "
        "(Yasuda et al. 2024, §4.1).",
    )
    add_common_arguments(parser)
    common.add_config_arguments(parser, ImagenetConfig)
    parser.add_argument("--stop-after", type=int, default=None, help="stop after N steps, as a crash would (tests)")
    args = parser.parse_args(argv)
    sc = runtime.scale(args.scale)
    config = common.config_from_args(ImagenetConfig, args, sc)
    info = run(config, args.data, out=args.out, resume=args.resume, seed=args.seed, device=args.device,
               scale_name=sc, progress=False if args.no_progress else None, stop_after=args.stop_after)
    if dist_info()[0] == 0:
        if not info["completed"]:
            print(f"{info['experiment']}: stopped early; continue with --resume --out {info['run_dir']}")
        else:
            m = info["metrics"]
            print(f"{info['experiment']} ({sc}): val top-1 {m['val_top1']:.4f}, top-5 {m['val_top5']:.4f}, "
                  f"{m['pruned_layers']} layers pruned, effective sparsity {m['effective_sparsity']:.4f}; "
                  f"result in {info['result_path']}")
    return 0
