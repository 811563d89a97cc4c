"""The pruning limit of Zhang et al. (NeurIPS 2024) carried to blocks: ``p*_B = G(R_B(p*_B))``.

Defined in book/sapp.md.

Paper 1 predicts how many weights global magnitude pruning can remove from trained weights ``w*``
as the fixed point ``p* = G(R(p*))``: ``R(p)`` is the distance from ``w*`` to the pruned point
(the ``ceil(p D_w)`` smallest weights set to zero) and ``G(R)`` the normalised squared width of
the loss sublevel set seen from that distance
(:func:`~pruninglab.limits.pruning_limit.normalized_squared_width`). Nothing in that argument
needs the removed coordinates to be single weights. If whole ``B x B`` blocks are removed, the
pruned point lies on a coordinate subspace spanned by whole blocks, and the distance from ``w*``
to the closest such point that keeps a given number of blocks is obtained by keeping the blocks
of largest Frobenius norm (block-Frobenius pruning). Call that distance ``R_B(p)``; the block
limit is the fixed point ``p*_B = G(R_B(p*_B))``, with the same ``G`` (same Hessian, same
``epsilon``).

Two facts follow at once and are tested:

- ``B = 1`` gives ``R_1 = R`` (every block is a single weight);
- ``R_B(p) >= R(p)``: a block support is one particular support, and magnitude pruning gives the
  closest point among all supports of that size. ``G`` falls as ``R`` grows, so ``p*_B <= p*``.

Blocks follow :mod:`pruninglab.pruners.blocks`: a conv kernel is tiled as its
``(H W C_in) x C_out`` matrix, partial blocks at the edges hold the entries they really have.
``p`` always counts **weights** (a fraction of the ``D_w`` prunable weights, as in paper 1).
With ``allocation="global"`` the blocks of all layers are ranked together (the analogue of the
paper's global magnitude pruning): at fraction ``p`` the smallest-norm blocks are removed until at
least ``ceil(p D_w)`` weights are gone. With ``allocation="layerwise"`` every layer removes
``floor(p N_l)`` of its ``N_l`` blocks, the smallest by norm (the uniform per-layer rule of the
SA++ paper and of the library's block pruners).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .._checks import fraction, nonnegative_float, one_of, positive_int
from ..pruners.blocks import block_layout
from .pruning_limit import (
    ActualLimit,
    MagnitudeRadius,
    PredictedLimit,
    Spectrum,
    WidthSpectrum,
    _weight_dict,
    predicted_pruning_limit,
)

__all__ = [
    "block_squared_norms",
    "BlockRadius",
    "predicted_block_limit",
    "actual_block_limit",
]


def block_squared_norms(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared Frobenius norm and number of entries of every ``B x B`` block of ``weight``.

    Defined in book/sapp.md. Both are ``grid``-shaped (see :class:`~pruninglab.pruners.blocks.
    BlockLayout`); the norms are float64, on the weight's device.
    """
    positive_int(block_size, "block_size")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected a tensor with at least 2 dimensions, got {shape}")
    lay = block_layout(weight, block_size)
    m = lay.to_matrix(weight.detach().double())
    gr, gc = lay.grid
    b = lay.block_size
    m = nn.functional.pad(m, (0, gc * b - lay.cols, 0, gr * b - lay.rows))
    sq = m.reshape(gr, b, gc, b).square().sum(dim=(1, 3))
    return sq, lay.block_sizes(weight.device)


