"""SequentialAttention++ (Yasuda et al., NeurIPS 2024): block logits, softmax attention, phased block pruning.

Defined in book/sapp.md.

Each managed layer gets one trainable logit per ``B x B`` block. The layer computes with

    W_hat = W * A * M,    A_b = N * softmax(L)_b   (mean 1 over the layer's N blocks),

where ``M`` is a non-trainable 0/1 block mask. ``A`` and ``M`` are broadcast over their blocks
(:meth:`BlockLayout.expand`). The logits live **inside the model**, as the parameter ``logits``
of a :mod:`torch.nn.utils.parametrize` parametrisation of the layer's ``weight``, next to the
block-mask buffer ``mask``: ``model.parameters()`` yields them (build the optimizer after the
pruner), DDP all-reduces their gradients, and ``model.state_dict()`` holds them, so a checkpoint
round-trips the whole pruner state except the phase counter (which is in the hook's state).

The schedule (:mod:`.schedule`): in dense phases ``M = 1``; in a sparsification phase the kept
fraction falls along ``1 - s(t)`` with ``s(t) = s (1 - e^{-ct}) / (1 - e^{-c})`` by removing the
lowest-attention blocks among those still kept (nested) after every step; in sparse phases ``M`` is
frozen. A sparse phase that follows a dense one directly takes the top-``k`` blocks by attention
in one shot (the paper's "no sparsification phase" ablation).

Masked blocks keep their stored values (they get no gradient through ``M``; weight decay still
shrinks them), as in the paper's own implementation, which masks rather than zeroes; a later
dense phase brings them back. :meth:`SequentialAttentionPruner.finalize` folds ``W * A * M``
into plain weights, so pruned entries become exact zeros.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._checks import nonnegative_float, positive_float
from .blocks import BlockLayout, BlockPruner, fold_parametrization, topk_block_mask
from .schedule import Phase, kept_blocks, sparsity_ramp


class BlockAttention(nn.Module):
    """The SA++ parametrisation of one weight: ``W -> W * expand(A * M)``.

    ``logits`` (a ``grid``-shaped Parameter) and ``mask`` (a ``grid``-shaped
    bool buffer) are its state; ``clip`` optionally clamps ``A`` to ``[lo, hi]``.
    """

    def __init__(self, layout: BlockLayout, device=None, init_std: float = 1e-5,
                 clip: tuple[float, float] | None = None):
        super().__init__()
        self.layout = layout
        self.clip = clip
        # The logit initialisation is not stated in the paper; Sequential Attention's code uses a
        # tiny normal, so A starts at ~1 (every block weighted equally).
        self.logits = nn.Parameter(torch.randn(layout.grid, device=device) * init_std)
        self.register_buffer("mask", torch.ones(layout.grid, dtype=torch.bool, device=device))

    def attention(self) -> torch.Tensor:
        """``A = N softmax(L)``, ``grid``-shaped, mean 1 over all blocks (masked ones included)."""
        n = self.logits.numel()
        a = torch.softmax(self.logits.reshape(-1), dim=0).reshape(self.logits.shape) * n
        if self.clip is not None:
            a = a.clamp(self.clip[0], self.clip[1])
        return a

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.attention() * self.mask
        return w * self.layout.expand(scale).to(w.dtype)


class SequentialAttentionPruner(BlockPruner):
    """SA++ as a training hook: wrap a model, then train it with :func:`pruninglab.train.train`.

    Defined in book/sapp.md.

    ``phases`` is a schedule from :func:`~pruninglab.pruners.schedule.imagenet_phases` /
    :func:`~pruninglab.pruners.schedule.criteo_phases` (or your own tuple of ``Phase``).
    ``layers=None`` manages every conv/linear layer with at least ``min_blocks`` blocks.
    ``ramp_c`` is the sparsification ramp constant ``c`` (paper: 4). ``clip_attention=True`` clamps
    ``A`` to ``[1 - s, 1 / (1 - s)]`` (our reading of the paper's ambiguous clipping rule).

    Two more tricks of the paper's implementation (Yasuda et al. 2024, App. C.1), off by default:

    - ``logit_clip``: after every optimizer step the logits are clamped to ``[-c, c]``. A float is
      ``c``; ``"density"`` takes ``c = ln(1 / (1 - s)) / 2``, the smallest bound that guarantees
      ``A`` in ``[1 - s, 1 / (1 - s)]`` (with logits in ``[-c, c]``, ``A_b = N e^{L_b} / sum e^{L}``
      lies in ``[e^{-2c}, e^{2c}]``). Unlike ``clip_attention`` it bounds ``A`` without cutting the
      gradient of a block whose attention sits at a bound.
    - ``logit_weight_decay``: the pruner's :meth:`loss_penalty` adds ``wd / 2 * sum L^2`` to the loss
      (the training loop calls it; in a hand-written loop add it to the loss yourself), i.e. weight
      decay ``wd`` on the logits, on top of any decay the optimizer applies to all parameters. The
      paper: weight decay "significantly boosts performance, even when applied to the attention
      logits"; its value is not stated.

    Build the optimizer **after** the pruner: the block logits are new parameters of the model.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float = 0.9,
        block_size: int = 16,
        phases: Sequence[Phase] = (),
        min_blocks: int = 100,
        layers: Iterable[str] | None = None,
        ramp_c: float = 4.0,
        clip_attention: bool = False,
        init_std: float = 1e-5,
        logit_clip: float | str | None = None,
        logit_weight_decay: float = 0.0,
    ):
        if not phases:
            raise ValueError("phases: expected a schedule, e.g. imagenet_phases(total_steps, 'sapp')")
        if isinstance(ramp_c, bool) or not isinstance(ramp_c, (int, float)) or not ramp_c >= 0:
            raise ValueError(f"ramp_c: expected a non-negative number, got {ramp_c!r}")
        if not isinstance(init_std, (int, float)) or isinstance(init_std, bool) or not init_std >= 0:
            raise ValueError(f"init_std: expected a non-negative number, got {init_std!r}")
        super().__init__(model, sparsity, block_size, phases, min_blocks, layers)
        for name, mod in self._modules.items():
            if parametrize.is_parametrized(mod, "weight"):
                raise ValueError(
                    f"model: layer {name!r} is already parametrised (another pruner?); "
                    "finalize() the other pruner first or build a fresh model"
                )
        self.ramp_c = float(ramp_c)
        self.clip_attention = bool(clip_attention)
        self.logit_weight_decay = nonnegative_float(logit_weight_decay, "logit_weight_decay")
        if logit_clip == "density":
            logit_clip = 0.5 * math.log(1.0 / (1.0 - self.sparsity))
        elif logit_clip is not None:
            if isinstance(logit_clip, str):
                raise ValueError(
                    f"logit_clip: expected None, a positive number or 'density', got {logit_clip!r}"
                )
            logit_clip = positive_float(logit_clip, "logit_clip")
        self.logit_clip: float | None = logit_clip
        density = 1.0 - self.sparsity
        clip = (density, 1.0 / density) if self.clip_attention else None
        self._params: dict[str, BlockAttention] = {}
        for name, mod in self._modules.items():
            w = mod.weight
            p = BlockAttention(self.layouts[name], device=w.device, init_std=float(init_std), clip=clip)
            parametrize.register_parametrization(mod, "weight", p)
            self._params[name] = p

    # -- views of the state
    @property
    def block_masks(self) -> dict[str, torch.Tensor]:
        return {n: p.mask for n, p in self._params.items()}

    @torch.no_grad()
    def attention(self) -> dict[str, torch.Tensor]:
        """Current attention weights ``A`` per managed layer (``grid``-shaped, detached)."""
        return {n: p.attention().detach().clone() for n, p in self._params.items()}

    def attention_parameters(self) -> list[nn.Parameter]:
        """The block-logit parameters (e.g. for their own optimizer parameter group)."""
        return [p.logits for p in self._params.values()]

    @torch.no_grad()
    def topk_attention_masks(self) -> dict[str, torch.Tensor]:
        """The block masks SA++ would pick now in one shot: top-``k`` attention per layer (tracked in dense phases)."""
        return {n: topk_block_mask(p.attention(), kept_blocks(p.layout.num_blocks, self.sparsity))
                for n, p in self._params.items()}

    # -- the schedule
    @torch.no_grad()
    def _enter_phase(self, index: int, step: int) -> None:
        kind = self.phases[index].kind
        if kind == "dense":
            for p in self._params.values():
                p.mask.fill_(True)
        elif kind == "sparse":
            # After a sparsification phase the mask already has k blocks and this keeps it; after a
            # dense phase it takes the top-k by attention in one shot.
            for n, p in self._params.items():
                k = kept_blocks(p.layout.num_blocks, self.sparsity)
                att = p.attention()
                if not bool(torch.isfinite(att).all()):  # once per phase, not per step
                    raise ValueError(f"params[{n!r}]: its block attention (logits) became NaN or Inf; "
                                     "training diverged (lower the learning rate)")
                p.mask.copy_(topk_block_mask(att, k, alive=p.mask))
        # "sparsify" starts from the current mask (all ones after a dense phase).

    @torch.no_grad()
    def _during_phase(self, index: int, step: int) -> None:
        phase = self.phases[index]
        if phase.kind != "sparsify":
            return
        s_t = sparsity_ramp(min(1.0, phase.progress(step)), self.sparsity, self.ramp_c)
        for p in self._params.values():
            k = kept_blocks(p.layout.num_blocks, s_t)
            # Nested removal: k never exceeds the blocks still alive, whatever the ramp did before.
            p.mask.copy_(topk_block_mask(p.attention(), k, alive=p.mask))

    # -- logit clipping and logit weight decay (App. C.1 of the paper)
    def loss_penalty(self, model: nn.Module | None = None) -> torch.Tensor | None:
        """``logit_weight_decay / 2 * sum L^2`` over the managed layers' logits (None when off)."""
        if self.logit_weight_decay == 0 or not self._params:
            return None
        total = sum(p.logits.square().sum() for p in self._params.values())
        return 0.5 * self.logit_weight_decay * total

    @torch.no_grad()
    def on_step_end(self, step: int, model: nn.Module | None = None) -> None:
        if self.logit_clip is not None:
            for p in self._params.values():
                p.logits.clamp_(-self.logit_clip, self.logit_clip)

    # -- checkpoints
    def load_state_dict(self, state: Mapping) -> None:
        self._load_mask_buffers(state, {n: p.mask for n, p in self._params.items()})

    # -- deployment
    @torch.no_grad()
    def finalize(self) -> dict[str, torch.Tensor]:
        """Fold ``W * A * M`` into plain weights, remove the parametrisations, return the masks.

        Defined in book/sapp.md. After this the model is an ordinary model whose pruned blocks are
        exact zeros; the pruner can no longer train.
        """
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
