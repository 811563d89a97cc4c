"""torchrun helpers: process rank and world size, the process group, device per process, sums over
processes, and a data loader whose order depends only on the seed and the epoch.

Defined in book/intro.md; :func:`make_loader` in book/intro.md.

A run launched by ``torchrun --nproc_per_node=N`` has ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its
environment; everything here reduces to the single-process case when they are absent.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from ._checks import positive_int
from .runtime import device as default_device

__all__ = [
    "dist_info",
    "init_distributed",
    "distributed_device",
    "is_distributed",
    "all_reduce_sum",
    "all_reduce_max",
    "barrier",
    "make_loader",
]


def dist_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (``(0, 0, 1)`` otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def init_distributed(dev: torch.device) -> tuple[int, int]:
    """Initialise the process group if launched by torchrun; return ``(rank, world_size)``.

    NCCL on GPUs, gloo on CPUs. Calling it again once the group exists does nothing.
    """
    rank, local, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
    return rank, world


def distributed_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device for this process: under torchrun on GPUs, ``cuda:LOCAL_RANK``."""
    dev = torch.device(prefer) if isinstance(prefer, torch.device) else default_device(prefer)
    _, local, world = dist_info()
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local)
    return dev


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all torchrun processes (returned as is on a single process).

    Distributed evaluation sums per-rank totals (loss sums,
    counts, correct predictions) with this and divides afterwards, so the result equals a
    single-process evaluation over the same rows.
    """
    import torch.distributed as dist

    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``values`` over all torchrun processes (as is on a single process)."""
    import torch.distributed as dist

    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def barrier() -> None:
    """Wait until every torchrun process reaches this point (nothing on a single process)."""
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)`` and is split across torchrun ranks.

    Defined in book/intro.md. This is what makes a resumed run see exactly the batches an
    uninterrupted run would have seen, on one process or many.
    """
    batch_size = positive_int(batch_size, "batch_size")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset: is empty; there is nothing to train on")
    rank, _, world = dist_info()
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    per_rank = len(sampler)
    if drop_last and per_rank < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is larger than the {per_rank} samples each of the {world} process(es) gets"
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
        persistent_workers=False,
        # Its own generator: creating an iterator then draws no numbers from the global RNG,
        # so starting an epoch mid-way (on resume) leaves dropout etc. on the same stream.
        generator=torch.Generator().manual_seed(int(seed)),
    )
