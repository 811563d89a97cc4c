"""The block-pruning baselines of SA++: ACDC, block magnitude pruning and block PowerPropagation.

Defined in book/sapp.md.

- :class:`ACDCPruner` (Peste et al., NeurIPS 2021, in its block form as used by Yasuda et al.):
  alternating dense and sparse phases; at the start of each sparse phase keep, in every managed
  layer, the ``N - floor(s N)`` blocks with the largest Frobenius norm, and zero the others after
  every optimizer step. By default pruned weights are zeroed (original ACDC), so a following dense
  phase restarts them from zero; ``keep_values=True`` restores their values instead (the paper's
  Criteo variant "masked, values kept").
- :class:`BlockMagnitudePruner`: the same mechanics with one prune: dense training, keep the
  largest-norm blocks, fine-tune (schedule ``method="magnitude"``).
- :class:`PowerPropPruner`: block PowerPropagation. Each block is reparameterised as
  ``W_T = ||beta_T|| beta_T`` (:class:`BlockPowerProp`, a :mod:`torch.nn.utils.parametrize`
  parametrisation), which by Lemma 2.3 of the paper acts like a group-LASSO penalty under weight
  decay; then blocks are pruned by magnitude and fine-tuned.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .blocks import BlockLayout, BlockPruner, expand_block_masks, fold_parametrization, topk_block_mask
from .schedule import Phase, kept_blocks


def _finite_norms(layout: BlockLayout, w: torch.Tensor, name: str) -> torch.Tensor:
    """Block norms of ``w``; ValueError naming the layer if any is NaN/Inf (once per prune, not per step)."""
    norms = layout.block_norms(w)
    if not bool(torch.isfinite(norms).all()):
        raise ValueError(f"params[{name!r}]: contains NaN or Inf values; cannot rank its blocks by norm")
    return norms


def _check_kinds(phases: Sequence[Phase], allowed: tuple[str, ...], who: str) -> None:
    for i, p in enumerate(phases):
        if isinstance(p, Phase) and p.kind not in allowed:
            raise ValueError(
                f"phases[{i}]: {who} takes only {' / '.join(allowed)} phases, got {p.kind!r} "
                "(sparsification phases are SA++'s; build ACDC's schedule with method='acdc')"
            )


class ACDCPruner(BlockPruner):
    """ACDC with block-norm top-k: a training hook for :func:`pruninglab.train.train`.

    Defined in book/sapp.md.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float = 0.9,
        block_size: int = 16,
        phases: Sequence[Phase] = (),
        min_blocks: int = 100,
        layers: Iterable[str] | None = None,
        keep_values: bool = False,
    ):
        if not phases:
            raise ValueError("phases: expected a schedule, e.g. imagenet_phases(total_steps, 'acdc')")
        _check_kinds(phases, ("dense", "sparse"), type(self).__name__)
        super().__init__(model, sparsity, block_size, phases, min_blocks, layers)
        self.keep_values = bool(keep_values)
        self._bmasks = {n: torch.ones(lay.grid, dtype=torch.bool, device=self.weight(n).device)
                        for n, lay in self.layouts.items()}
        self._emasks: dict[str, torch.Tensor] | None = None  # element masks while sparse
        self._stash: dict[str, torch.Tensor] = {}  # pruned values (keep_values=True)

    @property
    def block_masks(self) -> dict[str, torch.Tensor]:
        return dict(self._bmasks)

    def _in_sparse(self) -> bool:
        return self._phase >= 0 and self.phases[self._phase].kind == "sparse"

    @torch.no_grad()
    def _enter_phase(self, index: int, step: int) -> None:
        kind = self.phases[index].kind
        if kind == "dense":
            if self.keep_values and self._stash:
                for n, saved in self._stash.items():
                    w = self.weight(n)
                    keep = self._emasks[n] if self._emasks is not None else self.layouts[n].expand(self._bmasks[n])
                    w.copy_(torch.where(keep, w, saved))
            self._stash = {}
            for m in self._bmasks.values():
                m.fill_(True)
            self._emasks = None
            return
        # sparse: a new support unless the previous phase was sparse too
        if index == 0 or self.phases[index - 1].kind != "sparse" or self._emasks is None:
            for n, lay in self.layouts.items():
                w = self.weight(n)
                self._bmasks[n] = topk_block_mask(_finite_norms(lay, w, n), kept_blocks(lay.num_blocks, self.sparsity))
            self._emasks = expand_block_masks(self._bmasks, self.layouts)
            if self.keep_values:
                self._stash = {n: self.weight(n).detach().clone() for n in self.layouts}
        self._apply()

    @torch.no_grad()
    def _apply(self) -> None:
        for n, m in self._emasks.items():
            self.weight(n).masked_fill_(~m, 0)  # exactly 0, even where a pruned weight was NaN

    def on_step_end(self, step: int, model: nn.Module | None = None) -> None:
        """Zero the pruned blocks after every optimizer step of a sparse phase."""
        if self._in_sparse() and self._emasks is not None:
            self._apply()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["keep_values"] = self.keep_values
        state["stash"] = {n: t.detach().clone() for n, t in self._stash.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self._check_state(state)
        self._load_phase_state(state)
        self._bmasks = {n: m.to(device=self.weight(n).device, dtype=torch.bool).clone()
                        for n, m in state["block_masks"].items()}
        self._emasks = expand_block_masks(self._bmasks, self.layouts) if self._in_sparse() else None
        self._stash = {n: t.to(self.weight(n).device).clone() for n, t in state.get("stash", {}).items()}

    @torch.no_grad()
    def finalize(self) -> dict[str, torch.Tensor]:
        """Zero the pruned blocks and return the masks (the model keeps plain weights throughout)."""
        masks = self.masks
        for n, m in masks.items():
            self.weight(n).masked_fill_(~m.to(self.weight(n).device), 0)
        self._final_masks = {n: m.clone() for n, m in masks.items()}
        self._finalized = True
        return dict(self._final_masks)


class BlockMagnitudePruner(ACDCPruner):
    """Block magnitude pruning: train dense, keep the largest-Frobenius-norm blocks once, fine-tune.

    Defined in book/sapp.md. ``phases`` must be dense phases followed by sparse ones (e.g.
    ``imagenet_phases(T, "magnitude")``; a single ``Phase("sparse", 0, T)`` prunes a trained model
    at step 0 and fine-tunes it).
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float = 0.9,
        block_size: int = 16,
        phases: Sequence[Phase] = (),
        min_blocks: int = 100,
        layers: Iterable[str] | None = None,
    ):
        kinds = [p.kind for p in phases if isinstance(p, Phase)]
        if "sparse" in kinds and "dense" in kinds[kinds.index("sparse"):]:
            raise ValueError("phases: block magnitude pruning prunes once: dense phases, then sparse phases only")
        super().__init__(model, sparsity, block_size, phases, min_blocks, layers, keep_values=False)


class BlockPowerProp(nn.Module):
    """Block PowerPropagation parametrisation: ``beta -> beta * ||beta_T|| * M`` per block ``T``.

    ``right_inverse`` maps a weight ``W`` to ``beta_T = W_T / sqrt(||W_T||)``,
    so registering it leaves the layer's function unchanged.
    """

    def __init__(self, layout: BlockLayout, device=None):
        super().__init__()
        self.layout = layout
        self.register_buffer("mask", torch.ones(layout.grid, dtype=torch.bool, device=device))

    def _norms(self, beta: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        b = lay.block_size
        gr, gc = lay.grid
        m = lay._padded(beta)
        # vector_norm's backward is 0 (not NaN) at a zero block, unlike sqrt(sum of squares).
        return torch.linalg.vector_norm(m.reshape(gr, b, gc, b), dim=(1, 3))

    def forward(self, beta: torch.Tensor) -> torch.Tensor:
        return beta * self.layout.expand(self._norms(beta) * self.mask)

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        norms = self._norms(w)
        inv = torch.where(norms > 0, norms.rsqrt(), torch.zeros_like(norms))
        return w * self.layout.expand(inv)


class PowerPropPruner(BlockPruner):
    """Block PowerPropagation, then block magnitude pruning by ``||W_T|| = ||beta_T||^2``, then fine-tuning.

    Build the optimizer after the pruner (the stored parameter becomes ``beta``).
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float = 0.9,
        block_size: int = 16,
        phases: Sequence[Phase] = (),
        min_blocks: int = 100,
        layers: Iterable[str] | None = None,
    ):
        if not phases:
            raise ValueError("phases: expected a schedule, e.g. imagenet_phases(total_steps, 'magnitude')")
        _check_kinds(phases, ("dense", "sparse"), type(self).__name__)
        super().__init__(model, sparsity, block_size, phases, min_blocks, layers)
        self._params: dict[str, BlockPowerProp] = {}
        for name, mod in self._modules.items():
            if parametrize.is_parametrized(mod, "weight"):
                raise ValueError(f"model: layer {name!r} is already parametrised (another pruner?)")
            p = BlockPowerProp(self.layouts[name], device=mod.weight.device)
            parametrize.register_parametrization(mod, "weight", p)
            self._params[name] = p

    @property
    def block_masks(self) -> dict[str, torch.Tensor]:
        return {n: p.mask for n, p in self._params.items()}

    @torch.no_grad()
    def _enter_phase(self, index: int, step: int) -> None:
        kind = self.phases[index].kind
        if kind == "dense":
            for p in self._params.values():
                p.mask.fill_(True)
        elif index == 0 or self.phases[index - 1].kind != "sparse":
            for n, p in self._params.items():
                scores = _finite_norms(p.layout, self.weight(n), n)  # ||beta_T||; ||W_T|| = ||beta_T||^2 ranks the same
                p.mask.copy_(topk_block_mask(scores, kept_blocks(p.layout.num_blocks, self.sparsity)))

    def load_state_dict(self, state: Mapping) -> None:
        self._load_mask_buffers(state, {n: p.mask for n, p in self._params.items()})

    @torch.no_grad()
    def finalize(self) -> dict[str, torch.Tensor]:
        """Fold ``||beta_T|| beta_T M`` into plain weights, remove the parametrisations, return the masks."""
        if self._finalized:
            return self.masks
        masks = self.masks
        for name, mod in self._modules.items():
            fold_parametrization(mod, "weight")
            # W * A * M is NaN where a pruned W was NaN (NaN * 0): pruned entries are set to exactly 0.
            mod.weight.detach().masked_fill_(~masks[name].to(mod.weight.device), 0)
        self._final_masks = {n: m.clone() for n, m in masks.items()}
        self._params = {}
        self._finalized = True
        return dict(self._final_masks)
