"""Meta-SparseINR (Lee et al. 2021): meta-learned sparse SIREN initialisations, and its baselines.

Defined in book/meta_sparse_inr.md.

The algorithm: meta-learn a dense SIREN with MAML (:mod:`pruninglab.inr.meta`), then repeat: prune
``floor(rate * n)`` of the ``n`` surviving weights globally by magnitude, and continue MAML with the
masks fixed (one Adam optimizer whose state carries across rounds, no rewinding). A new signal is
fitted from ``(theta_r, m_r)`` by 100 Adam steps (lr 1e-4) with the mask fixed (``eval_mode="adam"``),
or by the official code's few-step mode, 2 plain SGD steps at 1e-2 (``eval_mode="sgd2"``). Like the
official code, each pruning round starts a fresh outer Adam (``fresh_optimizer_each_round=True`` in
:func:`meta_sparse_rounds` and :func:`round_optimizer`); ``False`` carries the Adam state across rounds.

Baselines, as the official code defines them:

- **Random Pruning**: the same rounds from the same dense meta-init, but a random ``floor(rate*n)``
  of the survivors is removed each round (:func:`prune_round` with ``method="random"``).
- **Dense-Narrow**: dense SIRENs of reduced width (:func:`pruninglab.inr.siren.narrow_width`),
  meta-learned from scratch with the same MAML settings.
- **MAML+OneShot**: per test signal, from the *dense* meta-init, Adam steps with one global magnitude
  prune straight to the target count after half of the steps (:func:`oneshot_schedule`).
- **MAML+IMP**: per test signal, from the dense meta-init, ``i`` prunes of ``rate`` spread evenly over
  the Adam steps (:func:`imp_schedule`), no rewinding.
- **Scratch**: a randomly initialised dense SIREN of each Dense-Narrow width, fitted by the same Adam
  steps.

Test-time fitting (:func:`fit_signals`) runs all test signals at once: ``vmap(grad(loss))`` over the
signals and Adam written out on tensors with a leading signal axis (the same update as
``torch.optim.Adam``, checked in the tests), so one signal's masks may differ from another's (OneShot
and IMP prune each signal separately).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.func import grad, vmap

from .._checks import one_of
from ..masks import check_masks, count_kept, ones_masks
from ..pruners.magnitude import lowest_score_masks
from .meta import KeepMasked, MetaObjective, signal_loss

__all__ = [
    "psnr",
    "mean_psnr",
    "FitResult",
    "EVAL_MODES",
    "fit_signals",
    "prune_round",
    "round_optimizer",
    "meta_sparse_rounds",
    "oneshot_schedule",
    "imp_schedule",
    "meta_train",
]

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- PSNR


def psnr(mse: torch.Tensor | float) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for signals in [0, 1]: ``-10 log10(MSE)``.

    Defined in book/meta_sparse_inr.md. Computed on the unclipped network output, as in the paper.
    """
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return -10.0 * torch.log10(mse)


def mean_psnr(mse_per_signal: torch.Tensor) -> float:
    """The paper's figure: the mean over signals of each signal's PSNR (not the PSNR of the mean MSE).
    """
    return float(psnr(mse_per_signal).mean())


# --------------------------------------------------------------------------- test-time fitting


#: Test-time protocols: name -> (optimizer, default steps, default learning rate).
#: ``"adam"``: a fresh Adam, 100 steps at 1e-4 (the paper's figures). ``"sgd2"``: 2 plain SGD
#: steps at 1e-2, the official code's few-step mode (the meta-training inner loop).
EVAL_MODES: dict[str, tuple[str, int, float]] = {"adam": ("adam", 100, 1e-4), "sgd2": ("sgd", 2, 1e-2)}


@dataclass
class FitResult:
    """What :func:`fit_signals` returns: per-signal MSE after the last step, predictions, final masks."""

    mse: torch.Tensor  # (B,) float64
    predictions: torch.Tensor | None  # (B, N, C) or None
    masks: dict[str, torch.Tensor]  # per-signal masks (B, ...) after the last step
    kept: list[int]  # weights kept per signal

    @property
    def psnr(self) -> torch.Tensor:
        return psnr(self.mse)

    @property
    def mean_psnr(self) -> float:
        return mean_psnr(self.mse)


