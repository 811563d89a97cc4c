"""``python -m pruninglab sapp-criteo``: block pruning of the Criteo MLP's first dense layer (Yasuda et al. 2024, §4.2).

Defined in book/sapp_criteo.md.

The Criteo task of the one SA++ driver (:mod:`pruninglab.experiments.sapp`). One run = one cell of
the paper's Criteo table: ``--method dense|sapp|acdc|magnitude|powerprop``, ``--block B`` (paper:
5, 10, 20), ``--sparsity S`` (paper: 0.90 ... 0.99). ``--scale full`` is the paper's recipe (Adam,
LR 2e-2 -> 3e-4 exponentially, 25 epochs, batch 32768, only the 390 -> 400 layer pruned, 10
sparse-dense pairs, SA++ attention clipping and logit weight decay, validation log loss);
``--scale small`` is a tiny CPU run on a generated file. Several GPUs: ``torchrun
--nproc_per_node=N -m pruninglab sapp-criteo ...`` (the global batch stays ``--batch-size``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import _checks, models
from ..data.criteo import index_lines
from ..data.criteo_prepared import open_criteo
from ..optim import DenseSparseAdam
from ..train import all_reduce_sum
from . import base, sapp
from .base import option
from .sapp import SappConfig, experiment_name  # noqa: F401  (re-exported for the chapters)

EXPERIMENT = "sapp-criteo"
#: The only layer the paper prunes: the first dense layer, 390 -> 400 (torch weight 400 x 390).
PRUNED_LAYERS = ["dense.0"]
#: Bins of the histogram AUC (exact up to ties within a bin of width 1e-4 in probability).
AUC_BINS = 10_000


@dataclass(frozen=True)
class CriteoConfig(SappConfig):
    """One Criteo run. [P] = the paper's value, [R] = our choice where the paper is silent.

    Defined in book/sapp_criteo.md.
    """

    block: int = option(10, "block size B (paper: 5, 10, 20)")
    sparsity: float = option(0.9, "fraction of blocks pruned in the first dense layer")
    epochs: float = option(25.0, "[P] 25 (ignored when --steps is given)")
    batch_size: int = option(32768, "[P] global batch (all processes, all micro-batches)")
    accumulate: int = option(1, "micro-batches per optimizer step")
    lr: float = option(2e-2, "[P] initial Adam learning rate")
    weight_decay: float = option(0.0, "[R] Adam weight decay (not stated)")
    eval_batch_size: int = option(65536, "rows per evaluation batch")
    eval_every: int | None = option(None, "evaluate every N steps (default: once per epoch)")
    checkpoint_every: int = option(500, "checkpoint every N steps (and at phase changes)")
    workers: int = option(6, "DataLoader processes parsing the TSV")
    lr_final: float = option(3e-4, "[P] final learning rate (exponential decay)")
    num_buckets: int = option(1_000_000, "[R] hash buckets per categorical column")
    embed_dim: int = option(10, "[P] embedding size per feature")
    train_fraction: float = option(0.72, "[R] first rows for training (72% = 33.0M of 45.8M)")
    val_rows: int | None = option(None, "cap on validation rows (default: all the rest)")
    acdc_keep_values: bool = option(True, "[P] ACDC masks (keeps values) on Criteo")
    acdc_pairs: int = option(10, "[P] sparse-dense pairs between the 20% dense start and the 20% sparse end: "
                                 "10 reads the paper's '10 sparse-dense phases' as ten pairs of 3% each "
                                 "(as for ImageNet); 5 is the other reading (ten phases, five pairs of 6%)")
    on_error: str = option("raise", "malformed lines: raise | skip (and count)")

    @classmethod
    def full(cls, **overrides) -> "CriteoConfig":
        """The paper's recipe (values marked [P] in the field help), our choices for the rest."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides) -> "CriteoConfig":
        """Tiny settings for a CPU: a generated file of ~20k rows, 2 epochs of batch 256, 1000 buckets,
        five sparse-dense pairs (ten would leave single-step phases), no attention clipping or logit decay."""
        # One CPU thread: a 0.5M-parameter MLP gains little from two, and on a shared machine
        # idle OpenMP threads spin and burn many times the useful CPU time.
        base_ = dict(epochs=2.0, batch_size=256, lr=5e-3, lr_final=5e-4, num_buckets=1000, eval_batch_size=4096,
                     checkpoint_every=20, workers=0, cpu_threads=1, acdc_pairs=5, clip_attention=False,
                     logit_weight_decay=0.0)
        return cls(**{**base_, **overrides})

    def _check_task(self) -> None:
        _checks.positive_int(self.val_rows, "val_rows", allow_none=True)
        _checks.positive_int(self.acdc_pairs, "acdc_pairs")
        _checks.positive_int(self.embed_dim, "embed_dim")
        _checks.finite_float(self.train_fraction, "train_fraction", low=0.0, high=1.0, low_open=True,
                             high_open=True)
        _checks.finite_float(self.lr_final, "lr_final", low=0.0, high=self.lr, low_open=True)
        _checks.one_of(self.on_error, "on_error", ("raise", "skip"))


