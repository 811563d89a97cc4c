"""What moves the pruning limit: the interventions of Zhang et al. (NeurIPS 2024), Figs. 4 and 7.

Defined in book/limit_moves.md.

The paper explains pruning heuristics through its limit ``p* = G(R(p*))``: anything that shrinks the
weights that pruning removes (smaller ``R``) or flattens the loss (larger ``G``) raises the fraction
that can be removed. This module runs the three experiments of that argument on one classifier:

- :func:`iterative_pruning_limits`: iterative magnitude pruning with retraining (IMP), and the
  limit measured after every round (the paper's Fig. 4);
- :func:`l2_limits`: training with l2 regularisation (weight decay) of growing strength, and the limit
  of each network (Fig. 4);
- :func:`scaled_limits`: a trained network's prunable weights multiplied by ``c = 2..5``, and the limit
  of each scaled copy (Fig. 7);
- :func:`compare_pruners`: accuracy at high sparsity of LOMP (l1 training + one-shot global magnitude
  pruning, no fine-tuning) against IMP, random pruning and layer-wise magnitude pruning, each of the
  last three with retraining (the paper's comparison with IMP, Rare Gems and Smart-Ratio).

Every limit is measured the same way (:func:`measure_limit`): the loss noise ``epsilon``, the
Hessian spectrum by stochastic Lanczos quadrature, the predicted limit from
:func:`~pruninglab.limits.pruning_limit.predicted_pruning_limit` and the actual limit of one-shot
global magnitude pruning from :func:`~pruninglab.limits.pruning_limit.actual_pruning_limit`.
Training goes through :func:`pruninglab.train.train`; pruning uses
:mod:`pruninglab.pruners.magnitude`. ``p`` is always the fraction of prunable weights **removed**.

Example::

    from pruninglab.limits.interventions import MovesConfig, scaled_limits, train_network
    config = MovesConfig.small()
    data = config.data()
    model = train_network(config, data, l1=config.l1)
    rows = scaled_limits(model, data, config, factors=(1.0, 2.0))
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .._checks import fraction, nonnegative_float, one_of, positive_float, positive_int
from ..masks import FixedMasks, apply_masks, prunable_parameters
from ..pruners.magnitude import global_magnitude_masks, layerwise_magnitude_masks, random_masks
from .pruning_limit import (
    MagnitudeRadius,
    actual_pruning_limit,
    loss_noise_epsilon,
    predicted_pruning_limit,
    width_spectrum,
)

PRUNERS = ("lomp", "one-shot", "imp", "random", "layerwise")


@dataclass(frozen=True)
class MovesConfig:
    """Settings shared by the experiments of this module. Defined in book/limit_moves.md.

    ``hidden``: hidden widths of the ReLU MLP (digits: 64 inputs, 10 classes). Training: SGD with
    ``momentum``, ``lr``, ``epochs`` over batches of ``batch_size``, penalty ``l1 * sum|theta|`` for
    the LOMP networks. IMP: ``imp_rounds`` rounds, each pruning ``imp_rate`` of the surviving weights
    and retraining for ``retrain_epochs``. ``weight_decays``: the l2 strengths of the l2 experiment;
    ``scales``: the factors of the scaling experiment; ``sparsities``: the removed fractions of the
    pruner comparison, where LOMP's network is trained with the stronger penalty ``lomp_l1`` (chosen
    for high sparsity; ``l1`` is the strength the limit experiments use). The spectrum is stochastic Lanczos quadrature with ``lanczos_steps`` steps
    over the whole training split; ``epsilon`` is the standard deviation of the training loss over
    minibatches of ``batch_size``.
    """

    hidden: tuple[int, ...] = (32, 32)
    l1: float = 1e-4
    lr: float = 0.1
    momentum: float = 0.9
    epochs: int = 100
    batch_size: int = 128
    imp_rounds: int = 4
    imp_rate: float = 0.4
    retrain_epochs: int = 20
    weight_decays: tuple[float, ...] = (0.0, 1e-3, 3e-3, 1e-2)
    scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98)
    lomp_l1: float = 1e-3
    lanczos_steps: int = 64
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        if not self.hidden:
            raise ValueError("hidden: expected at least one hidden width, got ()")
        for i, h in enumerate(self.hidden):
            positive_int(h, f"hidden[{i}]")
        nonnegative_float(self.l1, "l1")
        nonnegative_float(self.lomp_l1, "lomp_l1")
        positive_float(self.lr, "lr")
        fraction(self.momentum, "momentum")
        for name in ("epochs", "batch_size", "imp_rounds", "retrain_epochs", "lanczos_steps"):
            positive_int(getattr(self, name), name)
        fraction(self.imp_rate, "imp_rate", low_open=True)
        for i, wd in enumerate(self.weight_decays):
            nonnegative_float(wd, f"weight_decays[{i}]")
        for i, c in enumerate(self.scales):
            positive_float(c, f"scales[{i}]")
        for i, s in enumerate(self.sparsities):
            fraction(s, f"sparsities[{i}]", low_open=True)
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed, got ()")

    @classmethod
    def small(cls, **overrides) -> "MovesConfig":
        """The book's setting: a 64-32-32-10 MLP on scikit-learn's digits, one seed (seconds per run)."""
        return cls(**overrides)

    @classmethod
    def full(cls, **overrides) -> "MovesConfig":
        """A larger digits setting: 64-64-32-10, longer training, three seeds, more Lanczos steps.

        The paper runs these interventions on its CIFAR networks; here the same code runs at a scale a
        CPU finishes in about an hour, with seeds for mean and spread.
        """
        base: dict[str, Any] = dict(hidden=(64, 32), epochs=300, retrain_epochs=60, imp_rounds=6,
                                    imp_rate=0.3, lanczos_steps=128, seeds=(0, 1, 2),
                                    sparsities=(0.9, 0.95, 0.97, 0.98, 0.99))
        base.update(overrides)
        return cls(**base)

    def data(self, seed: int = 0) -> "DigitsData":
        """The digits split (1,400 / 397) for this seed."""
        from ..data.digits import digits_split

        return DigitsData(digits_split(seed=seed), self.batch_size, seed)


@dataclass
class DigitsData:
    """Train/test tensors with the batching every experiment here uses."""

    split: Any
    batch_size: int
    seed: int

    def train_batches(self, seed_offset: int = 0):
        from ..train import make_loader

        return make_loader(self.split.train_dataset(), self.batch_size, seed=self.seed + seed_offset)

    def hessian_batches(self) -> list:
        return [(self.split.x_train, self.split.y_train)]

    def accuracy(self, model: nn.Module) -> float:
        from ..data.digits import accuracy

        return accuracy(model, self.split.x_test, self.split.y_test)


def build_network(config: MovesConfig, seed: int = 0) -> nn.Module:
    """The ReLU MLP ``64 -> hidden -> 10`` with the initialisation of ``seed``."""
    from ..models import fc_net

    torch.manual_seed(seed)
    return fc_net(list(config.hidden), 10, 64)


def train_network(
    config: MovesConfig,
    data: DigitsData,
    *,
    l1: float = 0.0,
    weight_decay: float = 0.0,
    model: nn.Module | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Train (or, with ``model`` and ``masks``, retrain) a digits MLP; returns the model.

    Defined in book/limit_moves.md. SGD with momentum through :func:`pruninglab.train.train`, with
    the l1 penalty hook of the paper's training (``l1``, all parameters) and coupled l2 weight decay
    (``weight_decay``, SGD's own). With ``masks`` the pruned weights stay exactly zero.
    """
    from ..train import l1_penalty, train

    nonnegative_float(l1, "l1")
    nonnegative_float(weight_decay, "weight_decay")
    epochs = config.epochs if epochs is None else positive_int(epochs, "epochs")
    if model is None:
        model = build_network(config, seed)
    loader = data.train_batches(seed_offset=seed)
    hooks: list[Any] = [l1_penalty(float(l1))]
    if masks is not None:
        apply_masks(model, masks)
        hooks.append(FixedMasks(masks))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=float(weight_decay))
    train(model, nn.functional.cross_entropy, loader, optimizer, steps=epochs * len(loader),
          hooks=hooks, progress=False, log_every=10**9)
    return model


