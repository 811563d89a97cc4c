"""``python -m pruninglab sapp-criteo``: block pruning of the Criteo MLP's first dense layer (Yasuda et al. 2024, §4.2).

Defined in book/sapp_criteo.md.

One run = one cell of the paper's Criteo table: ``--method dense|sapp|acdc|magnitude|powerprop``,
``--block B`` (paper: 5, 10, 20), ``--sparsity S`` (paper: 0.90 ... 0.99). ``--scale full`` is the
paper's recipe (Adam, LR 2e-2 -> 3e-4 exponentially, 25 epochs, batch 32768, only the 390 -> 400
layer pruned, validation log loss); ``--scale small`` is a tiny CPU run on a generated file.
Several GPUs: ``torchrun --nproc_per_node=N -m pruninglab sapp-criteo ...`` (the global batch
stays ``--batch-size``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import runtime
from ..cli import add_common_arguments
from ..data.criteo import CriteoBatches, index_lines
from ..models import CriteoMLP
from ..train import all_reduce_sum, dist_info, distributed_device, init_distributed, train
from . import sapp_common as common

EXPERIMENT = "sapp-criteo"
#: The only layer the paper prunes: the first dense layer, 390 -> 400 (torch weight 400 x 390).
PRUNED_LAYERS = ["dense.0"]
#: Bins of the histogram AUC (exact up to ties within a bin of width 1e-4 in probability).
AUC_BINS = 10_000


@dataclass(frozen=True)
class CriteoConfig:
    """One Criteo run. [P] = the paper's value, [R] = our choice where the paper is silent.

    Defined in book/sapp_criteo.md.
    """

    method: str = field(default="sapp", metadata={"help": "dense|sapp|acdc|magnitude|powerprop"})
    block: int = field(default=10, metadata={"help": "block size B (paper: 5, 10, 20)"})
    sparsity: float = field(default=0.9, metadata={"help": "fraction of blocks pruned in the first dense layer"})
    epochs: float = field(default=25.0, metadata={"help": "[P] 25 (ignored when --steps is given)"})
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (overrides --epochs)"})
    batch_size: int = field(default=32768, metadata={"help": "[P] global batch (all processes, all micro-batches)"})
    accumulate: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=2e-2, metadata={"help": "[P] initial Adam learning rate"})
    lr_final: float = field(default=3e-4, metadata={"help": "[P] final learning rate (exponential decay)"})
    weight_decay: float = field(default=0.0, metadata={"help": "[R] Adam weight decay (not stated)"})
    num_buckets: int = field(default=1_000_000, metadata={"help": "[R] hash buckets per categorical column"})
    embed_dim: int = field(default=10, metadata={"help": "[P] embedding size per feature"})
    train_fraction: float = field(default=0.72, metadata={"help": "[R] first rows for training (72%% = 33.0M of 45.8M)"})
    val_rows: int | None = field(default=None, metadata={"help": "cap on validation rows (default: all the rest)"})
    eval_batch_size: int = field(default=65536, metadata={"help": "rows per evaluation batch"})
    eval_every: int | None = field(default=None, metadata={"help": "evaluate every N steps (default: once per epoch)"})
    checkpoint_every: int = field(default=500, metadata={"help": "checkpoint every N steps (and at phase changes)"})
    min_blocks: int = field(default=100, metadata={"help": "[P] layers with fewer blocks stay dense"})
    ramp_c: float = field(default=4.0, metadata={"help": "[P] SA++ sparsification ramp constant c"})
    acdc_keep_values: bool = field(default=True, metadata={"help": "[P] ACDC masks (keeps values) on Criteo"})
    workers: int = field(default=6, metadata={"help": "DataLoader processes parsing the TSV"})
    on_error: str = field(default="raise", metadata={"help": "malformed lines: raise | skip (and count)"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (ignored on CPU)"})
    cpu_threads: int | None = field(default=None, metadata={"help": "torch CPU threads during the run (default: leave as is)"})

    @classmethod
    def full(cls) -> "CriteoConfig":
        """The paper's recipe (values marked [P] in the field help), our choices for the rest."""
        return cls()

    @classmethod
    def small(cls) -> "CriteoConfig":
        """Tiny settings for a CPU: a generated file of ~20k rows, 2 epochs of batch 256, 1000 buckets."""
        # One CPU thread: a 0.5M-parameter MLP gains little from two, and on a shared machine
        # idle OpenMP threads spin and burn many times the useful CPU time.
        return cls(epochs=2.0, batch_size=256, lr=5e-3, lr_final=5e-4, num_buckets=1000, eval_batch_size=4096,
                   checkpoint_every=20, workers=0, cpu_threads=1)

    def validate(self) -> None:
        common.check_method(self.method)
        common.check_positive_int("block", self.block)
        common.check_fraction("sparsity", self.sparsity)
        common.check_positive_int("steps", self.steps, allow_none=True)
        common.check_positive_int("batch_size", self.batch_size)
        common.check_positive_int("accumulate", self.accumulate)
        common.check_positive_int("eval_batch_size", self.eval_batch_size)
        common.check_positive_int("eval_every", self.eval_every, allow_none=True)
        common.check_positive_int("checkpoint_every", self.checkpoint_every)
        common.check_positive_int("val_rows", self.val_rows, allow_none=True)
        common.check_positive_int("cpu_threads", self.cpu_threads, allow_none=True)
        common.check_fraction("train_fraction", self.train_fraction, 1e-9, 1.0)
        if not self.epochs > 0:
            raise ValueError(f"epochs: expected a positive number, got {self.epochs!r}")
        if not 0 < self.lr_final <= self.lr:
            raise ValueError(f"lr_final: expected 0 < lr_final <= lr ({self.lr}), got {self.lr_final!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error: expected 'raise' or 'skip', got {self.on_error!r}")