def _prune_each(params: Params, masks: Params, keep: int) -> Params:
    """Per-signal global magnitude pruning to exactly ``keep`` surviving weights."""
    batch = next(iter(masks.values())).shape[0]
    new: dict[str, list[torch.Tensor]] = {n: [] for n in masks}
    for b in range(batch):
        mb = {n: m[b] for n, m in masks.items()}
        alive = count_kept(mb)
        if keep > alive:
            raise ValueError(f"prune_at: asks to keep {keep} weights but only {alive} are left")
        scores = {n: params[n][b].detach().abs() for n in masks}
        out = lowest_score_masks(scores, alive - keep, mb)
        for n in masks:
            new[n].append(out[n])
    return {n: torch.stack(v) for n, v in new.items()}


def fit_signals(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    coords: torch.Tensor,
    signals: torch.Tensor,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    steps: int | None = None,
    lr: float | None = None,
    eval_mode: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    prune_at: Mapping[int, int] | None = None,
    batched_params: bool = False,
    chunk: int | None = None,
    keep_predictions: bool = False,
) -> FitResult:
    """Fit every signal of ``signals (B, N, C)`` from ``params`` with its own fresh optimizer; return the final MSEs.

    Defined in book/meta_sparse_inr.md.

    ``eval_mode`` picks the test-time protocol (see :data:`EVAL_MODES`): ``"adam"``, a fresh Adam
    (default 100 steps at lr 1e-4, the paper's figures), or ``"sgd2"``, plain SGD (default 2 steps at
    lr 1e-2, the official code's few-step mode, the same update as the MAML inner loop). ``steps``
    and ``lr`` left at ``None`` take the mode's values; given explicitly, they override them.

    All biases and the surviving weights train; ``masks`` (bool, weights only, shared by all
    signals) stay fixed. ``prune_at = {step: keep}`` prunes each signal's weights by magnitude to
    exactly ``keep`` survivors right after Adam step ``step`` (1-based), as MAML+OneShot and
    MAML+IMP do; pruned entries are set to zero after every step. ``batched_params=True`` means
    ``params`` already has a leading signal axis (Scratch: one random init per signal). ``chunk``
    fits that many signals at a time (memory). The MSE is measured on the unclipped output after
    the last step.
    """
    if not isinstance(signals, torch.Tensor) or signals.dim() != 3 or signals.shape[0] == 0:
        raise ValueError(f"signals: expected a non-empty tensor (batch, N, C), got shape {tuple(getattr(signals, 'shape', ()))}")
    one_of(eval_mode, "eval_mode", EVAL_MODES)
    optimizer, default_steps, default_lr = EVAL_MODES[eval_mode]
    steps = default_steps if steps is None else steps
    lr = default_lr if lr is None else lr
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive number, got {lr!r}")
    prune_at = dict(prune_at or {})
    for s, k in prune_at.items():
        if isinstance(s, bool) or int(s) != s or not 1 <= s <= steps:
            raise ValueError(f"prune_at: step {s!r} is outside 1..{steps}")
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f"prune_at: keep count {k!r} for step {s} is not a non-negative integer")
    total = signals.shape[0]
    if chunk is None:
        chunk = total
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk: expected a positive integer or None, got {chunk!r}")
    names = list(params)
    if masks is None:
        # All weights kept (biases are never masked); needed to count weights and to prune.
        masks = {n: torch.ones(params[n].shape[1:] if batched_params else params[n].shape, dtype=torch.bool,
                               device=params[n].device)
                 for n in names if n.endswith("weight")}
    elif not batched_params:
        check_masks(dict(params), masks)

    mses, preds, kept = [], [], []
    final_masks: dict[str, list[torch.Tensor]] = {n: [] for n in masks}
    for start in range(0, total, int(chunk)):
        sl = slice(start, min(total, start + int(chunk)))
        res = _fit_chunk(model, params, coords, signals[sl], masks, steps=int(steps), lr=float(lr),
                         optimizer=optimizer, betas=betas,
                         eps=eps, prune_at=prune_at, batched_params=batched_params, sl=sl,
                         keep_predictions=keep_predictions)
        mses.append(res.mse)
        if res.predictions is not None:
            preds.append(res.predictions)
        kept += res.kept
        for n in final_masks:
            final_masks[n].append(res.masks[n])
    return FitResult(
        mse=torch.cat(mses),
        predictions=torch.cat(preds) if preds else None,
        masks={n: torch.cat(v) for n, v in final_masks.items()},
        kept=kept,
    )