def _float64_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.double(), targets)


def _width_and_epsilon(model: nn.Module, data: DigitsData, config: MovesConfig, seed: int):
    """``(WidthSpectrum, epsilon, nodes, weights)`` of ``model`` on the training split.

    ``epsilon`` is 0.0 when the training loss is the same (in float64, typically exactly 0) on every
    minibatch: the sublevel set then has no width to measure and no prediction is made.
    """
    from ..sharpness import hessian_spectrum

    loss_fn = nn.functional.cross_entropy
    # The softmax in float64: a network with large weights fits the training set so well that
    # float32 losses round to the same value on every batch and their spread would read as 0.
    try:
        eps = loss_noise_epsilon(model, _float64_cross_entropy,
                                 data.train_batches(seed_offset=1000 + seed))
    except ValueError:
        eps = 0.0
    dim = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = hessian_spectrum(model, loss_fn, data.hessian_batches(),
                                      num_steps=config.lanczos_steps, generator=gen, progress=False)
    return width_spectrum((nodes, weights), hessian_dim=dim), eps, nodes, weights


def measure_limit(model: nn.Module, data: DigitsData, config: MovesConfig, *,
                  seed: int = 0) -> dict[str, float]:
    """Predicted and actual pruning limit of a trained (possibly already pruned) network.

    Defined in book/limit_moves.md. Returns ``dense_accuracy``, ``epsilon``, ``predicted`` (the
    fixed point of ``p = G(R(p))`` with the SLQ spectrum over all parameters; ``None`` when
    ``epsilon`` is 0), ``actual`` (largest
    removed fraction of one-shot global magnitude pruning, no fine-tuning, whose test accuracy is
    at the network's own unpruned level, by the library's default rule), ``already_removed`` (the
    share of weights that were zero before), ``top_eigenvalue``, ``abs_trace`` and
    ``weight_norm`` (l2 norm of the prunable weights).
    """
    dense = data.accuracy(model)
    ws, eps, nodes, weights = _width_and_epsilon(model, data, config, seed)
    radius = MagnitudeRadius(model)
    pred = predicted_pruning_limit(radius, ws, eps).removed if eps > 0 else None
    actual = actual_pruning_limit(model, data.accuracy, progress=False)
    prunable = list(prunable_parameters(model).values())
    zeros = sum(int((w == 0).sum()) for w in prunable)
    return {
        "dense_accuracy": dense,
        "epsilon": eps,
        "predicted": pred,
        "actual": actual.removed,
        "actual_rule": actual.rule,
        "already_removed": zeros / radius.num_weights,
        "top_eigenvalue": float(nodes.max()),
        "abs_trace": float((weights * nodes.abs()).sum()) * ws.hessian_dim,
        "weight_norm": math.sqrt(radius.total_sq),
    }