class BlockRadius(MagnitudeRadius):
    """``R_B(p)``: the distance from the weights to their best ``B x B`` block-sparse approximation.

    Defined in book/sapp.md.

    ``weights``: a model (its conv/linear weights), a dict name -> tensor (each at least 2-D), or
    one tensor; ``params`` picks some of them. ``allocation`` is ``"global"`` (rank the blocks of
    all layers together) or ``"layerwise"`` (each layer removes ``floor(p N_l)`` blocks); see the
    module docstring. ``R_B(p)^2`` is the sum of the squared Frobenius norms of the removed blocks.

    An instance is a :class:`~pruninglab.limits.pruning_limit.MagnitudeRadius` (same call
    interface), so :func:`~pruninglab.limits.pruning_limit.predicted_pruning_limit` and
    :func:`~pruninglab.limits.pruning_limit.width_curve` accept it in place of ``R``.
    The block norms are sorted once (float64, on the CPU); every ``R_B(p)`` is then a lookup.
    """

    def __init__(
        self,
        weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor,
        block_size: int,
        *,
        allocation: str = "global",
        params: Sequence[str] | None = None,
    ):
        # MagnitudeRadius.__init__ sorts single weights; a block radius sorts blocks instead.
        self.block_size = positive_int(block_size, "block_size")
        self.allocation = one_of(allocation, "allocation", ("global", "layerwise"))
        named = _weight_dict(weights, params)
        for name, t in named.items():
            if t.dim() < 2:
                raise ValueError(
                    f"weights[{name!r}]: has shape {tuple(t.shape)}; blocks need a weight with at "
                    "least 2 dimensions (leave biases and norm layers out with params=...)"
                )
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"weights[{name!r}]: contain NaN or Inf values")
        self._named = named
        self.method = "blocks"
        self.num_weights = sum(t.numel() for t in named.values())
        if self.num_weights == 0:
            raise ValueError("weights: contain no entries; there is nothing to prune")
        self.layouts = {n: block_layout(t, self.block_size) for n, t in named.items()}
        self.num_blocks = sum(lay.num_blocks for lay in self.layouts.values())
        # Per layer: block order (ascending norm, ties by index), cumulative entries and norms.
        self._order: dict[str, torch.Tensor] = {}
        self._cum_sq: dict[str, torch.Tensor] = {}
        self._cum_n: dict[str, torch.Tensor] = {}
        sqs, sizes, owners = [], [], []
        for i, (name, t) in enumerate(named.items()):
            sq, size = block_squared_norms(t, self.block_size)
            sq, size = sq.reshape(-1).cpu(), size.reshape(-1).cpu()
            order = torch.sort(sq, stable=True).indices
            self._order[name] = order
            self._cum_sq[name] = _cumsum0(sq[order])
            self._cum_n[name] = _cumsum0(size[order])
            sqs.append(sq)
            sizes.append(size)
            owners.append(torch.full_like(size, i))
        self.total_sq = float(sum(c[-1] for c in self._cum_sq.values()))
        if self.allocation == "global":
            sq, size = torch.cat(sqs), torch.cat(sizes)
            order = torch.sort(sq, stable=True).indices
            self._global_order = order
            self._global_owner = torch.cat(owners)[order]
            self._global_index = torch.cat([torch.arange(s.numel()) for s in sizes])[order]
            self._global_cum_sq = _cumsum0(sq[order])
            self._global_cum_n = _cumsum0(size[order])

    # -- how many blocks go at fraction p
    def _removed_counts(self, p: float) -> dict[str, int] | int:
        p = fraction(p, "p", high_open=False)
        if self.allocation == "global":
            target = min(self.num_weights, max(0, math.ceil(p * self.num_weights - 1e-9)))
            # the fewest smallest blocks that hold at least `target` weights
            return int(torch.searchsorted(self._global_cum_n, target, side="left"))
        return {n: math.floor(p * lay.num_blocks + 1e-9) for n, lay in self.layouts.items()}

    def squared(self, p: float) -> float:
        """``R_B(p)^2``."""
        j = self._removed_counts(p)
        if isinstance(j, int):
            return float(self._global_cum_sq[j])
        return float(sum(self._cum_sq[n][k] for n, k in j.items()))

    def removed_fraction(self, p: float) -> float:
        """The fraction of the ``D_w`` weights really removed at ``p`` (whole blocks: not exactly ``p``)."""
        j = self._removed_counts(p)
        if isinstance(j, int):
            return int(self._global_cum_n[j]) / self.num_weights
        return sum(int(self._cum_n[n][k]) for n, k in j.items()) / self.num_weights

    def removed_blocks(self, p: float) -> int:
        """How many blocks are removed at ``p``."""
        j = self._removed_counts(p)
        return j if isinstance(j, int) else sum(j.values())

    def masks(self, p: float) -> dict[str, torch.Tensor]:
        """Element masks (True = kept) of the block-sparse point at ``p``, on the weights' devices."""
        j = self._removed_counts(p)
        names = list(self._named)
        removed: dict[str, torch.Tensor] = {}
        if isinstance(j, int):
            for i, name in enumerate(names):
                sel = self._global_owner[:j] == i
                removed[name] = self._global_index[:j][sel]
        else:
            removed = {n: self._order[n][:k] for n, k in j.items()}
        out = {}
        for name in names:
            lay = self.layouts[name]
            keep = torch.ones(lay.num_blocks, dtype=torch.bool)
            keep[removed[name]] = False
            out[name] = lay.expand(keep.reshape(lay.grid).to(self._named[name].device))
        return out


def _cumsum0(x: torch.Tensor) -> torch.Tensor:
    """``[0, x0, x0 + x1, ...]`` in float64 (sums of squares) or int64 (entry counts)."""
    dtype = torch.float64 if x.is_floating_point() else torch.int64
    return torch.cat([torch.zeros(1, dtype=dtype), torch.cumsum(x.to(dtype), 0)])


