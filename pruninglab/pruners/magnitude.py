"""Global and layer-wise magnitude pruning, random pruning, one-shot and iterative schedules.

Defined in book/intro.md (global magnitude) and book/sharpness.md (the rest).

The global threshold is found without concatenating all scores: a radix select over the bit
patterns of the scores (non-negative floats order like their bit patterns read as integers), 16
bits per pass: two passes over float32 keys, four over float64 keys (used as soon as one tensor is
float64, so float64 weights are ranked at float64 precision; float16/bfloat16 widen to float32
exactly). Each pass histograms the next 16 bits of the entries whose higher bits match the bins
selected so far. Extra memory is bounded by a few copies of the largest layer plus one histogram,
independent of the model size, and the result is exact (ties are broken by parameter order, then by
flat index), so the achieved count is exactly the requested one.

Inputs are validated the same way by every function here: complex, integer or bool tensors and
NaN/Inf values are errors naming the parameter. A tensor shared by several layers (tied weights) is
ranked and counted once.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ..masks import Masks, _param_lookup, as_tensor_dict, check_finite, check_masks, check_weight_dtype, warn_collapsed

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
#: Top 16 bits at or above which a key is NaN/Inf, per key width.
_NONFINITE_TOP = {32: 0x7F80, 64: 0x7FF0}


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or isinstance(sparsity, complex):
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"{name}: expected a number in [0, 1), got {sparsity!r}")
    return s


def _key_width(tensors: Mapping[str, torch.Tensor]) -> int:
    """64 if any tensor is float64 (rank at float64 precision), else 32."""
    return 64 if any(t.dtype == torch.float64 for t in tensors.values()) else 32


def _key_dtypes(width: int) -> tuple[torch.dtype, torch.dtype]:
    return (torch.float64, torch.int64) if width == 64 else (torch.float32, torch.int32)


def _score_bits(score: torch.Tensor, name: str, width: int, what: str = "scores") -> torch.Tensor:
    """Integer view (int32 or int64 by ``width``) of non-negative finite scores; monotone in the score."""
    fdt, idt = _key_dtypes(width)
    s = score.detach()
    if s.dtype != fdt:
        s = s.to(fdt)
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{what}[{name!r}]: contains NaN or Inf values; cannot rank weights by magnitude")
    if bool((s < 0).any()):
        raise ValueError(f"{what}[{name!r}]: scores must be non-negative")
    # +0.0 and -0.0 must compare equal: abs() already gives +0.0, and adding 0.0 maps -0.0 to +0.0.
    return (s + 0.0).contiguous().view(idt)


def _magnitude_bits(t: torch.Tensor, width: int) -> torch.Tensor:
    """Integer bit patterns of ``|t|`` at ``width`` bits, flat, without an ``abs()`` copy: clear the sign bit.

    This also maps -0.0 to +0.0. NaN/Inf map to patterns at or above :data:`_NONFINITE_TOP` (checked
    on the first histogram).
    """
    fdt, idt = _key_dtypes(width)
    s = t.detach()
    if s.dtype != fdt:
        s = s.to(fdt)
    sign_off = 0x7FFFFFFFFFFFFFFF if width == 64 else 0x7FFFFFFF
    return s.contiguous().view(idt).reshape(-1) & sign_off


def _check_real(named: Mapping[str, torch.Tensor], what: str = "params") -> None:
    for name, t in named.items():
        check_weight_dtype(t, f"{what}[{name!r}]")


def _select_lowest(
    names: list[str],
    shapes: Mapping[str, torch.Size],
    bits_of,
    num_prune: int,
    alive: Mapping[str, torch.Tensor | None],
    dev: torch.device,
    width: int = 32,
    nonfinite_name=None,
) -> Masks:
    """The exact radix select behind :func:`lowest_score_masks` and :func:`global_magnitude_masks`.

    ``bits_of(name)`` returns the flat integer bit patterns (``width`` bits) of a layer's
    non-negative scores as a new tensor; it is called once per pass, so only one layer's
    temporaries are alive at a time. ``alive[name]`` is a flat bool mask of the entries still
    eligible (None: all). ``nonfinite_name``, if given, is called when the first histogram has
    NaN/Inf entries and must raise.
    """
    def eligible(name: str, b: torch.Tensor) -> torch.Tensor:
        m = alive[name]
        return b if m is None else b[m]

    need = num_prune
    prefix = 0
    for digit in range(width // _DIGIT_BITS):
        shift = width - _DIGIT_BITS * (digit + 1)
        hist = torch.zeros(_BINS, dtype=torch.int64, device=dev)
        for name in names:
            b = eligible(name, bits_of(name))
            if digit:
                b = b[(b >> (shift + _DIGIT_BITS)) == prefix]
            if b.numel():
                hist += torch.bincount(((b >> shift) & (_BINS - 1)).to(dev), minlength=_BINS)
        if digit == 0 and nonfinite_name is not None and bool(hist[_NONFINITE_TOP[width]:].any()):
            nonfinite_name()
        cum = torch.cumsum(hist, 0)
        d = int(torch.searchsorted(cum, torch.tensor([need], device=dev))[0])
        need -= int(cum[d - 1]) if d > 0 else 0
        prefix = (prefix << _DIGIT_BITS) | d
    threshold = prefix
    ties_to_prune = need

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

    ``scores`` are non-negative real tensors keyed by parameter name (``|w|`` for magnitude pruning,
    uniform noise for random pruning). Entries already pruned in ``masks`` stay pruned and are not
    counted. Returns new masks (True = kept) on the scores' devices.
    """
    return _lowest(scores, num_prune, masks, "scores")