def iterative_pruning_limits(config: MovesConfig, data: DigitsData, *, seed: int = 0,
                             l1: float | None = None,
                             model: nn.Module | None = None) -> list[dict[str, float]]:
    """The limit after each round of iterative magnitude pruning with retraining (Fig. 4).

    Defined in book/limit_moves.md. Round 0 is the dense network trained with ``l1`` (default: the
    config's, i.e. LOMP's training; or ``model``, already trained, which is then not modified);
    round ``r`` prunes ``imp_rate`` of the surviving weights by
    global magnitude and retrains for ``retrain_epochs`` with the same penalty and the mask fixed.
    Each row is :func:`measure_limit` plus ``round``.
    """
    l1 = config.l1 if l1 is None else nonnegative_float(l1, "l1")
    if model is None:
        model = train_network(config, data, l1=l1, seed=seed)
    else:
        model = copy.deepcopy(model)
    rows = [{"round": 0, **measure_limit(model, data, config, seed=seed)}]
    masks = None
    for r in range(1, config.imp_rounds + 1):
        target = 1.0 - (1.0 - config.imp_rate) ** r
        masks = global_magnitude_masks(model, target, masks=masks)
        train_network(config, data, l1=l1, model=model, masks=masks,
                      epochs=config.retrain_epochs, seed=seed + r)
        rows.append({"round": r, **measure_limit(model, data, config, seed=seed)})
    return rows


