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


def _magnitude_bits(t: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of ``|t|`` as float32, flat, without an ``abs()`` copy: clear the sign bit.

    This also maps -0.0 to +0.0. NaN/Inf map to patterns >= 0x7F800000 (checked on the histogram).
    """
    s = t.detach()
    if s.dtype != torch.float32:
        s = s.float()
    return s.contiguous().view(torch.int32).reshape(-1) & 0x7FFFFFFF


def _select_lowest(
    names: list[str],
    shapes: Mapping[str, torch.Size],
    bits_of,
    num_prune: int,
    alive: Mapping[str, torch.Tensor | None],
    dev: torch.device,
    nonfinite_name=None,
) -> Masks:
    """The exact two-pass radix select behind :func:`lowest_score_masks` and :func:`global_magnitude_masks`.

    ``bits_of(name)`` returns the flat int32 bit patterns of a layer's non-negative float32 scores
    as a new tensor (it is modified in place); it is called once per pass, so only one layer's temporaries are alive at a time. ``alive[name]``
    is a flat bool mask of the entries still eligible (None: all). ``nonfinite_name``, if given, is
    called with the histogram when it has NaN/Inf entries (patterns >= 0x7F800000) and must raise.
    """
    def eligible(name: str, b: torch.Tensor) -> torch.Tensor:
        m = alive[name]
        return b if m is None else b[m]

    # Pass 1: histogram of the top 16 bits, summed over layers (stays on the device).
    hist_hi = torch.zeros(_HI_BINS, dtype=torch.int64, device=dev)
    for name in names:
        b = eligible(name, bits_of(name))
        if b.numel():
            # bits_of returns a fresh tensor, so shifting in place saves one layer-sized temporary
            hist_hi += torch.bincount(b.bitwise_right_shift_(16).to(dev), minlength=_HI_BINS)
    if nonfinite_name is not None and bool(hist_hi[0x7F80:].any()):
        nonfinite_name()
    cum_hi = torch.cumsum(hist_hi, 0)
    hi = int(torch.searchsorted(cum_hi, torch.tensor([num_prune], device=dev))[0])
    below_hi = int(cum_hi[hi - 1]) if hi > 0 else 0

    # Pass 2: histogram of the low 16 bits inside the selected top bin.
    hist_lo = torch.zeros(_LO_BINS, dtype=torch.int64, device=dev)
    for name in names:
        b = eligible(name, bits_of(name))
        sel = b[(b >= (hi << 16)) & (b < ((hi + 1) << 16))]  # bool temporaries, not another int32 copy
        if sel.numel():
            hist_lo += torch.bincount((sel & 0xFFFF).to(dev), minlength=_LO_BINS)
    cum_lo = torch.cumsum(hist_lo, 0)
    need = num_prune - below_hi
    lo = int(torch.searchsorted(cum_lo, torch.tensor([need], device=dev))[0])
    threshold = (hi << 16) | lo
    ties_to_prune = need - (int(cum_lo[lo - 1]) if lo > 0 else 0)

    # Build masks: prune everything strictly below the threshold, then the first ties.
    out: Masks = {}
    for name in names:
        bits = bits_of(name)
        m = alive[name]
        keep = bits > threshold
        if m is not None:
            keep &= m
        if ties_to_prune > 0:
            tie = bits == threshold
            if m is not None:
                tie &= m
            n_tie = int(tie.sum())
            if n_tie:
                if n_tie <= ties_to_prune:
                    ties_to_prune -= n_tie  # all ties of this layer are pruned
                else:
                    order = torch.cumsum(tie.to(torch.int64), 0)
                    keep |= tie & (order > ties_to_prune)  # the first ties_to_prune are pruned
                    ties_to_prune = 0
        else:
            # No more ties to prune: every remaining tie is kept.
            tie = bits == threshold
            keep |= tie if m is None else (tie & m)
        out[name] = keep.reshape(shapes[name])
    return out


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
    alive, n_alive = _alive_masks(scores, masks)
    if num_prune > n_alive:
        raise ValueError(f"num_prune: {num_prune} exceeds the {n_alive} entries that are still unpruned")
    if num_prune == 0:
        return _unchanged_masks(scores, alive)
    return _select_lowest(
        list(scores), {n: t.shape for n, t in scores.items()},
        lambda name: _score_bits(scores[name], name).reshape(-1),
        num_prune, alive, next(iter(scores.values())).device,
    )


def _alive_masks(
    tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
) -> tuple[dict[str, torch.Tensor | None], int]:
    alive: dict[str, torch.Tensor | None] = {}
    n_alive = 0
    for name, t in tensors.items():
        m = masks[name].to(t.device).reshape(-1) if masks is not None and name in masks else None
        alive[name] = m
        n_alive += t.numel() if m is None else int(m.sum())
    return alive, n_alive


def _unchanged_masks(tensors: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor | None]) -> Masks:
    out: Masks = {}
    for name, t in tensors.items():
        m = alive[name]
        out[name] = torch.ones_like(t, dtype=torch.bool) if m is None else m.reshape(t.shape).clone()
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
    num_prune = num_prune_total - already
    if masks is not None:
        check_masks(named, masks)
    alive, _ = _alive_masks(named, masks)
    if num_prune == 0:
        return _unchanged_masks(named, alive)

    def nonfinite() -> None:
        for name, t in named.items():
            if not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"params[{name!r}]: contains NaN or Inf values; cannot rank weights by magnitude")

    # |w| is read off the bit patterns layer by layer (sign bit cleared): no copy of all magnitudes.
    return _select_lowest(
        list(named), {n: t.shape for n, t in named.items()}, lambda name: _magnitude_bits(named[name]),
        num_prune, alive, next(iter(named.values())).device, nonfinite_name=nonfinite,
    )


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
