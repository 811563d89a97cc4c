"""The pruning limit of Zhang et al. (NeurIPS 2024): predicted from magnitudes and sharpness, and measured.

Defined in book/pruning_limit.md (the prediction) and book/limit_experiments.md (the measurement).

Notation (the book's): ``w*`` are the trained weights; ``p`` is the **fraction of prunable weights
removed** (``1 - p`` is the fraction kept); ``R(p)`` is the l2 norm of the weights that global
one-shot magnitude pruning removes at ``p``; ``lambda_i`` (``i = 1..D``) are the eigenvalues of the
loss Hessian at ``w*``; ``epsilon`` is the loss tolerance. The normalised squared width of the loss
sublevel set, approximated by an ellipsoid with semi-axes ``sqrt(2 epsilon / |lambda_i|)`` and seen
from distance ``R``, is

    G(R) = (1/D) * sum_i  2 epsilon / (2 epsilon + |lambda_i| R^2),

and the predicted limit is the fixed point ``p* = G(R(p*))``. Two different "D"s enter: ``G``
averages over the **Hessian dimension** ``D`` (every parameter the Hessian was taken over, biases
included), while ``p`` counts the **prunable weights** ``D_w`` only (conv/linear weights).

Everything here is written from the paper's mathematics (see the book); no code of the paper's
GPL-2.0 repository is used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..masks import as_tensor_dict
from ..pruners.magnitude import lowest_score_masks

#: Above this many prunable weights the radius R(p) is computed by exact selection with bounded
#: memory (two histogram passes per evaluation) instead of one global sort.
SORT_LIMIT = 50_000_000

Spectrum = Any  # a 1-D tensor of eigenvalues, or a (nodes, weights) pair from stochastic Lanczos quadrature


# --------------------------------------------------------------------------- R(p): magnitude pruning radius


class MagnitudeRadius:
    """``R(p)``: the l2 norm of the weights removed by global one-shot magnitude pruning at fraction ``p``.

    Defined in book/pruning_limit.md.

    ``R(p)^2`` is the sum of the ``ceil(p * D_w)`` smallest squared magnitudes among the prunable
    weights. Magnitude pruning keeps the largest entries, so ``w^k`` (the pruned net) is the closest
    ``k``-sparse point to ``w*`` and ``R(p)`` is the smallest possible distance at that sparsity.

    ``method="sort"`` sorts all squared magnitudes once (one flat float32 copy plus a float64
    cumulative sum: about 16 bytes per weight on the weights' device) and then answers any ``p`` in
    O(1). ``method="select"`` keeps memory bounded (the radix select of
    :func:`pruninglab.pruners.magnitude.lowest_score_masks`, two passes over the weights per ``p``);
    ``"auto"`` sorts up to :data:`SORT_LIMIT` weights.
    """

    def __init__(
        self,
        weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor,
        method: str = "auto",
        params: Sequence[str] | None = None,
    ):
        named = _weight_dict(weights, params)
        self.num_weights = sum(t.numel() for t in named.values())
        if self.num_weights == 0:
            raise ValueError("weights: contain no entries; there is nothing to prune")
        for name, t in named.items():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"weights[{name!r}]: contain NaN or Inf values")
        if method not in ("auto", "sort", "select"):
            raise ValueError(f"method: expected 'auto', 'sort' or 'select', got {method!r}")
        if method == "auto":
            method = "sort" if self.num_weights <= SORT_LIMIT else "select"
        self.method = method
        self._named = named
        self.total_sq = float(sum(t.double().square().sum() for t in named.values()))
        if method == "sort":
            flat = torch.cat([t.reshape(-1).float().square() for t in named.values()])
            sq, _ = torch.sort(flat)
            # cum[k] = sum of the k smallest squares (cum[0] = 0); float64 so that the small end
            # is not swamped by rounding when D_w is in the millions.
            self._cum = torch.cat([sq.new_zeros(1, dtype=torch.float64), torch.cumsum(sq.double(), 0)]).cpu()

    def num_removed(self, p: float) -> int:
        """``ceil(p * D_w)``: how many weights are removed at fraction ``p``."""
        return min(self.num_weights, max(0, math.ceil(float(p) * self.num_weights - 1e-9)))

    def squared(self, p: float) -> float:
        """``R(p)^2``."""
        k = self.num_removed(_check_fraction(p, "p", upper_inclusive=True))
        if k == 0:
            return 0.0
        if self.method == "sort":
            return float(self._cum[k])
        if k == self.num_weights:
            return self.total_sq
        scores = {n: t.abs().float() for n, t in self._named.items()}
        masks = lowest_score_masks(scores, k)
        return float(sum(t.double().square()[~masks[n]].sum() for n, t in self._named.items()))

    def __call__(self, p: float) -> float:
        return math.sqrt(self.squared(p))


def _weight_dict(
    weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor, params: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    if isinstance(weights, torch.Tensor):
        if params is not None:
            raise ValueError("params: only applies when weights is a model or a dict, not a single tensor")
        return {"weights": weights.detach()}
    if isinstance(weights, nn.Module) and params is not None:
        full = dict(weights.named_parameters())
        missing = [n for n in params if n not in full]
        if missing:
            raise ValueError(f"params: {missing} are not parameters of the model")
        return {n: full[n].detach() for n in params}
    try:
        named = as_tensor_dict(weights)
    except ValueError as err:
        raise ValueError(f"weights: {err}") from None
    if params is not None:
        missing = [n for n in params if n not in named]
        if missing:
            raise ValueError(f"params: {missing} are not in the given weights")
        named = {n: named[n] for n in params}
    return {n: t.detach() for n, t in named.items()}


def _check_fraction(p: Any, name: str, upper_inclusive: bool = False) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        if isinstance(p, torch.Tensor) and p.numel() == 1:
            p = float(p)
        else:
            raise ValueError(f"{name}: expected a number in [0, 1], got {p!r}")
    p = float(p)
    ok = 0.0 <= p <= 1.0 if upper_inclusive else 0.0 <= p < 1.0
    if not ok or math.isnan(p):
        raise ValueError(f"{name}: expected a number in [0, 1{']' if upper_inclusive else ')'}, got {p!r}")
    return p


# --------------------------------------------------------------------------- G(R): the normalised squared width


@dataclass(frozen=True)
class WidthSpectrum:
    """The Hessian spectrum as ``G`` sees it: ``|lambda|`` nodes with weights, plus a mass at exactly zero.

    ``G(R) = zero_mass + sum_j weight_j * 2 eps / (2 eps + node_j R^2)``;
    the weights and ``zero_mass`` sum to 1 (a probability distribution over the ``D`` eigenvalues).
    """

    nodes: torch.Tensor  # |lambda|, float64, CPU
    weights: torch.Tensor  # float64, CPU
    zero_mass: float
    hessian_dim: int | None
    description: str


def width_spectrum(
    spectrum: Spectrum,
    *,
    hessian_dim: int | None = None,
    tail: str | None = None,
    zero_mass: float = 0.0,
) -> WidthSpectrum:
    """Turn eigenvalues or an SLQ ``(nodes, weights)`` pair into the distribution ``G`` averages over.

    Defined in book/pruning_limit.md.

    - A 1-D tensor of eigenvalues. Negative eigenvalues enter as ``|lambda|`` (the treatment of the
      paper's code; a saddle direction is treated like a curved one of the same size). If
      ``hessian_dim`` is ``None`` or equals their number, this is the whole spectrum. If fewer than
      ``hessian_dim`` eigenvalues are given (e.g. the top ``k`` from Lanczos), ``tail`` must say how
      the ``D - k`` missing ones are treated: ``"zero"`` counts them as flat directions (each adds 1/D
      to ``G``: the most optimistic completion, an upper bound on the prediction) and ``"last"``
      counts them as equal to the smallest computed ``|lambda|`` (a lower bound on the prediction
      when the missing eigenvalues are smaller in magnitude, the usual case for the top ``k``).
    - A pair ``(nodes, weights)`` from stochastic Lanczos quadrature: Ritz values with quadrature
      weights that sum to 1 (per probe, averaged over probes). The quadrature is used directly, with
      no binning or smoothing. ``hessian_dim`` is then only recorded.

    ``zero_mass`` in [0, 1) is a share of exactly-zero eigenvalues added on top (the paper adds such
    a mass, measured from Hessian rows, for its large networks); the rest is scaled by ``1 - zero_mass``.
    """
    zero_mass = float(zero_mass)
    if not 0.0 <= zero_mass < 1.0 or math.isnan(zero_mass):
        raise ValueError(f"zero_mass: expected a share in [0, 1), got {zero_mass!r}")
    if hessian_dim is not None and (isinstance(hessian_dim, bool) or int(hessian_dim) != hessian_dim or hessian_dim < 1):
        raise ValueError(f"hessian_dim: expected a positive integer, got {hessian_dim!r}")
    if isinstance(spectrum, (tuple, list)) and len(spectrum) == 2:
        nodes = torch.as_tensor(spectrum[0]).detach().to("cpu", torch.float64).reshape(-1)
        weights = torch.as_tensor(spectrum[1]).detach().to("cpu", torch.float64).reshape(-1)
        if nodes.numel() == 0 or nodes.shape != weights.shape:
            raise ValueError(
                f"spectrum: expected (nodes, weights) of equal non-zero length, got {tuple(nodes.shape)} and "
                f"{tuple(weights.shape)}"
            )
        if not (bool(torch.isfinite(nodes).all()) and bool(torch.isfinite(weights).all())):
            raise ValueError("spectrum: nodes and weights must be finite")
        if bool((weights < -1e-12).any()):
            raise ValueError("spectrum: quadrature weights must be non-negative")
        total = float(weights.sum())
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"spectrum: quadrature weights must sum to 1 (a distribution over eigenvalues), got {total:.6g}")
        if tail is not None:
            raise ValueError("tail: only applies to a list of top eigenvalues, not to an SLQ (nodes, weights) pair")
        weights = weights.clamp_min(0) / total
        desc = f"SLQ quadrature ({nodes.numel()} nodes)"
        return WidthSpectrum(nodes.abs(), weights * (1 - zero_mass), zero_mass, hessian_dim, desc)
    if not isinstance(spectrum, torch.Tensor):
        try:
            spectrum = torch.as_tensor(spectrum)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"spectrum: expected a 1-D tensor of eigenvalues or a (nodes, weights) pair, got {type(spectrum).__name__}"
            ) from None
    eig = spectrum.detach().to("cpu", torch.float64).reshape(-1)
    if eig.numel() == 0:
        raise ValueError("spectrum: no eigenvalues given")
    if not bool(torch.isfinite(eig).all()):
        raise ValueError("spectrum: eigenvalues must be finite")
    k = eig.numel()
    dim = k if hessian_dim is None else int(hessian_dim)
    if dim < k:
        raise ValueError(f"hessian_dim: {dim} is smaller than the {k} eigenvalues given")
    nodes = eig.abs()
    if dim == k:
        if tail is not None and tail not in ("zero", "last"):
            raise ValueError(f"tail: expected 'zero', 'last' or None, got {tail!r}")
        desc = f"all {k} eigenvalues"
        weights = torch.full_like(nodes, 1.0 / k)
    else:
        if tail == "zero":
            nodes = torch.cat([nodes, nodes.new_zeros(1)])
            weights = torch.cat([torch.full((k,), 1.0 / dim, dtype=torch.float64), torch.tensor([(dim - k) / dim], dtype=torch.float64)])
        elif tail == "last":
            smallest = nodes.min()
            nodes = torch.cat([nodes, smallest.reshape(1)])
            weights = torch.cat([torch.full((k,), 1.0 / dim, dtype=torch.float64), torch.tensor([(dim - k) / dim], dtype=torch.float64)])
        else:
            raise ValueError(
                f"tail: the spectrum has {k} of hessian_dim={dim} eigenvalues; say how to treat the other {dim - k}: "
                "'zero' (flat: an upper bound on the limit) or 'last' (equal to the smallest computed |lambda|: a lower bound)"
            )
        desc = f"top {k} of {dim} eigenvalues, tail={tail!r}"
    return WidthSpectrum(nodes, weights * (1 - zero_mass), zero_mass, dim, desc)


def normalized_squared_width(
    radius: float | torch.Tensor,
    spectrum: Spectrum | WidthSpectrum,
    epsilon: float,
    **spectrum_kwargs,
) -> torch.Tensor:
    """``G(R) = (1/D) sum_i 2 eps / (2 eps + |lambda_i| R^2)``, for a scalar or a tensor of radii.

    Defined in book/pruning_limit.md.

    Written in the ``2 eps / (2 eps + |lambda| R^2)`` form so that a zero eigenvalue contributes
    exactly 1 (an infinitely long ellipsoid axis) with no division by zero. ``G(0) = 1`` and ``G``
    decreases in ``R``. ``spectrum_kwargs`` go to :func:`width_spectrum`.
    """
    eps = _check_epsilon(epsilon)
    ws = spectrum if isinstance(spectrum, WidthSpectrum) else width_spectrum(spectrum, **spectrum_kwargs)
    r = torch.as_tensor(radius, dtype=torch.float64).detach().cpu()
    if bool((r < 0).any()) or not bool(torch.isfinite(r).all()):
        raise ValueError(f"radius: expected non-negative finite values, got {radius!r}")
    r2 = r.reshape(-1, 1).square()
    g = ws.zero_mass + (ws.weights * (2 * eps) / (2 * eps + ws.nodes * r2)).sum(-1)
    return g.reshape(r.shape)


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, torch.Tensor) and epsilon.numel() == 1:
        epsilon = float(epsilon)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0 or math.isinf(epsilon):
        raise ValueError(f"epsilon: expected a positive finite loss tolerance, got {epsilon!r}")
    return float(epsilon)


# --------------------------------------------------------------------------- the fixed point


@dataclass
class PredictedLimit:
    """The predicted pruning limit and the quantities at the fixed point.

    ``removed`` is the fraction of prunable weights removed
    (``float(result)`` gives it); ``kept = 1 - removed``.
    """

    removed: float
    radius: float  # R(p*)
    width: float  # G(R(p*)), equal to p* up to the bisection tolerance and the step of R
    epsilon: float
    num_weights: int  # D_w, the prunable weights p counts
    hessian_dim: int | None  # D, the dimension G averages over
    spectrum: str
    offset: float = 0.0

    @property
    def kept(self) -> float:
        return 1.0 - self.removed

    def __float__(self) -> float:
        return float(self.removed)


def predicted_pruning_limit(
    weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor | MagnitudeRadius,
    spectrum: Spectrum | WidthSpectrum,
    epsilon: float,
    *,
    hessian_dim: int | None = None,
    tail: str | None = None,
    zero_mass: float = 0.0,
    params: Sequence[str] | None = None,
    offset: float = 0.0,
    tol: float = 1e-7,
    method: str = "auto",
) -> PredictedLimit:
    """The predicted pruning limit: the fraction ``p*`` of weights **removed** that solves ``p = G(R(p))``.

    Defined in book/pruning_limit.md.

    ``weights``: a model (its conv/linear weights are the prunable ones), a dict name -> tensor, a
    single tensor, or a prepared :class:`MagnitudeRadius`. ``spectrum``: eigenvalues of the loss
    Hessian at the trained weights (all of them, or the top ``k`` with ``hessian_dim`` and ``tail``),
    or an SLQ ``(nodes, weights)`` pair; see :func:`width_spectrum` for negative eigenvalues (taken as
    ``|lambda|``) and the treatment of eigenvalues that were not computed. ``epsilon``: the loss
    tolerance (:func:`loss_noise_epsilon` gives the paper's choice).

    ``p`` counts the prunable weights ``D_w``; ``G`` averages over the Hessian dimension ``D``.
    ``h(p) = G(R(p)) - p`` is strictly decreasing (``R`` grows, ``G`` falls) with ``h(0) = 1 > 0``,
    so the crossing is unique and bisection on [0, 1] finds it to ``tol``. Because ``R`` is a step
    function of ``p`` (whole weights are removed), the answer is ``sup{p : G(R(p)) >= p}``.
    ``offset`` solves ``p = G(R(p)) + offset`` instead (see :func:`kinematic_band`).


    Example
    -------
    >>> import torch
    >>> from pruninglab.limits.pruning_limit import predicted_pruning_limit
    >>> weights = torch.linspace(-1, 1, 101)           # the trained weights, flattened
    >>> eigenvalues = torch.full((101,), 2.0)          # a flat-ish spectrum, one eigenvalue per weight
    >>> pred = predicted_pruning_limit(weights, eigenvalues, epsilon=0.05)
    >>> p = pred.removed; 0 < p < 1
    True
    >>> abs(p - 0.1 / (0.1 + 2.0 * pred.radius ** 2)) < 1e-3  # p* = G(R(p*)) with G = 2e/(2e + lambda R^2)
    True
    """
    eps = _check_epsilon(epsilon)
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 < tol < 0.1:
        raise ValueError(f"tol: expected a number in (0, 0.1), got {tol!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not -1 < offset < 1:
        raise ValueError(f"offset: expected a number in (-1, 1), got {offset!r}")
    radius = weights if isinstance(weights, MagnitudeRadius) else MagnitudeRadius(weights, method=method, params=params)
    ws = spectrum if isinstance(spectrum, WidthSpectrum) else width_spectrum(
        spectrum, hessian_dim=hessian_dim, tail=tail, zero_mass=zero_mass
    )

    def h(p: float) -> float:
        return float(normalized_squared_width(radius(p), ws, eps)) + offset - p

    # h(0) = 1 + offset > 0 always, so the root lies in (0, 1].
    lo, hi = 0.0, 1.0
    if h(hi) >= 0:  # G stays at 1 (all eigenvalues zero, or all weights zero): everything removable
        lo = 1.0
    else:
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if h(mid) >= 0:
                lo = mid
            else:
                hi = mid
    r = radius(lo)
    return PredictedLimit(
        removed=lo,
        radius=r,
        width=float(normalized_squared_width(r, ws, eps)),
        epsilon=eps,
        num_weights=radius.num_weights,
        hessian_dim=ws.hessian_dim,
        spectrum=ws.description,
        offset=float(offset),
    )


def width_curve(
    weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor | MagnitudeRadius,
    spectrum: Spectrum | WidthSpectrum,
    epsilon: float,
    fractions: Sequence[float] | torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """``G(R(p))`` at each removed fraction ``p`` in ``fractions`` (for plots of the fixed point).

    Defined in book/pruning_limit.md. ``kwargs`` go to :func:`width_spectrum` (``hessian_dim``,
    ``tail``, ``zero_mass``) or to :class:`MagnitudeRadius` (``method``, ``params``).
    """
    radius_kw = {k: kwargs.pop(k) for k in ("method", "params") if k in kwargs}
    radius = weights if isinstance(weights, MagnitudeRadius) else MagnitudeRadius(weights, **radius_kw)
    ws = spectrum if isinstance(spectrum, WidthSpectrum) else width_spectrum(spectrum, **kwargs)
    rs = torch.tensor([radius(float(p)) for p in fractions], dtype=torch.float64)
    return normalized_squared_width(rs, ws, epsilon)


def kinematic_margin(dim: int, eta: float = 0.05) -> float:
    """``a_eta / sqrt(D)`` with ``a_eta = sqrt(8 log(4/eta))``: the half-width of the kinematic transition.

    Defined in book/pruning_limit.md. From the approximate kinematic formula of Amelunxen, Lotz,
    McCoy and Tropp (2014): the intersection probability moves from ``<= eta`` to ``>= 1 - eta``
    within ``+- a_eta sqrt(D)`` of the threshold, i.e. ``+- a_eta / sqrt(D)`` in the fraction ``p``.
    """
    if isinstance(dim, bool) or int(dim) != dim or dim < 1:
        raise ValueError(f"dim: expected a positive integer, got {dim!r}")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 < eta < 1:
        raise ValueError(f"eta: expected a probability in (0, 1), got {eta!r}")
    return math.sqrt(8 * math.log(4 / eta)) / math.sqrt(int(dim))


def kinematic_band(
    weights: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor | MagnitudeRadius,
    spectrum: Spectrum | WidthSpectrum,
    epsilon: float,
    *,
    eta: float = 0.05,
    **kwargs,
) -> tuple[PredictedLimit, PredictedLimit]:
    """Our reconstruction of a lower and an upper bound: solve ``p = G(R(p)) -+ a_eta / sqrt(D)``.

    Defined in book/pruning_limit.md. This is **not** the paper's theorem (its statements are not in
    the text available to us): it is the kinematic formula's transition window applied to the width ``G``, under
    the same ellipsoid approximation and with ``G`` standing in for the statistical dimension.
    ``D`` is the Hessian dimension. Returns ``(lower, upper)``.
    """
    radius_kw = {k: kwargs.pop(k) for k in ("method", "params") if k in kwargs}
    radius = weights if isinstance(weights, MagnitudeRadius) else MagnitudeRadius(weights, **radius_kw)
    ws = spectrum if isinstance(spectrum, WidthSpectrum) else width_spectrum(spectrum, **kwargs)
    dim = ws.hessian_dim if ws.hessian_dim is not None else radius.num_weights
    margin = kinematic_margin(dim, eta)
    lower = predicted_pruning_limit(radius, ws, epsilon, offset=max(-margin, -0.999))
    upper = predicted_pruning_limit(radius, ws, epsilon, offset=min(margin, 0.999))
    return lower, upper


# --------------------------------------------------------------------------- epsilon


@torch.no_grad()
def loss_noise_epsilon(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Iterable,
    *,
    device: torch.device | str | None = None,
    correction: int = 0,
    dev: torch.device | str | None = None,
) -> float:
    """The loss tolerance ``epsilon``: the standard deviation of the per-minibatch training loss at ``w*``.

    Defined in book/limit_experiments.md.

    ``data`` yields ``(inputs, targets)`` minibatches (the paper's code: the augmented training
    loader, batch 128); the model is evaluated in eval mode, without gradients. ``correction=0`` is
    the population standard deviation, ``1`` the sample one. The paper's code adds the l1 term to
    each loss; at fixed ``w*`` that is the same constant for every batch and does not change the
    standard deviation, so it is left out here. ``device`` is where the batches are moved (default:
    the model's; ``dev`` is an older spelling of the same keyword).


    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> from pruninglab.limits.pruning_limit import loss_noise_epsilon
    >>> torch.manual_seed(0); model = torch.nn.Linear(4, 2)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    >>> eps = loss_noise_epsilon(model, F.cross_entropy, batches)
    >>> losses = torch.stack([F.cross_entropy(model(a), b) for a, b in batches]).detach()
    >>> abs(eps - float(losses.std(correction=0))) < 1e-6
    True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if correction not in (0, 1):
        raise ValueError(f"correction: expected 0 (population) or 1 (sample), got {correction!r}")
    if dev is not None and device is not None:
        raise ValueError("dev: is the older name of device; pass only device")
    device = device if device is not None else dev
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    losses = []
    try:
        for inputs, targets in data:
            losses.append(loss_fn(model(inputs.to(dev)), targets.to(dev)).detach().reshape(()))
    finally:
        model.train(was)
    if len(losses) < 2:
        raise ValueError(f"data: yielded {len(losses)} batch(es); the loss noise needs at least 2 minibatches")
    eps = float(torch.stack(losses).double().std(correction=correction))
    if not eps > 0:
        raise ValueError("data: every minibatch has the same loss, so epsilon would be 0; use smaller or shuffled batches")
    return eps


# --------------------------------------------------------------------------- the actual limit


#: The named rules for the actual limit (``rule=`` of :func:`actual_pruning_limit`).
ACTUAL_LIMIT_RULES = ("strict", "at_least_bisect", ">=", ">")


@dataclass
class ActualLimit:
    """The measured pruning limit and how it was found.

    ``removed`` is the largest fraction found at which the
    pruned (not fine-tuned) model is still "good"; ``float(result)`` gives it. ``bracket = (lo, hi)``
    with ``lo == removed`` good and ``hi`` the next evaluated fraction above it, which is bad
    (``hi == lo`` when ``lo`` is the top of the range). ``evaluations`` lists every ``(p, score)``
    measured, in order; ``rule`` is the rule's name and ``grid_step`` the spacing of the scan.
    """

    removed: float
    dense_score: float
    score: float
    bracket: tuple[float, float]
    rule: str
    tolerance: float
    evaluations: list[tuple[float, float]] = field(default_factory=list)
    grid_step: float | None = None

    @property
    def kept(self) -> float:
        return 1.0 - self.removed

    def __float__(self) -> float:
        return float(self.removed)


def _check_fractions(fractions: Any) -> list[float]:
    try:
        values = [float(p) for p in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"fractions: expected a sequence of numbers in (0, 1], got {fractions!r}") from None
    if not values or any(not 0.0 < p <= 1.0 for p in values):
        raise ValueError(f"fractions: expected a non-empty sequence of numbers in (0, 1], got {fractions!r}")
    return sorted(set(values))


@torch.no_grad()
def actual_pruning_limit(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    *,
    rule: str = "strict",
    tolerance: float = 0.0,
    higher_is_better: bool = True,
    grid_step: float = 1e-3,
    fractions: Sequence[float] | None = None,
    max_evaluations: int | None = None,
    grid: int = 20,
    resolution: float = 1e-3,
    params: Sequence[str] | None = None,
    progress: bool | None = None,
) -> ActualLimit:
    """Largest global one-shot magnitude sparsity (no fine-tuning) at which ``evaluate`` stays at the dense level.

    Defined in book/limit_experiments.md.

    ``evaluate(model) -> float`` scores the model (e.g. test accuracy; ``higher_is_better=False`` for
    a loss). Pruning removes whole weights, so a fraction ``p`` means removing exactly
    ``k = ceil(p * D_w)`` weights (the smallest ``|w|`` globally, as in :class:`MagnitudeRadius`),
    and the result reports ``k / D_w``. Two rules, named by ``rule``:

    - ``"strict"`` (default; the rule of the paper's code): scan every fraction of the grid
      ``p = grid_step, 2 grid_step, ..., < 1`` (``grid_step=0.001``: 999 evaluations) or the given
      ``fractions``, and report the **largest** ``p`` whose score is **strictly above** the dense
      score (``s(p) > dense - tolerance``). Later good points are never missed, but every point is
      evaluated; with ``tolerance=0`` and a score that only moves in steps (accuracy on a small test
      set), no point may beat the dense score, and the answer is then 0.
    - ``"at_least_bisect"``: good means ``s(p) >= dense - tolerance``. Scan a coarse grid
      ``p = i / grid`` (or ``fractions``), plus the largest fraction that keeps one weight, take the
      largest good point and the first bad point after it as a bracket, and bisect it until it is
      at most ``resolution`` wide. About ``grid + log2(1 / (grid * resolution))`` evaluations; a good
      point further right that the coarse grid skipped over is not searched for.

    ``">="`` is accepted as another name for ``"at_least_bisect"``, and ``">"`` runs the bisection
    search with the strict comparison (the spellings of earlier configs). ``max_evaluations`` caps
    the strict scan: a grid that would need more points is thinned to ``max_evaluations`` evenly
    spaced ones (the result records the ``grid_step`` used).

    The model's weights are restored before returning. ``params`` restricts pruning to those
    parameter names (default: the conv/linear weights). ``progress`` shows a bar of evaluations
    (default: :func:`pruninglab.runtime.progress_enabled`).

    Example
    -------
    >>> import torch
    >>> from pruninglab.limits.pruning_limit import actual_pruning_limit
    >>> torch.manual_seed(0); net = torch.nn.Linear(10, 10)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(64, 10); y = net(x).argmax(1)  # labels the dense net gets right
    >>> def accuracy(m):
    ...     return float((m(x).argmax(1) == y).float().mean())
    >>> strict = actual_pruning_limit(net, accuracy, rule="strict", grid_step=0.01)
    >>> bisect = actual_pruning_limit(net, accuracy, rule="at_least_bisect")
    >>> strict.removed  # nothing beats a dense score of 1.0
    0.0
    >>> 0 < bisect.removed < 1 and bisect.score == 1.0
    True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(evaluate):
        raise ValueError("evaluate: expected a callable model -> score")
    if rule not in ACTUAL_LIMIT_RULES:
        raise ValueError(f"rule: expected one of {', '.join(map(repr, ACTUAL_LIMIT_RULES))}, got {rule!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a non-negative number, got {tolerance!r}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid: expected an integer >= 2, got {grid!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not 0 < resolution < 0.5:
        raise ValueError(f"resolution: expected a number in (0, 0.5), got {resolution!r}")
    if isinstance(grid_step, bool) or not isinstance(grid_step, (int, float)) or not 0 < grid_step <= 0.5:
        raise ValueError(f"grid_step: expected a number in (0, 0.5], got {grid_step!r}")
    if max_evaluations is not None and (isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int)
                                        or max_evaluations < 2):
        raise ValueError(f"max_evaluations: expected an integer >= 2 or None, got {max_evaluations!r}")
    points = _check_fractions(fractions) if fractions is not None else None
    strict_compare = rule in ("strict", ">")
    scan = rule == "strict"

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
    scores = {n: t.abs() for n, t in originals.items()}
    total = sum(t.numel() for t in originals.values())
    if total < 2:
        raise ValueError("model: needs at least 2 prunable weights")
    step = max(1, math.floor(resolution * total))

    def count(p: float) -> int:
        return min(total, max(1, math.ceil(p * total - 1e-9)))

    used_step: float | None = None
    if scan:
        if points is None:
            n = math.ceil(1.0 / grid_step - 1e-9) - 1  # grid points strictly below 1
            used_step = float(grid_step)
            if max_evaluations is not None and n > max_evaluations:
                n, used_step = max_evaluations, 1.0 / (max_evaluations + 1)
            points = [round(i * used_step, 12) for i in range(1, n + 1)]
        elif max_evaluations is not None and len(points) > max_evaluations:
            idx = torch.linspace(0, len(points) - 1, max_evaluations).round().long().tolist()
            points = [points[i] for i in sorted(set(idx))]
        counts = sorted({count(p) for p in points})
    else:
        base = points if points is not None else [i / grid for i in range(1, grid)]
        counts = sorted({count(p) for p in base if count(p) < total} | {total - 1})

    def score() -> float:
        s = float(evaluate(model))
        if math.isnan(s):
            raise ValueError("evaluate: returned NaN")
        return s

    evaluations: list[tuple[float, float]] = []
    cache: dict[int, float] = {}
    from tqdm.auto import tqdm

    from ..runtime import progress_enabled

    bar = tqdm(total=len(counts) + 1, desc="actual limit", unit="eval", disable=not progress_enabled(progress),
               leave=False)

    def pruned_score(k: int) -> float:
        if k in cache:
            return cache[k]
        masks = lowest_score_masks(scores, k)
        for n, t in live.items():
            t.copy_(originals[n] * masks[n])
        s = score()
        cache[k] = s
        evaluations.append((k / total, s))
        bar.update(1)
        return s

    try:
        dense = score()
        bar.update(1)
        cache[0] = dense
        evaluations.append((0.0, dense))
        sign = 1.0 if higher_is_better else -1.0

        def good(s: float) -> bool:
            margin = sign * (s - dense) + tolerance
            return margin > 0 if strict_compare else margin >= 0

        verdicts = [(k, good(pruned_score(k))) for k in counts]
        good_counts = [k for k, ok in verdicts if ok]
        lo = max(good_counts) if good_counts else 0
        later = [k for k, _ in verdicts if k > lo]
        if scan:
            hi = min(later) if later else lo
            return ActualLimit(lo / total, dense, cache[lo], (lo / total, hi / total), rule, float(tolerance),
                               evaluations, used_step)
        lo_good = bool(good_counts) or good(dense)
        later_bad = [k for k, ok in verdicts if k > lo and not ok]
        if not later_bad:  # good up to the top of the range
            return ActualLimit(lo / total, dense, cache[lo], (lo / total, lo / total), rule, float(tolerance),
                               evaluations, resolution)
        hi = min(later_bad)
        bar.total = bar.total + max(0, math.ceil(math.log2(max(hi - lo, 1) / step)))
        while hi - lo > step:
            mid = (lo + hi) // 2
            if good(pruned_score(mid)):
                lo, lo_good = mid, True
            else:
                hi = mid
        removed = lo if lo_good else 0
        return ActualLimit(removed / total, dense, cache[removed], (removed / total, hi / total), rule,
                           float(tolerance), evaluations, resolution)
    finally:
        bar.close()
        for n, t in live.items():
            t.copy_(originals[n])


# --------------------------------------------------------------------------- l1-regularised training


def train_with_l1(
    model: nn.Module,
    data: Iterable,
    *,
    strength: float,
    steps: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    hooks: Sequence[Any] = (),
    **train_kwargs,
):
    """The paper's training: cross-entropy + ``strength * sum |theta|`` over all parameters, SGD with momentum.

    Defined in book/limit_experiments.md.

    Plain subgradients of the l1 term (no proximal step), momentum 0.9, no weight decay, as in the
    paper's code; everything else (``out_dir``, ``resume``, ``evaluate``, ``checkpoint_every``,
    ``config``, ...) is passed to :func:`pruninglab.train.train`, the book's one training loop.
    ``scheduler`` is a function ``optimizer -> scheduler`` stepped once per iteration. Returns the
    loop's :class:`~pruninglab.train.TrainResult`.
    """
    from ..train import l1_penalty, train

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    sched = scheduler(optimizer) if scheduler is not None else None
    return train(model, loss_fn, data, optimizer, steps=steps, scheduler=sched,
                 hooks=[l1_penalty(strength), *hooks], **train_kwargs)


__all__ = [
    "MagnitudeRadius",
    "WidthSpectrum",
    "width_spectrum",
    "normalized_squared_width",
    "PredictedLimit",
    "predicted_pruning_limit",
    "width_curve",
    "kinematic_margin",
    "kinematic_band",
    "loss_noise_epsilon",
    "ActualLimit",
    "ACTUAL_LIMIT_RULES",
    "actual_pruning_limit",
    "train_with_l1",
]