def l2_limits(config: MovesConfig, data: DigitsData, *, seed: int = 0, l1: float = 0.0,
              base: nn.Module | None = None) -> list[dict[str, float]]:
    """The limit of networks trained with each l2 strength in ``config.weight_decays`` (Fig. 4).

    Defined in book/limit_moves.md. Same initialisation and data order for every strength; ``l1``
    (default 0: plain training, so that only l2 acts on the weights) is added to every run.
    ``base``, if given, is the network already trained with weight decay 0 (it is measured, not
    retrained).
    """
    rows = []
    for wd in config.weight_decays:
        if wd == 0 and base is not None:
            model = base
        else:
            model = train_network(config, data, l1=l1, weight_decay=wd, seed=seed)
        rows.append({"weight_decay": wd, **measure_limit(model, data, config, seed=seed)})
    return rows


@torch.no_grad()
def scale_weights(model: nn.Module, factor: float) -> nn.Module:
    """A copy of ``model`` whose prunable (conv/linear) weights are multiplied by ``factor``.

    Defined in book/limit_moves.md. Biases are left as they are.
    """
    factor = positive_float(factor, "factor")
    scaled = copy.deepcopy(model)
    for w in prunable_parameters(scaled).values():
        w.mul_(factor)
    return scaled


def scaled_limits(model: nn.Module, data: DigitsData, config: MovesConfig, *,
                  factors: Sequence[float] | None = None, seed: int = 0) -> list[dict[str, float]]:
    """The limit of ``model`` with its weights scaled by each factor (Fig. 7).

    Defined in book/limit_moves.md. Each row is :func:`measure_limit` of the scaled copy (its own
    ``epsilon`` and spectrum) plus ``scale`` and ``predicted_magnitude_only``: the fixed point with
    the scaled weights' ``R(p)`` but the **unscaled** network's spectrum and ``epsilon``, i.e. the
    magnitude factor of the limit alone, with the sharpness factor held fixed.
    """
    factors = config.scales if factors is None else tuple(factors)
    ws, eps, _, _ = _width_and_epsilon(model, data, config, seed)
    rows = []
    for c in factors:
        scaled = scale_weights(model, c)
        fixed = predicted_pruning_limit(MagnitudeRadius(scaled), ws, eps).removed
        rows.append({"scale": float(c), "predicted_magnitude_only": fixed,
                     **measure_limit(scaled, data, config, seed=seed)})
    return rows


def _imp_to(config: MovesConfig, data: DigitsData, model: nn.Module, target: float,
            seed: int) -> nn.Module:
    """IMP from a trained plain network to total sparsity ``target`` in ``imp_rounds`` equal-rate rounds."""
    rate = 1.0 - (1.0 - target) ** (1.0 / config.imp_rounds)
    masks = None
    for r in range(1, config.imp_rounds + 1):
        total = target if r == config.imp_rounds else 1.0 - (1.0 - rate) ** r
        masks = global_magnitude_masks(model, total, masks=masks)
        train_network(config, data, model=model, masks=masks, epochs=config.retrain_epochs,
                      seed=seed + r)
    return model