def _lowest(scores, num_prune, masks, what: str) -> Masks:
    if not isinstance(scores, Mapping) or len(scores) == 0:
        raise ValueError(f"{what}: expected a non-empty dict of parameter name -> tensor")
    _check_real(scores, what)
    if masks is not None:
        check_masks(scores, masks)
    if isinstance(num_prune, bool) or not isinstance(num_prune, (int, float)) or int(num_prune) != num_prune \
            or num_prune < 0:
        raise ValueError(f"num_prune: expected a non-negative integer, got {num_prune!r}")
    num_prune = int(num_prune)
    width = _key_width(scores)
    bits = {n: _score_bits(t, n, width, what).reshape(-1) for n, t in scores.items()}  # checked once
    alive, n_alive = _alive_masks(scores, masks)
    if num_prune > n_alive:
        raise ValueError(f"num_prune: {num_prune} exceeds the {n_alive} entries that are still unpruned")
    if num_prune == 0:
        return _unchanged_masks(scores, alive)
    return _select_lowest(
        list(scores), {n: t.shape for n, t in scores.items()}, lambda name: bits[name].clone(),
        num_prune, alive, next(iter(scores.values())).device, width,
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
    model: nn.Module | Mapping[str, torch.Tensor], params: str | list[str] | None
) -> dict[str, torch.Tensor]:
    """The eligible tensors by name: tied tensors once; a string is one name (never split into characters)."""
    named = as_tensor_dict(model)
    if params is not None:
        if isinstance(params, str):
            params = [params]
        params = list(params)
        bad = [p for p in params if not isinstance(p, str)]
        if bad:
            raise ValueError(f"params: expected parameter names (strings), got {bad!r}")
        full = _param_lookup(model) if isinstance(model, nn.Module) else named
        missing = [p for p in params if p not in full]
        if missing:
            where = "parameters of the model" if isinstance(model, nn.Module) else "in the given parameter dict"
            raise ValueError(f"params: {missing} are not {where}")
        if not params:
            raise ValueError("params: is empty; there is nothing to prune")
        named = {}
        for p in params:
            if not any(full[p] is q for q in named.values()):  # two names of one tied tensor: once
                named[p] = full[p]
    _check_real(named)
    return named


def _protected_masks(
    named: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor | None], min_kept: int, width: int
) -> dict[str, torch.Tensor | None]:
    """Flat bool masks of the ``min_kept`` largest-magnitude alive entries of each layer (None: none)."""
    fdt, _ = _key_dtypes(width)
    out: dict[str, torch.Tensor | None] = {}
    for name, t in named.items():
        mag = t.detach().reshape(-1).to(fdt).abs()
        m = alive[name]
        if m is not None:
            mag = torch.where(m, mag, torch.full_like(mag, -1.0))
        k = min(min_kept, mag.numel() if m is None else int(m.sum()))
        if k == 0:
            out[name] = None
            continue
        prot = torch.zeros(mag.numel(), dtype=torch.bool, device=mag.device)
        prot[torch.topk(mag, k, sorted=False).indices] = True
        out[name] = prot
    return out


