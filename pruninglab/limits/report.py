"""``limit_report``: the pruning limit of any model in one call, predicted and measured, with the reasons.

Defined in book/your_model.md.

One call runs the whole protocol of the pruning-limit chapters on a model the caller trained:

1. the loss tolerance ``epsilon`` (:func:`~pruninglab.limits.pruning_limit.loss_noise_epsilon`);
2. one :class:`~pruninglab.sharpness.HessianOperator` over the non-normalisation parameters, built
   once and asked for the spectrum (stochastic Lanczos quadrature), the top eigenvalues, the trace
   (Hutchinson, with per-layer block traces from the same probes) and each prunable layer's top
   block eigenvalue;
3. the predicted limit ``p* = G(R(p*))``
   (:func:`~pruninglab.limits.pruning_limit.predicted_pruning_limit`);
4. the actual limit of global one-shot magnitude pruning without fine-tuning
   (:func:`~pruninglab.limits.pruning_limit.actual_pruning_limit`) under a named rule;
5. per-layer kept fractions at both limits and warnings (layer collapse, negative curvature,
   estimates that did not converge within the budget).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._checks import nonnegative_float, one_of, positive_int
from ..masks import prunable_parameters
from ..pruners.magnitude import lowest_score_masks
from .pruning_limit import (
    ACTUAL_LIMIT_RULES,
    MagnitudeRadius,
    actual_pruning_limit,
    loss_noise_epsilon,
    predicted_pruning_limit,
    width_curve,
    width_spectrum,
)

__all__ = ["LimitReport", "limit_report"]

#: Spectral mass below ``-NEGATIVE_RELATIVE * top eigenvalue`` counts as negative curvature.
NEGATIVE_RELATIVE = 1e-3


@dataclass
class LimitReport:
    """What :func:`limit_report` found: the predicted and actual pruning limits and the evidence.

    Defined in book/your_model.md.

    Fractions are of the prunable weights **removed** (``1 - p`` is kept). ``curve`` holds the
    measured ``(sparsity, score)`` pairs, sparsity increasing (the dense model first);
    ``width_curve`` the prediction's ``(p, G(R(p)))``; ``layers`` one dict per prunable tensor with
    ``name``, ``shape``, ``numel``, ``kept_at_predicted``, ``kept_at_actual``, its diagonal block's
    ``trace`` (Hutchinson, ``trace_stderr``), ``trace_per_weight`` and ``top_eigenvalue`` (Lanczos on
    the block; ``None`` when the budget ran out). ``to_markdown()``, ``to_json()`` and ``plot()``
    present it.
    """

    predicted: float
    actual: float
    epsilon: float
    top_eigenvalues: list[float]
    trace: float
    trace_stderr: float
    curve: list[tuple[float, float]]
    layers: list[dict[str, Any]]
    warnings: list[str]
    dense_score: float
    rule: str
    tolerance: float
    grid_step: float | None
    actual_bracket: tuple[float, float]
    radius_at_predicted: float
    hessian_dim: int
    num_weights: int
    negative_share: float
    width_curve: list[tuple[float, float]]
    spectrum: str
    num_hvp: int
    num_evaluations: int
    device: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """``predicted - actual``."""
        return self.predicted - self.actual

    def to_dict(self) -> dict[str, Any]:
        """The report as plain Python values (lists, dicts, floats; ``None`` for undefined numbers)."""
        return _plain(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """The report as a JSON document (strict JSON: undefined numbers are ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        """A summary table, the per-layer table and the warnings, as Markdown."""
        def num(x: Any, fmt: str = ".4g") -> str:
            return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)

        rows = [
            ("predicted limit $p^\\star$ (fraction removed)", num(self.predicted, ".3f")),
            (f"actual limit (rule `{self.rule}`, tolerance {self.tolerance:g})", num(self.actual, ".3f")),
            ("gap (predicted − actual)", num(self.gap, "+.3f")),
            ("dense score", num(self.dense_score)),
            ("loss tolerance $\\epsilon$", num(self.epsilon)),
            ("top Hessian eigenvalues", ", ".join(num(v) for v in self.top_eigenvalues) or "n/a"),
            ("Hessian trace (± s.e.)", f"{num(self.trace)} ± {num(self.trace_stderr, '.2g')}"),
            ("negative spectral mass", num(self.negative_share, ".1%")),
            ("Hessian dimension $D$ / prunable weights $D_w$", f"{self.hessian_dim:,} / {self.num_weights:,}"),
            ("Hessian-vector products / evaluations", f"{self.num_hvp} / {self.num_evaluations}"),
        ]
        lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        lines += ["", "| layer | shape | weights | kept at $p^\\star$ | kept at actual | block top eigenvalue "
                  "| block trace per weight |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            lines.append(f"| `{r['name']}` | {tuple(r['shape'])} | {r['numel']:,} | {r['kept_at_predicted']:.3f} | "
                         f"{r['kept_at_actual']:.3f} | {num(r['top_eigenvalue'])} | {num(r['trace_per_weight'])} |")
        if self.warnings:
            lines += [""] + [f"- **warning:** {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def plot(self, width: float = 5.0, height: float = 3.6):
        """A matplotlib Figure: score vs sparsity with ``p*`` and the actual limit marked (left), and each
        layer's kept fraction at both limits (right).

        The figure is closed in pyplot's state machine, so a notebook cell that returns it shows it
        once; save it with ``fig.savefig``.
        """
        import matplotlib.pyplot as plt

        from ..plots import color, figure

        fig, (ax, bx) = figure(ncols=2, width=width, height=height)
        ps = [p for p, _ in self.curve]
        ss = [s for _, s in self.curve]
        ax.plot(ps, ss, ".-", color="0.3", lw=1, ms=3, label="pruned, no fine-tuning")
        ax.axhline(self.dense_score, color="0.6", ls=":", lw=1, label="dense")
        ax.axvline(self.predicted, color=color("predicted"), ls="--", label=f"predicted $p^*$ = {self.predicted:.3f}")
        ax.axvline(self.actual, color=color("actual"), ls="-", label=f"actual ({self.rule}) = {self.actual:.3f}")
        ax.set_xlabel("fraction of weights removed $p$")
        ax.set_ylabel("score")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8, loc="lower left")
        ax.set_title("score vs sparsity")
        idx = list(range(len(self.layers)))
        w = 0.4
        bx.bar([i - w / 2 for i in idx], [r["kept_at_predicted"] for r in self.layers], w,
               color=color("predicted"), label="at $p^*$")
        bx.bar([i + w / 2 for i in idx], [r["kept_at_actual"] for r in self.layers], w,
               color=color("actual"), label="at actual")
        bx.set_xticks(idx)
        bx.set_xticklabels([r["name"] for r in self.layers], rotation=45 if len(idx) > 3 else 0,
                           ha="right" if len(idx) > 3 else "center", fontsize=8)
        if len(idx) > 20:
            bx.set_xticklabels([])
            bx.set_xlabel(f"{len(idx)} prunable tensors, in module order")
        bx.set_ylabel("fraction of the layer kept")
        bx.set_ylim(0, 1.05)
        bx.legend(fontsize=8)
        bx.set_title("per-layer kept fraction")
        fig.tight_layout()
        plt.close(fig)
        return fig


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _plain(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _is_pair(obj: Any) -> bool:
    return (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)
            and obj[0].ndim >= 1 and obj[1].ndim >= 1 and obj[0].shape[0] == obj[1].shape[0])


