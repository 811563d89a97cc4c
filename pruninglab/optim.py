"""One optimizer for a model with sparse embedding gradients: Adam for dense parameters, lazy Adam for rows.

``torch.optim.Adam`` refuses sparse gradients and ``torch.optim.SparseAdam`` refuses dense ones;
:class:`DenseSparseAdam` holds one of each behind a single ``torch.optim.Optimizer`` (so LR schedulers,
``zero_grad`` and checkpoints see one object). Under ``torch.distributed`` it also averages the sparse
gradients over processes (an all-gather of the touched rows' indices and values), which is what
DistributedDataParallel would have done with the dense table, at the cost of the touched rows only.
"""
from __future__ import annotations

import torch
from torch import nn


def _sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


def allreduce_sparse_mean(grad: torch.Tensor) -> torch.Tensor:
    """The mean over processes of a sparse COO gradient (all-gather of indices and values; any backend).

    Without an initialised process group, or with one process, returns
    ``grad`` coalesced. Ranks may have different numbers of rows: they are padded to the largest.
    """
    import torch.distributed as dist

    grad = grad.coalesce()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grad
    world = dist.get_world_size()
    idx, val = grad.indices(), grad.values()
    n = torch.tensor([idx.shape[1]], device=idx.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    # The one host read of this step: the buffer sizes for the gather.
    width = int(torch.stack(sizes).max())
    pad_idx = torch.zeros(idx.shape[0], width, dtype=idx.dtype, device=idx.device)
    pad_val = torch.zeros((width,) + tuple(val.shape[1:]), dtype=val.dtype, device=val.device)
    pad_idx[:, : idx.shape[1]] = idx
    pad_val[: val.shape[0]] = val
    all_idx = [torch.empty_like(pad_idx) for _ in range(world)]
    all_val = [torch.empty_like(pad_val) for _ in range(world)]
    dist.all_gather(all_idx, pad_idx)
    dist.all_gather(all_val, pad_val)
    keep = [slice(0, int(s)) for s in torch.stack(sizes).flatten().tolist()]
    indices = torch.cat([a[:, k] for a, k in zip(all_idx, keep)], 1)
    values = torch.cat([v[k] for v, k in zip(all_val, keep)], 0) / world
    return torch.sparse_coo_tensor(indices, values, grad.shape, check_invariants=False).coalesce()


class DenseSparseAdam(torch.optim.Optimizer):
    """Adam on the dense parameters of ``model``, SparseAdam (lazy Adam) on its sparse embedding tables.

    The two share ``lr``, ``betas`` and ``eps``; ``weight_decay`` applies to the dense parameters only
    (SparseAdam has none; the paper's Criteo recipe uses none). Lazy Adam updates the moments of the
    rows a batch touched and leaves the others as they are, the usual choice for large tables.
    ``param_groups`` are those of the two inner optimizers (dense first), so a scheduler that sets
    ``lr`` sets it for both. ``allreduce=True`` (default) averages sparse gradients over
    ``torch.distributed`` processes in :meth:`step` (DDP skips tables of a ``CriteoMLP(sparse_embedding=True)``).
    ``dense_groups``: optimizer groups over the model's parameters (sparse tables are dropped from them),
    e.g. a separate weight decay for some; default: every dense parameter in one group.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, allreduce: bool = True, dense_groups: list[dict] | None = None):
        from ._checks import nonnegative_float, positive_float

        positive_float(lr, "lr")
        nonnegative_float(weight_decay, "weight_decay")
        sparse = _sparse_parameters(model)
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
        if not sparse:
            raise ValueError("model: has no sparse embedding (nn.Embedding(sparse=True)); use torch.optim.Adam")
        if dense_groups is not None:  # e.g. their own weight decay; the sparse tables are left out of them
            dense = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in dense_groups]
            dense = [g for g in dense if g["params"]]
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        dense = [p for g in self.dense.param_groups for p in g["params"]]
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps)
        self.allreduce = bool(allreduce)
        super().__init__(dense + sparse, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.param_groups = self.dense.param_groups + self.sparse.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.allreduce:
            for group in self.sparse.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad = allreduce_sparse_mean(p.grad)
        self.dense.step()
        self.sparse.step()
        return loss

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])
        self.param_groups = self.dense.param_groups + self.sparse.param_groups


__all__ = ["DenseSparseAdam", "allreduce_sparse_mean"]