def _fit_chunk(model, params, coords, signals, masks, *, steps, lr, optimizer, betas, eps, prune_at,
               batched_params, sl, keep_predictions) -> FitResult:
    batch = signals.shape[0]
    if batched_params:
        p = {n: t.detach()[sl].clone() for n, t in params.items()}
    else:
        p = {n: t.detach().unsqueeze(0).repeat((batch,) + (1,) * t.dim()) for n, t in params.items()}
    m = {n: t.unsqueeze(0).expand((batch,) + tuple(t.shape)).clone() for n, t in masks.items()}
    with torch.no_grad():
        for n in m:
            p[n].mul_(m[n].to(p[n].dtype))

    def loss(pp, mm, target):
        return signal_loss(model, pp, coords, target, mm)

    grads_of = vmap(grad(loss), in_dims=(0, 0, 0))
    beta1, beta2 = betas
    exp_avg = {n: torch.zeros_like(t) for n, t in p.items()}
    exp_avg_sq = {n: torch.zeros_like(t) for n, t in p.items()}
    for step in range(1, steps + 1):
        g = grads_of(p, m, signals)
        bias1 = 1.0 - beta1 ** step
        bias2_sqrt = math.sqrt(1.0 - beta2 ** step)
        with torch.no_grad():
            for n in p:
                if optimizer == "sgd":
                    p[n].add_(g[n], alpha=-lr)
                    continue
                # Adam as torch.optim.Adam computes it (same order of operations), on every signal at once.
                exp_avg[n].lerp_(g[n], 1.0 - beta1)
                exp_avg_sq[n].mul_(beta2).addcmul_(g[n], g[n], value=1.0 - beta2)
                denom = (exp_avg_sq[n].sqrt() / bias2_sqrt).add_(eps)
                p[n].addcdiv_(exp_avg[n], denom, value=-lr / bias1)
            if step in prune_at:
                m = _prune_each(p, m, int(prune_at[step]))
            for n in m:
                p[n].mul_(m[n].to(p[n].dtype))
    with torch.no_grad():
        pred = vmap(lambda pp, mm: torch.func.functional_call(
            model, {n: (t * mm[n].to(t.dtype) if n in mm else t) for n, t in pp.items()}, (coords,)))(p, m)
        mse = ((pred - signals) ** 2).flatten(1).mean(1).to(torch.float64)
    kept = [int(sum(int(mm[b].sum()) for mm in m.values())) for b in range(batch)]
    return FitResult(mse=mse, predictions=pred if keep_predictions else None, masks=m, kept=kept)


