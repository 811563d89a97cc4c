"""``python -m pruninglab bsr-speed``: block-sparse (BSR) against dense matrix products.

Defined in book/block_sparse_speed.md.

One ``nn.Linear`` of ``out_features x in_features`` on a batch, with a random block mask at each
(block size, sparsity) of the grid, timed dense and as :class:`~pruninglab.sparse.bsr.BlockSparseLinear`
alternately, ``reps`` times (:func:`~pruninglab.sparse.bsr.time_dense_vs_bsr`). The result holds every
timing, the break-even sparsity per block size and the machine's load during the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .. import _checks, runtime
from . import base
from .base import ExperimentConfig, option


@dataclass(frozen=True)
class BsrSpeedConfig(ExperimentConfig):
    """The timing grid. Defined in book/block_sparse_speed.md."""

    out_features: int = option(1024, "rows of W (W is out x in)")
    in_features: int = option(1024, "columns of W")
    batch: int = option(256, "rows of the input x (batch x in)")
    blocks: tuple[int, ...] = option((8, 16, 32, 64), "square block sizes (on CUDA only Triton-eligible ones run)")
    sparsities: tuple[float, ...] = option((0.5, 0.7, 0.8, 0.9, 0.95, 0.98), "block sparsities")
    reps: int = option(5, "interleaved repetitions (medians are reported)")
    threads: int | None = option(None, "CPU threads for timing (default: torch's, or 1 when the machine is "
                                       "busier than its cores)")
    seed: int = option(0, "random seed of the masks and weights")

    def __post_init__(self):
        for name in ("out_features", "in_features", "batch", "reps"):
            _checks.positive_int(getattr(self, name), name)
        _checks.positive_int(self.threads, "threads", allow_none=True)
        _checks.nonnegative_int(self.seed, "seed")
        for b in self.blocks:
            _checks.positive_int(b, "blocks")
        for s in self.sparsities:
            _checks.fraction(s, "sparsities")

    @classmethod
    def full(cls, **overrides) -> "BsrSpeedConfig":
        """A 4096 x 4096 weight (the shape of the benchmarks page), blocks up to 128, 7 repetitions."""
        base_ = dict(out_features=4096, in_features=4096, blocks=(8, 16, 32, 64, 128), reps=7)
        return cls(**{**base_, **overrides})


def timing_threads(dev: torch.device) -> tuple[int, int, float]:
    """``(threads, cores, 1-min load)``: torch's thread count, or 1 on a CPU busier than its cores.

    On a shared machine whose cores are busy, a 2-thread kernel waits for the busy core at every
    barrier and its times mean little; then time with one thread (both methods alike) and say so.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0]
    threads = torch.get_num_threads() if (dev.type != "cpu" or load <= cores) else 1
    return threads, cores, load


def eligible_blocks(blocks, dev: torch.device, dtype: torch.dtype = torch.float32) -> list[int]:
    """The block sizes the device's BSR kernels take (CUDA's Triton kernels: powers of two >= 16)."""
    from ..sparse.bsr import triton_bsr_eligible

    return [b for b in blocks if dev.type != "cuda" or triton_bsr_eligible(b, dtype)]


def time_grid(config: BsrSpeedConfig, dev: torch.device, threads: int,
              on_row: Callable | None = None) -> list:
    """Every (block, sparsity) timing of ``config`` on ``dev`` (a list of ``BsrTiming``); ``on_row(timing)`` after each."""
    from ..sparse.bsr import time_dense_vs_bsr

    rows = []
    for b in eligible_blocks(config.blocks, dev):
        for s in config.sparsities:
            r = time_dense_vs_bsr(config.out_features, config.in_features, config.batch, b, s, reps=config.reps,
                                  device=dev, dtype=torch.float32, threads=threads, seed=config.seed)
            rows.append(r)
            if on_row is not None:
                on_row(r)
    return rows


def run(config: BsrSpeedConfig, *, device: str | torch.device | None = None) -> dict:
    """Time the grid; return ``{"rows", "break_even", "threads", "load"}`` (JSON-ready). Defined in book/block_sparse_speed.md."""
    from ..sparse.bsr import break_even_sparsity

    if not isinstance(config, BsrSpeedConfig):
        raise ValueError(f"config: expected a BsrSpeedConfig, got {type(config).__name__}")
    dev = device if isinstance(device, torch.device) else runtime.device(device)
    threads, cores, load_start = (config.threads, None, os.getloadavg()[0]) if config.threads else timing_threads(dev)
    rows = time_grid(config, dev, threads)
    break_even = {}
    for b in eligible_blocks(config.blocks, dev):
        sel = [r for r in rows if r.block_size[0] == b]
        break_even[str(b)] = break_even_sparsity([r.sparsity for r in sel], [r.speedup for r in sel])
    return {"rows": [r.as_dict() for r in rows], "break_even": break_even, "threads": threads,
            "load": [load_start, os.getloadavg()[0]]}


def execute(config: BsrSpeedConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run (no checkpoints: minutes)."""
    return True, run(config, device=ctx.device)


EXPERIMENT_SPEC = base.Experiment(
    name="bsr-speed", config_cls=BsrSpeedConfig, execute=execute, data=None, resumable=False,
    summarize=lambda m: "break-even sparsity per block size " + ", ".join(
        f"{b}: {'n/a' if v is None else round(v, 3)}" for b, v in m["break_even"].items()),
    description="Time block-sparse (BSR) against dense matrix products over block sizes and sparsities.")


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab bsr-speed [--scale small|full]``. Defined in book/sapp_imagenet.md."""
    return base.main(EXPERIMENT_SPEC, argv)
