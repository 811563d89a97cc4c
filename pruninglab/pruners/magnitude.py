"""Global and layer-wise magnitude pruning, random pruning, one-shot and iterative schedules.

Defined in book/intro.md (global magnitude) and book/sharpness.md (the rest).

The global threshold is found without concatenating all scores: a two-pass radix select over
the float32 bit patterns of the scores (non-negative floats order like their bit patterns read
as integers). Pass 1 histograms the top 16 bits layer by layer, pass 2 the low 16 bits of the
entries in the selected bin. Extra memory is bounded by a few copies of the largest layer plus
two histograms, independent of the model size, and the result is exact (ties are broken by
parameter order, then by flat index), so the achieved count is exactly the requested one.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..masks import Masks, as_tensor_dict, check_masks

_HI_BINS = 1 << 15  # top 16 bits of a non-negative float32 are < 0x7F81
_LO_BINS = 1 << 16


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or isinstance(sparsity, complex):
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    return s


def _score_bits(score: torch.Tensor, name: str) -> torch.Tensor:
    """int32 view of non-negative finite float32 scores; monotone in the score."""
    s = score.detach()
    if s.dtype != torch.float32:
        s = s.float()
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"params[{name!r}]: contains NaN or Inf values; cannot rank weights by magnitude")
    if bool((s < 0).any()):
        raise ValueError(f"scores[{name!r}]: scores must be non-negative")
    # +0.0 and -0.0 must compare equal: abs() already gives +0.0, and adding 0.0 maps -0.0 to +0.0.
    return (s + 0.0).contiguous().view(torch.int32)


def lowest_score_masks(
    scores: Mapping[str, torch.Tensor],
    num_prune: int,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Prune exactly ``num_prune`` of the surviving entries with the smallest scores, globally.

    Defined in book/sharpness.md.

    ``scores`` are non-negative tensors keyed by parameter name (``|w|`` for magnitude pruning,
    uniform noise for random pruning). Entries already pruned in ``masks`` stay pruned and are not
    counted. Returns new masks (True = kept) on the scores' devices.
    """
    if not isinstance(scores, Mapping) or len(scores) == 0:
        raise ValueError("scores: expected a non-empty dict of parameter name -> tensor")
    if masks is not None:
        check_masks(scores, masks)
    if isinstance(num_prune, bool) or int(num_prune) != num_prune or num_prune < 0:
        raise ValueError(f"num_prune: expected a non-negative integer, got {num_prune!r}")
    num_prune = int(num_prune)

    alive: dict[str, torch.Tensor] = {}
    n_alive = 0
    for name, sc in scores.items():
        m = masks[name].to(sc.device) if masks is not None and name in masks else None
        alive[name] = m
        n_alive += sc.numel() if m is None else int(m.sum())
    if num_prune > n_alive:
        raise ValueError(f"num_prune: {num_prune} exceeds the {n_alive} entries that are still unpruned")

    def alive_bits(name: str) -> torch.Tensor:
        bits = _score_bits(scores[name], name).reshape(-1)
        m = alive[name]
        return bits if m is None else bits[m.reshape(-1)]

    out: Masks = {}
    if num_prune == 0:
        for name, sc in scores.items():
            m = alive[name]
            out[name] = torch.ones_like(sc, dtype=torch.bool) if m is None else m.clone()
        return out

    # Pass 1: histogram of the top 16 bits, summed over layers (stays on the device).
    dev = next(iter(scores.values())).device
    hist_hi = torch.zeros(_HI_BINS, dtype=torch.int64, device=dev)
    for name in scores:
        b = alive_bits(name)
        if b.numel():
            hist_hi += torch.bincount((b >> 16).to(dev), minlength=_HI_BINS)
    cum_hi = torch.cumsum(hist_hi, 0)
    hi = int(torch.searchsorted(cum_hi, torch.tensor([num_prune], device=dev))[0])
    below_hi = int(cum_hi[hi - 1]) if hi > 0 else 0

    # Pass 2: histogram of the low 16 bits inside the selected top bin.
    hist_lo = torch.zeros(_LO_BINS, dtype=torch.int64, device=dev)
    for name in scores:
        b = alive_bits(name)
        sel = b[(b >> 16) == hi]
        if sel.numel():
            hist_lo += torch.bincount((sel & 0xFFFF).to(dev), minlength=_LO_BINS)
    cum_lo = torch.cumsum(hist_lo, 0)
    need = num_prune - below_hi
    lo = int(torch.searchsorted(cum_lo, torch.tensor([need], device=dev))[0])
    threshold = (hi << 16) | lo
    ties_to_prune = need - (int(cum_lo[lo - 1]) if lo > 0 else 0)

    # Build masks: prune everything strictly below the threshold, then the first ties.
    for name, sc in scores.items():
        bits = _score_bits(sc, name)
        m = alive[name]
        keep = bits > threshold
        tie = bits == threshold
        if m is not None:
            keep &= m
            tie &= m
        if ties_to_prune > 0 and bool(tie.any()):
            flat_tie = tie.reshape(-1)
            order = torch.cumsum(flat_tie.to(torch.int64), 0)
            prune_tie = flat_tie & (order <= ties_to_prune)
            keep_tie = flat_tie & ~prune_tie
            ties_to_prune -= int(prune_tie.sum())
            keep = keep | keep_tie.reshape(tie.shape)
        elif bool(tie.any()):
            keep = keep | tie
        out[name] = keep
    return out