def _epsilon_batches(train_data: Any, batch_size: int, generator: torch.Generator) -> Any:
    """Minibatches for the loss noise: the caller's batches, or one pair cut into shuffled minibatches."""
    if not _is_pair(train_data):
        return train_data
    x, y = train_data
    n = int(x.shape[0])
    if n < 4:
        raise ValueError(f"train_data: has {n} samples; the loss tolerance needs at least 4 (two minibatches of 2)")
    bs = min(batch_size, n // 2)
    perm = torch.randperm(n, generator=generator).to(x.device)
    return [(x[perm[i:i + bs]], y[perm[i:i + bs]]) for i in range(0, n, bs)]


class _Budget:
    """Hessian-vector products left (``None``: unlimited)."""

    def __init__(self, max_hvp: int | None):
        self.left = max_hvp

    def take(self, wanted: int) -> int:
        if self.left is None:
            return wanted
        got = max(0, min(wanted, self.left))
        self.left -= got
        return got

    def give_back(self, unused: int) -> None:
        if self.left is not None:
            self.left += unused


def limit_report(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    train_data: Any,
    evaluate: Callable[[nn.Module], float],
    *,
    sparsities: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    rule: str = "strict",
    tolerance: float = 0.0,
    grid_step: float = 1e-3,
    max_evaluations: int | None = None,
    max_hvp: int | None = None,
    epsilon: float | None = None,
    epsilon_batch_size: int = 128,
    hessian_data: Any = None,
    hessian_params: Sequence[str] | None = None,
    top_k: int = 3,
    max_iter: int = 100,
    tol: float = 1e-5,
    spectrum_steps: int = 128,
    spectrum_probes: int = 1,
    trace_samples: int = 50,
    layer_eigenvalues: bool = True,
    layer_max_iter: int = 50,
    cache_graphs: bool | None = None,
    seed: int = 0,
) -> LimitReport:
    """How far can this model be pruned, and why: the predicted and the actual pruning limit in one call.

    Defined in book/your_model.md.

    Arguments
    ---------
    model
        A trained ``nn.Module``; its conv/linear weights (:func:`pruninglab.masks.prunable_parameters`)
        are the prunable ones. It is left unchanged (weights restored after the sweep).
    loss_fn
        ``loss_fn(model(inputs), targets)`` returns the **mean** training loss of a batch (the loss the
        model was trained on, without a regulariser).
    train_data
        An iterable of ``(inputs, targets)`` batches (a list, a DataLoader) or one ``(inputs, targets)``
        pair. The Hessian averages over all of it; ``epsilon`` is the standard deviation of the
        per-minibatch loss (a single pair is cut into shuffled minibatches of ``epsilon_batch_size``).
    evaluate
        ``evaluate(model) -> float``, higher is better (e.g. test accuracy); it must use the model it is
        given, on the model's device.
    sparsities
        The fractions removed at which the score is measured (default: the rule's grid).
    device
        Where to work (default: the model's device; another device works on a copy of the model).
    progress
        tqdm bars on the long steps (default: on in interactive use, off under pytest and book builds).
    rule, tolerance, grid_step
        The actual-limit rule of :func:`~pruninglab.limits.pruning_limit.actual_pruning_limit`:
        ``"strict"`` (the paper's code: the largest ``p`` on a ``grid_step`` grid whose score is strictly
        above dense) or ``"at_least_bisect"`` (``>=`` dense, coarse grid plus bisection).
    max_hvp, max_evaluations
        The budget for large models: at most ``max_hvp`` Hessian-vector products in all (each is about
        two passes over ``train_data``; spent on the spectrum first, then the top eigenvalues, the trace
        and the per-layer eigenvalues) and at most ``max_evaluations`` scores in the sweep.
    hessian_data, hessian_params
        Data for the Hessian if not ``train_data`` (e.g. a subset), and the parameters it is taken over
        (default :func:`pruninglab.sharpness.hessian_parameters`: all but normalisation layers').
    top_k, max_iter, tol, spectrum_steps, spectrum_probes, trace_samples, layer_eigenvalues, layer_max_iter
        The estimators' settings (Lanczos, stochastic Lanczos quadrature, Hutchinson).
    seed
        Seeds the random probes and the minibatch split, so a report is reproducible.

    The spectrum that enters ``G`` is the quadrature of ``spectrum_steps`` Lanczos steps (nodes taken
    as ``|lambda|``). The top eigenvalues reuse that Lanczos run when its Ritz residuals are within
    ``tol``, and otherwise run their own Lanczos. Warnings name layers removed entirely at either limit,
    a large share of negative curvature, estimates cut short by the budget, and a strict-rule sweep in
    which no pruned model beats the dense score.

    Example
    -------
    >>> import torch, torch.nn.functional as F
    >>> import pruninglab as pl
    >>> torch.manual_seed(0); net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
    ...                                                 torch.nn.Linear(16, 3))  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(256, 8); y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.05)
    >>> for _ in range(100):
    ...     opt.zero_grad(); F.cross_entropy(net(x), y).backward(); opt.step()
    >>> def accuracy(m):
    ...     return float((m(x).argmax(1) == y).float().mean())
    >>> report = pl.limit_report(net, F.cross_entropy, (x, y), accuracy, rule="at_least_bisect")
    >>> 0 < report.predicted < 1, len(report.layers), sum(r["numel"] for r in report.layers)
    (True, 2, 176)
    """
    from ..sharpness import HessianOperator, _model_on, hessian_parameters, lanczos

    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn: expected a callable loss_fn(outputs, targets) -> scalar mean loss")
    if not callable(evaluate):
        raise ValueError("evaluate: expected a callable evaluate(model) -> float (higher is better)")
    one_of(rule, "rule", ACTUAL_LIMIT_RULES)
    tolerance = nonnegative_float(tolerance, "tolerance")
    positive_int(max_hvp, "max_hvp", allow_none=True)
    positive_int(max_evaluations, "max_evaluations", allow_none=True)
    epsilon_batch_size = positive_int(epsilon_batch_size, "epsilon_batch_size")
    top_k = positive_int(top_k, "top_k")
    max_iter = positive_int(max_iter, "max_iter")
    spectrum_steps = positive_int(spectrum_steps, "spectrum_steps")
    spectrum_probes = positive_int(spectrum_probes, "spectrum_probes")
    trace_samples = positive_int(trace_samples, "trace_samples")
    layer_max_iter = positive_int(layer_max_iter, "layer_max_iter")
    if epsilon is not None:
        epsilon = nonnegative_float(epsilon, "epsilon")
        if epsilon == 0:
            raise ValueError("epsilon: expected a positive number, got 0")
    if train_data is None:
        raise ValueError("train_data: expected an iterable of (inputs, targets) batches or one pair, got None")

    times: dict[str, float] = {}
    notes: list[str] = []
    budget = _Budget(max_hvp)
    gen = torch.Generator().manual_seed(int(seed))
    model, dev = _model_on(model, device)
    prunable = prunable_parameters(model)
    params = list(hessian_params) if hessian_params is not None else hessian_parameters(model)
    hdata = train_data if hessian_data is None else hessian_data

    # -- the loss tolerance epsilon
    t0 = time.perf_counter()
    if epsilon is None:
        epsilon = loss_noise_epsilon(model, loss_fn, _epsilon_batches(train_data, epsilon_batch_size, gen),
                                     device=dev)
    times["epsilon"] = time.perf_counter() - t0

    # -- one Hessian operator: spectrum, top eigenvalues, trace, per-layer blocks
    t0 = time.perf_counter()
    with HessianOperator(model, loss_fn, [tuple(hdata)] if _is_pair(hdata) else hdata, params, device=dev,
                         cache_graphs=cache_graphs) as op:
        steps = budget.take(min(spectrum_steps, op.dim) * spectrum_probes) // spectrum_probes
        if steps < 2:
            raise ValueError(f"max_hvp: {max_hvp} leaves fewer than 2 Lanczos steps for the spectrum; raise it")
        if steps < min(spectrum_steps, op.dim):
            notes.append(f"the spectrum used {steps} Lanczos steps (budget), not {spectrum_steps}")
        nodes, weights, runs = op._spectrum(steps, spectrum_probes, gen, progress)
        first = runs[0]
        budget.give_back(steps * spectrum_probes - sum(r.num_hvp for r in runs))
        k = min(top_k, op.dim)
        scale = max(float(first.ritz_values.abs().max()), 1e-300)
        top_converged = len(first.ritz_values) >= k and bool((first.residuals[:k] <= tol * scale).all())
        top = first.ritz_values[:k]
        if not top_converged:
            want = budget.take(max(min(max_iter, op.dim), k))
            if want >= k:
                res = lanczos(op, k, num_steps=want, tol=tol, generator=gen, progress=progress)
                budget.give_back(want - res.num_hvp)
                top, top_converged = res.ritz_values[:k], res.converged
            else:
                budget.give_back(want)
        if not top_converged:
            notes.append(f"the top {k} eigenvalues did not converge to tol={tol:g} within the budget "
                         "(they are lower bounds)")
        n_trace = budget.take(trace_samples)
        per_param: dict[str, tuple[float, float]] = {}
        if n_trace >= 2:
            tr = op.trace(n_trace, generator=gen, progress=progress)
            trace, trace_se, per_param = tr.trace, tr.stderr, tr.per_parameter or {}
            if n_trace < trace_samples:
                notes.append(f"the trace used {n_trace} Hutchinson probes (budget), not {trace_samples}")
        else:
            budget.give_back(n_trace)
            trace = float((weights * nodes).sum()) * op.dim
            trace_se = float("nan")
            notes.append("no budget left for Hutchinson's trace; the trace is the quadrature's estimate, "
                         "without per-layer traces")
        layer_top: dict[str, float | None] = {}
        if layer_eigenvalues:
            skipped = []
            for name in prunable:
                if name not in op.names:
                    continue
                blk = op.block([name])
                want = budget.take(min(layer_max_iter, blk.dim))
                if want < 1:
                    skipped.append(name)
                    layer_top[name] = None
                    continue
                res = lanczos(blk, 1, num_steps=want, tol=tol, generator=gen, progress=progress)
                budget.give_back(want - res.num_hvp)
                layer_top[name] = float(res.ritz_values[0])
                if not res.converged:
                    notes.append(f"layer {name}: the block's top eigenvalue did not converge within "
                                 f"{want} Lanczos steps")
            if skipped:
                notes.append(f"no budget left for the top block eigenvalue of {len(skipped)} layer(s)")
        num_hvp, hessian_dim = op.num_hvp, op.dim
    times["hessian"] = time.perf_counter() - t0

    top_eigenvalues = [float(v) for v in top]
    lam_max = max(top_eigenvalues[0], float(nodes.max())) if top_eigenvalues else float(nodes.max())
    negative_share = float(weights[nodes < -NEGATIVE_RELATIVE * abs(lam_max)].sum())

    # -- the prediction p* = G(R(p*))
    t0 = time.perf_counter()
    weights_named = {n: p.detach() for n, p in prunable.items()}
    radius = MagnitudeRadius(weights_named)
    ws = width_spectrum((nodes, weights), hessian_dim=hessian_dim)
    pred = predicted_pruning_limit(radius, ws, epsilon)
    grid = [i / 100 for i in range(100)]
    g = width_curve(radius, ws, epsilon, grid)
    times["predicted"] = time.perf_counter() - t0

    # -- the actual limit
    t0 = time.perf_counter()
    actual = actual_pruning_limit(model, evaluate, rule=rule, tolerance=tolerance, grid_step=grid_step,
                                  fractions=sparsities, max_evaluations=max_evaluations,
                                  params=list(prunable), progress=progress)
    times["actual"] = time.perf_counter() - t0
    seen: dict[float, float] = {}
    for p, s in actual.evaluations:
        seen.setdefault(p, s)
    curve = sorted(seen.items())

    # -- per layer
    scores = {n: t.abs() for n, t in weights_named.items()}

    def kept(p: float) -> dict[str, float]:
        masks = lowest_score_masks(scores, radius.num_removed(p))
        return {n: float(m.float().mean()) for n, m in masks.items()}

    kept_pred, kept_act = kept(pred.removed), kept(actual.removed)
    layers = []
    for name, w in weights_named.items():
        tr_l, se_l = per_param.get(name, (float("nan"), float("nan")))
        layers.append({
            "name": name, "shape": list(w.shape), "numel": w.numel(),
            "kept_at_predicted": kept_pred[name], "kept_at_actual": kept_act[name],
            "top_eigenvalue": layer_top.get(name), "trace": tr_l, "trace_stderr": se_l,
            "trace_per_weight": tr_l / w.numel(),
        })

    # -- warnings
    for label, kept_at in (("the predicted limit", kept_pred), ("the actual limit", kept_act)):
        gone = [n for n, f in kept_at.items() if f == 0.0]
        if gone:
            notes.append(f"layer collapse at {label}: {', '.join(gone)} would be removed entirely, "
                         "which disconnects the network")
    if negative_share > 0.05:
        notes.append(f"{negative_share:.0%} of the Hessian's spectral mass lies at negative eigenvalues: the weights "
                     "are not at a minimum of the smooth training loss (common after SGD, and after an l1 penalty "
                     "whose minimum is a kink); G takes each as |lambda|")
    if rule in ("strict", ">") and actual.removed == 0.0:
        notes.append("no pruned model scored strictly above the dense model, so the strict rule gives 0; "
                     "rule='at_least_bisect' or a tolerance counts scores equal to dense as good")
    if pred.removed >= 1.0:
        notes.append("the prediction removes every weight: G stays at 1 (flat spectrum or zero weights)")

    return LimitReport(
        predicted=pred.removed, actual=actual.removed, epsilon=float(epsilon), top_eigenvalues=top_eigenvalues,
        trace=float(trace), trace_stderr=float(trace_se), curve=curve, layers=layers, warnings=notes,
        dense_score=actual.dense_score, rule=rule, tolerance=float(tolerance), grid_step=actual.grid_step,
        actual_bracket=tuple(actual.bracket), radius_at_predicted=pred.radius, hessian_dim=hessian_dim,
        num_weights=radius.num_weights, negative_share=negative_share,
        width_curve=[(p, float(v)) for p, v in zip(grid, g)], spectrum=ws.description, num_hvp=num_hvp,
        num_evaluations=len(actual.evaluations), device=str(dev), seconds=times,
    )