def resolve_data(data: str | None) -> Path:
    """The training data: ``--data`` a folder prepared by ``prepare-criteo``, a TSV file, or a folder holding
    ``train.txt``; else ``$PRUNINGLAB_DATA/criteo/train.txt``."""
    if data is None:
        base = os.environ.get("PRUNINGLAB_DATA")
        if not base:
            raise ValueError(
                "data: no Criteo file given; pass --data FILE (train.txt of the Kaggle release, or one written by "
                "`python -m pruninglab make-criteo FILE --rows N`), a folder prepared by `python -m pruninglab "
                "prepare-criteo`, or set $PRUNINGLAB_DATA"
            )
        data = str(Path(base) / "criteo" / "train.txt")
    p = Path(data)
    if _prepared(p):
        return p
    if p.is_dir():
        p = p / "train.txt"
    if not p.is_file():
        raise FileNotFoundError(f"data: no Criteo TSV file or prepared folder at {p}")
    return p


def _prepared(path: Path) -> bool:
    return path.is_dir() and ((path / "meta.json").is_file() or (path / "progress.json").exists())


def _num_rows(path: Path) -> int:
    if _prepared(path):
        return open_criteo(path, 1, mode="eval", rank=0, world_size=1).num_rows
    return index_lines(path).num_lines


def make_evaluate(val, dev: torch.device):
    """Validation log loss, accuracy and AUC over ``val`` (text or prepared batches), summed over all torchrun processes.

    The AUC comes from per-class histograms of the predicted
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


def setup(config: CriteoConfig, path: Path, dev: torch.device, world: int) -> sapp.TaskSetup:
    """Data, model, optimizer and evaluation of one Criteo run."""
    num_lines = _num_rows(path)
    n_train = int(math.floor(config.train_fraction * num_lines))
    val_end = num_lines if config.val_rows is None else min(num_lines, n_train + config.val_rows)
    if n_train < 1 or val_end <= n_train:
        raise ValueError(
            f"train_fraction: {config.train_fraction} of the {num_lines} rows of {path} leaves "
            f"{n_train} training and {val_end - n_train} validation rows; both must be non-empty"
        )
    micro = base.per_rank_batch(config.batch_size, world, config.accumulate)
    # A prepared folder is read as memory-mapped arrays (no text parsing); a TSV file by the text reader.
    kw = dict(num_buckets=config.num_buckets, on_error=config.on_error, num_workers=config.workers,
              pin_memory=dev.type == "cuda")
    train_data = open_criteo(path, micro, start_row=0, end_row=n_train, mode="train", **kw)
    val_data = open_criteo(path, config.eval_batch_size, start_row=n_train, end_row=val_end, mode="eval", **kw)
    # Sparse embedding gradients: only the rows a batch touched, stepped by lazy Adam (and all-reduced as
    # sparse rows under torchrun); no gradient clipping touches the table.
    net = models.build_model("criteo_mlp", num_buckets=config.num_buckets, embed_dim=config.embed_dim,
                             sparse_embedding=True).to(dev)

    def make_optimizer(model: nn.Module, total_steps: int, steps_per_epoch: int):
        groups = sapp.parameter_groups(model, config.weight_decay, config.logit_weight_decay)
        opt = DenseSparseAdam(model, lr=config.lr, weight_decay=config.weight_decay, dense_groups=groups)
        decay = base.lr_lambda_exponential(total_steps, config.lr, config.lr_final)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, decay)

    def loss_fn(logits, labels):
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)

    def data_metrics() -> dict:  # called after the run: the skipped-line counts are known then
        prepared = getattr(train_data, "meta", {}).get("skipped", 0)  # skipped when the folder was prepared
        return {"train_rows": n_train, "val_rows": val_end - n_train,
                "malformed_lines_skipped": prepared + train_data.skipped + val_data.skipped}

    return sapp.TaskSetup(
        net=net, train_data=train_data, evaluate=make_evaluate(val_data, dev), make_optimizer=make_optimizer,
        loss_fn=loss_fn, stored={}, data_metrics=data_metrics, samples_name="rows", log_every_cap=50,
        default_eval_every=lambda spe: spe, pruned_layers=PRUNED_LAYERS)


TASK = sapp.SappTask(
    name=EXPERIMENT, config_cls=CriteoConfig, schedule="criteo", resolve_data=resolve_data, setup=setup,
    headline="val_logloss", summary="val log loss {val_logloss:.4f}, AUC {val_auc:.4f}, first-layer "
                                    "sparsity {layer_sparsity[dense.0.weight]:.4f}",
    description="SA++ / ACDC / magnitude / PowerProp block pruning of the Criteo MLP (Yasuda et al. 2024, §4.2).")
run, EXPERIMENT_SPEC, main = sapp.entry_points(TASK)