def oneshot_schedule(num_weights: int, keep: int, steps: int = 100) -> dict[int, int]:
    """MAML+OneShot: one prune straight to ``keep`` weights right after step ``steps // 2``.

    ``num_weights`` is only checked (keep must not exceed it).
    """
    if keep > num_weights:
        raise ValueError(f"keep: {keep} exceeds the {num_weights} weights of the network")
    if steps < 2:
        raise ValueError(f"steps: MAML+OneShot needs at least 2 fitting steps, got {steps}")
    return {steps // 2: int(keep)}


def imp_schedule(num_weights: int, prunes: int, steps: int = 100, rate: float = 0.2) -> dict[int, int]:
    """MAML+IMP: ``prunes`` prunes of ``floor(rate * n)`` each, right after steps ``floor(steps*k/(prunes+1))``.

    The keep counts follow the same floor recursion as the
    Meta-SparseINR rounds, so after ``i`` prunes both have exactly the same number of weights.
    """
    from .siren import pruned_counts

    if isinstance(prunes, bool) or int(prunes) != prunes or prunes < 1:
        raise ValueError(f"prunes: expected a positive integer, got {prunes!r}")
    if prunes >= steps:
        raise ValueError(f"prunes: {prunes} prunes do not fit into {steps} fitting steps")
    counts = pruned_counts(num_weights, prunes, rate)
    return {math.floor(steps * k / (prunes + 1)): counts[k] for k in range(1, prunes + 1)}


# --------------------------------------------------------------------------- meta-training rounds


@torch.no_grad()
def prune_round(objective: MetaObjective, method: str = "magnitude", rate: float = 0.2,
                generator: torch.Generator | None = None) -> int:
    """Remove ``floor(rate * n)`` of the ``n`` surviving weights of ``objective.inr``, globally; return the new count.

    ``method="magnitude"`` removes the smallest ``|w|`` (Meta-SparseINR),
    ``"random"`` a uniformly random subset of the survivors (Random Pruning; scores drawn from
    ``generator`` on the CPU so a seed gives the same masks on every device). Biases are never pruned.
    The new masks are installed and the pruned raw weights set to zero.
    """
    if method not in ("magnitude", "random"):
        raise ValueError(f"method: expected 'magnitude' or 'random', got {method!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"rate: expected a number in [0, 1), got {rate!r}")
    named = dict(objective.inr.named_parameters())
    masks = objective.masks or ones_masks(objective.inr)
    alive = count_kept(masks)
    num = math.floor(rate * alive)
    if method == "magnitude":
        scores = {n: named[n].detach().abs() for n in masks}
    else:
        scores = {n: torch.rand(named[n].shape, generator=generator).to(named[n].device) for n in masks}
    new = lowest_score_masks(scores, num, masks)
    objective.set_masks(new)
    KeepMasked().on_step_end(0, objective)
    return alive - num


def round_optimizer(objective: MetaObjective, optimizer: torch.optim.Optimizer, *,
                    fresh_optimizer_each_round: bool = True) -> torch.optim.Optimizer:
    """The outer optimizer for the next pruning round.

    ``fresh_optimizer_each_round=True`` (the official code)
    returns a new optimizer of the same class and hyperparameters (``optimizer.defaults``) over
    ``objective``'s parameters, with empty state (no moments, step count 0); ``False`` returns
    ``optimizer`` itself, so Adam's moments carry across the round.
    """
    if not isinstance(fresh_optimizer_each_round, bool):
        raise ValueError(f"fresh_optimizer_each_round: expected True or False, got {fresh_optimizer_each_round!r}")
    if not fresh_optimizer_each_round:
        return optimizer
    return type(optimizer)(objective.parameters(), **optimizer.defaults)


def meta_sparse_rounds(
    objective: MetaObjective,
    optimizer: torch.optim.Optimizer,
    signals: torch.utils.data.Dataset,
    *,
    rounds: int,
    round_steps: int,
    method: str = "magnitude",
    rate: float = 0.2,
    fresh_optimizer_each_round: bool = True,
    meta_batch: int = 3,
    seed: int = 0,
    on_round=None,
    progress: bool | None = None,
) -> torch.optim.Optimizer:
    """Run ``rounds`` pruning rounds on a meta-trained ``objective``: prune, then ``round_steps`` MAML steps.

    Defined in book/meta_sparse_inr.md. Each round removes ``floor(rate * n)`` survivors
    (:func:`prune_round`, ``method`` "magnitude" for Meta-SparseINR, "random" for Random Pruning; the
    random scores come from a generator seeded with ``seed``), takes the outer optimizer from
    :func:`round_optimizer` (fresh by default, as the official code) and meta-trains with the masks
    fixed (:func:`meta_train`, meta-batch order seeded by ``seed + round``). ``on_round(r, count,
    objective)`` is called after each round's training, e.g. to evaluate. Returns the last optimizer.
    """
    from .._checks import nonnegative_int

    rounds = nonnegative_int(rounds, "rounds")
    round_steps = nonnegative_int(round_steps, "round_steps")
    one_of(method, "method", ("magnitude", "random"))
    gen = torch.Generator().manual_seed(int(seed))
    for r in range(1, rounds + 1):
        count = prune_round(objective, method, rate, generator=gen)
        optimizer = round_optimizer(objective, optimizer, fresh_optimizer_each_round=fresh_optimizer_each_round)
        meta_train(objective, optimizer, signals, round_steps, meta_batch=meta_batch, seed=seed + r,
                   progress=progress, desc=f"{method} round {r}")
        if on_round is not None:
            on_round(r, count, objective)
    return optimizer


def meta_train(
    objective: MetaObjective,
    optimizer: torch.optim.Optimizer,
    signals: torch.utils.data.Dataset,
    steps: int,
    *,
    meta_batch: int = 3,
    seed: int = 0,
    out_dir=None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    config: Mapping | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
    log_every: int = 50,
    desc: str = "meta-train",
):
    """Run ``steps`` outer MAML steps through the shared loop :func:`pruninglab.train.train`.

    ``signals`` yields ``(signal, signal)`` pairs (see :mod:`pruninglab.data.images`); meta-batches
    of ``meta_batch`` signals are drawn by :func:`pruninglab.train.make_loader` (order fixed by the
    seed and the epoch, so a resumed run sees the same batches). The loss is the MSE of the
    post-adaptation predictions, i.e. the MAML objective; :class:`~pruninglab.inr.meta.KeepMasked`
    sets ``p = p * m`` after each step. AMP stays off: ``sin(omega0 * x)`` with ``omega0 = 200`` needs
    float32. Returns the :class:`pruninglab.train.TrainResult`.
    """
    from ..train import make_loader, train

    loader = make_loader(signals, meta_batch, seed=seed)
    return train(
        objective, _mse, loader, optimizer, steps=steps, hooks=[KeepMasked()], out_dir=out_dir,
        checkpoint_every=checkpoint_every, resume=resume, config=dict(config or {}), amp=False,
        stop_after=stop_after, progress=progress, log_every=log_every, desc=desc,
    )


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)