def resolve_data(data: str | None) -> Path:
    """The training TSV: ``--data FILE`` or ``DIR`` (-> ``DIR/train.txt``), else ``$PRUNINGLAB_DATA/criteo/train.txt``."""
    import os

    if data is None:
        base = os.environ.get("PRUNINGLAB_DATA")
        if not base:
            raise ValueError(
                "data: no Criteo file given; pass --data FILE (train.txt of the Kaggle release, or one written by "
                "`python -m pruninglab make-criteo FILE --rows N`) or set $PRUNINGLAB_DATA"
            )
        data = str(Path(base) / "criteo" / "train.txt")
    p = Path(data)
    if p.is_dir():
        p = p / "train.txt"
    if not p.is_file():
        raise FileNotFoundError(f"data: no Criteo TSV file at {p}")
    return p


def make_evaluate(val: CriteoBatches, dev: torch.device):
    """Validation log loss, accuracy and AUC over ``val``, summed over all torchrun processes.

    Defined in book/sapp_criteo.md. The AUC comes from per-class histograms of the predicted
    probability (``AUC_BINS`` bins, all-reduced), so it needs no gather of the predictions.
    """

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict:
        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, rows
        hist = torch.zeros(2, AUC_BINS, dtype=torch.float64, device=dev)
        for (ints, cats), labels in val.batches(0, 0):
            ints, cats, labels = ints.to(dev), cats.to(dev), labels.to(dev)
            logits = model((ints, cats)).float()
            sums[0] += nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum").double()
            sums[1] += ((logits > 0).float() == labels).sum().double()
            sums[2] += labels.numel()
            b = (torch.sigmoid(logits) * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            hist[0].index_add_(0, b[labels < 0.5], torch.ones_like(b[labels < 0.5], dtype=torch.float64))
            hist[1].index_add_(0, b[labels > 0.5], torch.ones_like(b[labels > 0.5], dtype=torch.float64))
        model.train(was_training)
        sums = all_reduce_sum(sums)
        hist = all_reduce_sum(hist)
        neg, pos = hist[0], hist[1]
        # P(score_pos > score_neg) + 0.5 P(equal bin): negatives strictly below each positive bin.
        neg_below = torch.cumsum(neg, 0) - neg
        denom = float(pos.sum() * neg.sum())
        auc = float(((neg_below + 0.5 * neg) * pos).sum()) / denom if denom > 0 else float("nan")
        n = float(sums[2])
        return {"val_logloss": float(sums[0]) / n, "val_accuracy": float(sums[1]) / n, "val_auc": auc}

    return evaluate


def run(
    config: CriteoConfig,
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
    """Train, prune and evaluate one Criteo configuration; store and return the final metrics.

    Defined in book/sapp_criteo.md. Returns ``{"experiment", "completed", "metrics", "result_path",
    "run_dir", "model", "masks"}``; with ``stop_after`` the run may end early (``completed=False``,
    nothing stored), as a crash would; rerun with ``resume=True`` to finish it.
    """
    config.validate()
    with common.cpu_threads(config.cpu_threads):
        return _run(config, data, out=out, resume=resume, seed=seed, device=device, scale_name=scale_name,
                    progress=progress, stop_after=stop_after)


def _run(config, data, *, out, resume, seed, device, scale_name, progress, stop_after) -> dict:
    sc = runtime.scale(scale_name)
    t_start = time.perf_counter()
    path = resolve_data(data)
    dev = distributed_device(device)
    rank, world = init_distributed(dev)
    runtime.seed_everything(seed)

    index = index_lines(path)
    n_train = int(math.floor(config.train_fraction * index.num_lines))
    val_end = index.num_lines if config.val_rows is None else min(index.num_lines, n_train + config.val_rows)
    if n_train < 1 or val_end <= n_train:
        raise ValueError(
            f"train_fraction: {config.train_fraction} of the {index.num_lines} rows of {path} leaves "
            f"{n_train} training and {val_end - n_train} validation rows; both must be non-empty"
        )
    micro = common.per_rank_batch(config.batch_size, world, config.accumulate)
    train_data = CriteoBatches(path, micro, start_row=0, end_row=n_train, num_buckets=config.num_buckets,
                               mode="train", on_error=config.on_error, num_workers=config.workers)
    val_data = CriteoBatches(path, config.eval_batch_size, start_row=n_train, end_row=val_end,
                             num_buckets=config.num_buckets, mode="eval", on_error=config.on_error,
                             num_workers=config.workers)
    steps_per_epoch = len(train_data) // config.accumulate
    if steps_per_epoch < 1:
        raise ValueError(f"accumulate: {config.accumulate} micro-batches per step exceed the {len(train_data)} of an epoch")
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))

    model = CriteoMLP(num_buckets=config.num_buckets, embed_dim=config.embed_dim).to(dev)
    pruner = common.build_pruner(
        model, config.method, sparsity=config.sparsity, block=config.block, total_steps=total_steps,
        schedule="criteo", min_blocks=config.min_blocks, layers=PRUNED_LAYERS, ramp_c=config.ramp_c,
        acdc_keep_values=config.acdc_keep_values,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, common.lr_lambda_exponential(total_steps, config.lr, config.lr_final))
    evaluate = make_evaluate(val_data, dev)

    experiment = common.experiment_name(EXPERIMENT, config.method, config.block, config.sparsity)
    run_dir = Path(out) if out is not None else common.default_run_dir(experiment, sc)
    stored_config = {**dataclasses.asdict(config), "data": str(path), "seed": seed, "scale": sc,
                     "total_steps": total_steps}

    def loss_fn(logits, labels):
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)

    res = train(
        model, loss_fn, train_data, optimizer, steps=total_steps, scheduler=scheduler,
        hooks=[pruner] if pruner is not None else [], evaluate=evaluate,
        eval_every=config.eval_every or steps_per_epoch, log_every=max(1, min(50, steps_per_epoch)),
        out_dir=run_dir, checkpoint_every=config.checkpoint_every, resume=resume, config=stored_config,
        dev=dev, amp=config.amp, progress=progress, stop_after=stop_after, desc=experiment,
        accumulate=config.accumulate, distributed_eval=True,
    )
    out_info = {"experiment": experiment, "completed": res.step == total_steps, "run_dir": run_dir,
                "model": model, "masks": {}, "metrics": {}, "result_path": None}
    if res.step < total_steps:
        return out_info

    in_loop = dict(res.metrics)
    pruned = common.finish_pruning(model, pruner)
    final = evaluate(model)  # the finalized model: plain weights with exact zeros
    rows = res.steps_run * config.batch_size
    metrics = {
        **final,
        "val_logloss_before_finalize": in_loop.get("val_logloss"),
        "effective_sparsity": pruned["effective_sparsity"],
        "layer_sparsity": pruned["layer_sparsity"],
        "pruned_layers": pruned["pruned_layers"],
        "steps": total_steps,
        "train_rows": n_train,
        "val_rows": val_end - n_train,
        "world_size": world,
        "malformed_lines_skipped": train_data.skipped + val_data.skipped,
        "train_rows_per_s": rows / res.train_time_s if res.steps_run and res.train_time_s else None,
    }
    out_info.update(metrics=metrics, masks=pruned["masks"])
    if rank == 0:
        out_info["result_path"] = common.store_result(
            experiment, metrics, stored_config, scale_name=sc, dev=dev,
            wall_time_s=time.perf_counter() - t_start, run_dir=run_dir, masks=pruned["masks"])
    return out_info


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab sapp-criteo --data FILE --method M --block B --sparsity S [--scale small|full] [--resume]``.

    Defined in book/sapp_criteo.md.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pruninglab sapp-criteo",
        description="SA++ / ACDC / magnitude / PowerProp block pruning of the Criteo MLP (Yasuda et al. 2024, §4.2).",
    )
    add_common_arguments(parser)
    common.add_config_arguments(parser, CriteoConfig)
    parser.add_argument("--stop-after", type=int, default=None, help="stop after N steps, as a crash would (tests)")
    args = parser.parse_args(argv)
    sc = runtime.scale(args.scale)
    config = common.config_from_args(CriteoConfig, args, sc)
    info = run(config, args.data, out=args.out, resume=args.resume, seed=args.seed, device=args.device,
               scale_name=sc, progress=False if args.no_progress else None, stop_after=args.stop_after)
    rank = dist_info()[0]
    if rank == 0:
        if not info["completed"]:
            print(f"{info['experiment']}: stopped early; continue with --resume --out {info['run_dir']}")
        else:
            m = info["metrics"]
            print(f"{info['experiment']} ({sc}): val log loss {m['val_logloss']:.4f}, AUC {m['val_auc']:.4f}, "
                  f"first-layer sparsity {m['layer_sparsity'].get('dense.0.weight', 0.0):.4f}; "
                  f"result in {info['result_path']}")
    return 0