def prune_and_score(pruner: str, sparsity: float, *, lomp: nn.Module, plain: nn.Module,
                    data: DigitsData, config: MovesConfig, seed: int = 0) -> float:
    """Test accuracy of one pruner at removed fraction ``sparsity``. Defined in book/limit_moves.md.

    - ``"lomp"``: the l1-trained network, one-shot global magnitude pruning, no fine-tuning;
    - ``"one-shot"``: the same on the plainly trained network (no l1, no fine-tuning);
    - ``"imp"``: the plain network, ``imp_rounds`` rounds of global magnitude pruning at a constant
      rate ending at ``sparsity``, retraining ``retrain_epochs`` after each round;
    - ``"random"``: the plain network, a uniformly random global mask, then ``retrain_epochs`` of
      retraining;
    - ``"layerwise"``: the plain network, every layer pruned to ``sparsity`` by magnitude, then
      ``retrain_epochs`` of retraining.
    The inputs are not modified.
    """
    one_of(pruner, "pruner", PRUNERS)
    sparsity = fraction(sparsity, "sparsity", low_open=True)
    source = lomp if pruner == "lomp" else plain
    model = copy.deepcopy(source)
    if pruner in ("lomp", "one-shot"):
        apply_masks(model, global_magnitude_masks(model, sparsity))
    elif pruner == "imp":
        _imp_to(config, data, model, sparsity, seed)
    else:
        if pruner == "random":
            gen = torch.Generator().manual_seed(seed)
            masks = random_masks(model, sparsity, generator=gen)
        else:
            masks = layerwise_magnitude_masks(model, sparsity)
        train_network(config, data, model=model, masks=masks, epochs=config.retrain_epochs,
                      seed=seed + 1)
    return data.accuracy(model)


def compare_pruners(config: MovesConfig, data: DigitsData, *, seed: int = 0,
                    pruners: Sequence[str] = PRUNERS, lomp: nn.Module | None = None,
                    plain: nn.Module | None = None) -> dict[str, Any]:
    """Accuracy of each pruner at each of ``config.sparsities``. Defined in book/limit_moves.md.

    ``lomp`` (trained with ``config.lomp_l1``) and ``plain`` (trained without penalty) are trained here
    unless given. Returns ``{"dense_lomp", "dense_plain", "accuracy": {pruner: [acc per
    sparsity]}}``.
    """
    for p in pruners:
        one_of(p, "pruners", PRUNERS)
    if lomp is None:
        lomp = train_network(config, data, l1=config.lomp_l1, seed=seed)
    if plain is None:
        plain = train_network(config, data, seed=seed)
    acc = {p: [prune_and_score(p, s, lomp=lomp, plain=plain, data=data, config=config, seed=seed)
               for s in config.sparsities] for p in pruners}
    return {"dense_lomp": data.accuracy(lomp), "dense_plain": data.accuracy(plain), "accuracy": acc}


def run(config: MovesConfig) -> dict[str, Any]:
    """All three experiments for every seed of ``config``; the metrics of one result.json.

    Defined in book/limit_moves.md. ``{"seeds": {seed: {"imp", "l2", "scaling", "pruners"}},
    "config": ...}``.
    """
    out: dict[str, Any] = {"config": dataclasses.asdict(config), "seeds": {}}
    for seed in config.seeds:
        data = config.data(seed)
        lomp = train_network(config, data, l1=config.l1, seed=seed)
        plain = train_network(config, data, seed=seed)
        out["seeds"][str(seed)] = {
            "imp": iterative_pruning_limits(config, data, seed=seed, model=lomp),
            "l2": l2_limits(config, data, seed=seed, base=plain),
            "scaling": scaled_limits(lomp, data, config, seed=seed),
            "pruners": compare_pruners(config, data, seed=seed, plain=plain),
        }
    return out


__all__ = [
    "PRUNERS",
    "MovesConfig",
    "DigitsData",
    "build_network",
    "train_network",
    "measure_limit",
    "iterative_pruning_limits",
    "l2_limits",
    "scale_weights",
    "scaled_limits",
    "prune_and_score",
    "compare_pruners",
    "run",
]