def predicted_block_limit(
    weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor | BlockRadius,
    spectrum: Spectrum | WidthSpectrum,
    epsilon: float,
    block_size: int | None = None,
    *,
    allocation: str = "global",
    params: Sequence[str] | None = None,
    hessian_dim: int | None = None,
    tail: str | None = None,
    zero_mass: float = 0.0,
    offset: float = 0.0,
    tol: float = 1e-7,
) -> PredictedLimit:
    """The predicted block limit: the fraction ``p*_B`` of weights removed that solves ``p = G(R_B(p))``.

    Defined in book/sapp.md.

    The same fixed point as :func:`~pruninglab.limits.pruning_limit.predicted_pruning_limit`
    (which solves it here), with the block radius :class:`BlockRadius` in place of the magnitude
    radius. ``weights`` is a model, a dict or a tensor (then ``block_size`` is required) or a
    prepared :class:`BlockRadius`. ``spectrum``, ``epsilon``, ``hessian_dim``, ``tail`` and
    ``zero_mass`` are those of the unstructured prediction. The returned ``removed`` is the
    target fraction ``p``; ``BlockRadius.removed_fraction`` gives the fraction whole blocks reach.
    """
    if isinstance(weights, BlockRadius):
        if block_size is not None and block_size != weights.block_size:
            raise ValueError(
                f"block_size: {block_size!r} differs from the given BlockRadius's {weights.block_size}"
            )
        radius = weights
    else:
        if block_size is None:
            raise ValueError("block_size: required unless weights is a BlockRadius")
        radius = BlockRadius(weights, block_size, allocation=allocation, params=params)
    return predicted_pruning_limit(radius, spectrum, epsilon, hessian_dim=hessian_dim, tail=tail,
                                   zero_mass=zero_mass, offset=offset, tol=tol)


@torch.no_grad()
def actual_block_limit(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    block_size: int,
    *,
    allocation: str = "global",
    params: Sequence[str] | None = None,
    rule: str = ">",
    tolerance: float = 0.0,
    higher_is_better: bool = True,
    grid: int = 1000,
) -> ActualLimit:
    """Largest ``p`` on the grid ``i / grid`` at which one-shot block-Frobenius pruning keeps the score.

    Defined in book/sapp.md.

    Paper 1's measurement carried to blocks: the trained weights are pruned, **without
    fine-tuning**, to the block-sparse point of :class:`BlockRadius` at every grid fraction, and
    ``evaluate(model) -> float`` scores it. A point is good when the score is ``> dense -
    tolerance`` (``rule=">"``, the default: with tolerance 0 the rule of the paper's code,
    strictly above dense) or ``>= dense - tolerance`` (``rule=">="``). The whole grid is scanned
    (fractions that remove the same blocks are scored once) and the largest good fraction is
    returned, so no good point right of a bad one is missed. ``bracket`` is ``(p, first bad grid
    point after it)``; ``evaluations`` holds ``(p, score)`` for ``p = 0`` and every grid point, so
    the limit under another rule or tolerance can be read off without scoring again. The model's
    weights are restored before returning.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise ValueError("evaluate: expected a callable model -> score")
    one_of(rule, "rule", (">", ">="))
    tolerance = nonnegative_float(tolerance, "tolerance")
    grid = positive_int(grid, "grid")
    if grid < 2:
        raise ValueError(f"grid: expected an integer >= 2, got {grid!r}")
    if params is None:
        from ..masks import prunable_parameters

        live = dict(prunable_parameters(model))
    else:
        full = dict(model.named_parameters())
        missing = [n for n in params if n not in full]
        if missing:
            raise ValueError(f"params: {missing} are not parameters of the model")
        live = {n: full[n] for n in params}
    originals = {n: t.detach().clone() for n, t in live.items()}
    radius = BlockRadius(originals, block_size, allocation=allocation)
    sign = 1.0 if higher_is_better else -1.0

    def score() -> float:
        s = float(evaluate(model))
        if math.isnan(s):
            raise ValueError("evaluate: returned NaN")
        return s

    evaluations: list[tuple[float, float]] = []
    cache: dict[int, float] = {}
    try:
        dense = score()
        evaluations.append((0.0, dense))

        def good(s: float) -> bool:
            margin = sign * (s - dense) + tolerance
            return margin > 0 if rule == ">" else margin >= 0

        best, best_score, after = 0.0, dense, None
        for i in range(1, grid):
            p = i / grid
            key = radius.removed_blocks(p)
            if key not in cache:
                masks = radius.masks(p)
                for n, t in live.items():
                    t.copy_(originals[n] * masks[n])
                cache[key] = score()
            evaluations.append((p, cache[key]))
            if good(cache[key]):
                best, best_score, after = p, cache[key], None
            elif after is None:
                after = p
        hi = after if after is not None else best
        return ActualLimit(best, dense, best_score, (best, hi), rule, tolerance, evaluations)
    finally:
        for n, t in live.items():
            t.copy_(originals[n])