def global_magnitude_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    params: str | list[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    min_kept_per_layer: int = 0,
    warn_collapse: bool = True,
) -> Masks:
    """Masks that prune the fraction ``sparsity`` of all eligible weights with the smallest ``|w|``, globally.

    Defined in book/sharpness.md.

    ``model`` is an ``nn.Module`` (conv/linear weights are eligible; biases and norms untouched)
    or a dict name -> tensor. ``params`` restricts the eligible parameters by name (one name may be
    given as a string). With ``masks``, already-pruned entries stay pruned and ``sparsity`` is the
    **total** target, which must be at least the current sparsity. Exactly ``floor(sparsity * N)``
    entries are pruned. A tensor shared by several layers (tied weights) counts once.

    A global threshold can empty a layer whose weights are small (ResNet-50's ``fc.weight`` at
    initialisation, at 90 %): such a *layer collapse* is reported with a
    :class:`~pruninglab.masks.SparsityWarning` naming the layer (``warn_collapse=False`` silences
    it); ``min_kept_per_layer=k`` keeps the ``k`` largest-magnitude weights of every layer out of
    the ranking, so no layer can collapse below ``k``.
    """
    s = _check_sparsity(sparsity)
    if isinstance(min_kept_per_layer, bool) or not isinstance(min_kept_per_layer, int) or min_kept_per_layer < 0:
        raise ValueError(f"min_kept_per_layer: expected a non-negative integer, got {min_kept_per_layer!r}")
    named = _resolve_params(model, params)
    total = sum(t.numel() for t in named.values())
    num_prune_total = math.floor(s * total + 1e-9)
    if masks is not None:
        check_masks(named, masks)
    already = 0 if masks is None else sum(int((~masks[n]).sum()) for n in named if n in masks)
    if num_prune_total < already:
        raise ValueError(
            f"sparsity: {s} is below the {already / total:.4f} already pruned by masks; pruning cannot un-prune"
        )
    num_prune = num_prune_total - already
    alive, n_alive = _alive_masks(named, masks)
    width = _key_width(named)
    if num_prune == 0:
        check_finite(named)
        return _unchanged_masks(named, alive)
    protected: dict[str, torch.Tensor | None] = {n: None for n in named}
    if min_kept_per_layer:
        check_finite(named)
        protected = _protected_masks(named, alive, min_kept_per_layer, width)
        n_prot = sum(int(p.sum()) for p in protected.values() if p is not None)
        if num_prune > n_alive - n_prot:
            raise ValueError(
                f"sparsity: {s} prunes {num_prune} more weights, but min_kept_per_layer={min_kept_per_layer} "
                f"leaves only {n_alive - n_prot} prunable; lower one of them"
            )
        alive = {n: (a if protected[n] is None else
                     (~protected[n] if a is None else a & ~protected[n])) for n, a in alive.items()}

    def nonfinite() -> None:
        check_finite(named)

    # |w| is read off the bit patterns layer by layer (sign bit cleared): no copy of all magnitudes.
    out = _select_lowest(
        list(named), {n: t.shape for n, t in named.items()}, lambda name: _magnitude_bits(named[name], width),
        num_prune, alive, next(iter(named.values())).device, width, nonfinite_name=nonfinite,
    )
    for n, p in protected.items():
        if p is not None:
            out[n] = out[n] | p.reshape(out[n].shape)
    if warn_collapse:
        warn_collapsed(out, stacklevel=3, min_kept=min_kept_per_layer)
    return out


def layerwise_magnitude_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    params: str | list[str] | None = None,
) -> Masks:
    """Prune the fraction ``sparsity`` of each layer separately (a float, or a dict per layer name).

    Defined in book/sharpness.md.
    """
    named = _resolve_params(model, params)
    out: Masks = {}
    for name, t in named.items():
        s = _check_sparsity(sparsity[name] if isinstance(sparsity, Mapping) else sparsity, f"sparsity[{name!r}]")
        out.update(_lowest({name: t.detach().abs()}, math.floor(s * t.numel() + 1e-9), None, "params"))
    return out


def random_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    generator: torch.Generator | None = None,
    params: str | list[str] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Masks:
    """Masks that prune a uniformly random fraction ``sparsity`` of the eligible weights (globally).

    Defined in book/sharpness.md. The baseline every pruner must beat. The weights are validated as
    for magnitude pruning (real, finite), although their values do not matter here.
    """
    s = _check_sparsity(sparsity)
    named = _resolve_params(model, params)
    check_finite(named)
    if masks is not None:
        check_masks(named, masks)
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

    Defined in book/intro.md. ``kwargs`` go to :func:`global_magnitude_masks` (``params``,
    ``masks``, ``min_kept_per_layer``, ``warn_collapse``).
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