def _resolve_params(
    model: nn.Module | Mapping[str, torch.Tensor], params: list[str] | None
) -> dict[str, torch.Tensor]:
    named = as_tensor_dict(model)
    if params is not None:
        if isinstance(model, nn.Module):
            full = dict(model.named_parameters())
            missing = [p for p in params if p not in full]
            if missing:
                raise ValueError(f"params: {missing} are not parameters of the model")
            named = {p: full[p] for p in params}
        else:
            missing = [p for p in params if p not in named]
            if missing:
                raise ValueError(f"params: {missing} are not in the given parameter dict")
            named = {p: named[p] for p in params}
        if not named:
            raise ValueError("params: is empty; there is nothing to prune")
    return named


def global_magnitude_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    params: list[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Masks that prune the fraction ``sparsity`` of all eligible weights with the smallest ``|w|``, globally.

    Defined in book/intro.md.

    ``model`` is an ``nn.Module`` (conv/linear weights are eligible; biases and norms untouched)
    or a dict name -> tensor. ``params`` restricts the eligible parameters by name. With
    ``masks``, already-pruned entries stay pruned and ``sparsity`` is the **total** target, which
    must be at least the current sparsity. Exactly ``floor(sparsity * N)`` entries are pruned.
    """
    s = _check_sparsity(sparsity)
    named = _resolve_params(model, params)
    total = sum(t.numel() for t in named.values())
    num_prune_total = math.floor(s * total + 1e-9)
    already = 0 if masks is None else sum(int((~masks[n]).sum()) for n in named if n in masks)
    if num_prune_total < already:
        raise ValueError(
            f"sparsity: {s} is below the {already / total:.4f} already pruned by masks; pruning cannot un-prune"
        )
    scores = {n: t.detach().abs() for n, t in named.items()}
    return lowest_score_masks(scores, num_prune_total - already, masks)


def layerwise_magnitude_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    params: list[str] | None = None,
) -> Masks:
    """Prune the fraction ``sparsity`` of each layer separately (a float, or a dict per layer name).

    Defined in book/sharpness.md.
    """
    named = _resolve_params(model, params)
    out: Masks = {}
    for name, t in named.items():
        s = _check_sparsity(sparsity[name] if isinstance(sparsity, Mapping) else sparsity, f"sparsity[{name!r}]")
        out.update(lowest_score_masks({name: t.detach().abs()}, math.floor(s * t.numel() + 1e-9)))
    return out


def random_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    generator: torch.Generator | None = None,
    params: list[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Masks that prune a uniformly random fraction ``sparsity`` of the eligible weights (globally).

    Defined in book/sharpness.md. The baseline every pruner must beat.
    """
    s = _check_sparsity(sparsity)
    named = _resolve_params(model, params)
    total = sum(t.numel() for t in named.values())
    already = 0 if masks is None else sum(int((~masks[n]).sum()) for n in named if n in masks)
    num = math.floor(s * total + 1e-9)
    if num < already:
        raise ValueError(f"sparsity: {s} is below the {already / total:.4f} already pruned by masks")
    scores = {}
    for n, t in named.items():
        # Draw on the CPU generator for reproducibility across devices, then move once per layer.
        scores[n] = torch.rand(t.shape, generator=generator).to(t.device)
    return lowest_score_masks(scores, num - already, masks)


@torch.no_grad()
def one_shot_magnitude_prune(model: nn.Module, sparsity: float, **kwargs) -> Masks:
    """Global one-shot magnitude pruning: compute masks, zero the pruned weights in place, return the masks.

    Defined in book/intro.md.
    """
    from ..masks import apply_masks

    masks = global_magnitude_masks(model, sparsity, **kwargs)
    apply_masks(model, masks)
    return masks


def imp_sparsities(rounds: int, rate: float = 0.2) -> list[float]:
    """Total sparsity after each round of iterative pruning that removes ``rate`` of the survivors.

    Defined in book/sharpness.md. ``imp_sparsities(3) == [0.2, 0.36, 0.488]``.
    """
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds: expected a non-negative integer, got {rounds!r}")
    r = _check_sparsity(rate, "rate")
    return [1.0 - (1.0 - r) ** (i + 1) for i in range(int(rounds))]
