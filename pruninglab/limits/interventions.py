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


MODELS = ("mlp", "fc5", "fc12", "vgg16", "resnet18", "resnet50")
DATASETS = ("digits", "cifar10", "cifar100")


@dataclass(frozen=True)
class MovesConfig:
    """Settings shared by the experiments of this module. Defined in book/limit_moves.md.

    ``dataset``: ``digits`` (scikit-learn, bundled) or ``cifar10``/``cifar100`` (a local folder in
    torchvision's layout, passed to :meth:`data`). ``model``: ``mlp`` (a ReLU MLP with hidden widths
    ``hidden``) or one of the paper's CIFAR networks. Training: SGD with ``momentum``, ``lr``,
    ``epochs`` over batches of ``batch_size`` (CIFAR: random crop and flip), penalty
    ``l1 * sum|theta|`` for the LOMP networks. IMP: ``imp_rounds`` rounds, each pruning ``imp_rate``
    of the surviving weights and retraining for ``retrain_epochs``. ``weight_decays``: the l2
    strengths of the l2 experiment; ``scales``: the factors of the scaling experiment;
    ``sparsities``: the removed fractions of the pruner comparison, where LOMP's network is trained
    with the stronger penalty ``lomp_l1`` (chosen for high sparsity; ``l1`` is the strength the limit
    experiments use). The spectrum is stochastic Lanczos quadrature with ``lanczos_steps`` steps over
    ``hessian_samples`` training images (``None``: all); ``epsilon`` is the standard deviation of the
    training loss over minibatches of ``batch_size``.
    """

    dataset: str = "digits"
    model: str = "mlp"
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
    hessian_samples: int | None = None
    seeds: tuple[int, ...] = (0,)

    def __post_init__(self):
        one_of(self.dataset, "dataset", DATASETS)
        one_of(self.model, "model", MODELS)
        if self.model == "mlp" and not self.hidden:
            raise ValueError("hidden: expected at least one hidden width, got ()")
        if self.dataset == "digits" and self.model != "mlp":
            raise ValueError(f"model: the digits are 8x8 feature vectors; expected 'mlp', got {self.model!r}")
        for i, h in enumerate(self.hidden):
            positive_int(h, f"hidden[{i}]")
        nonnegative_float(self.l1, "l1")
        nonnegative_float(self.lomp_l1, "lomp_l1")
        positive_float(self.lr, "lr")
        fraction(self.momentum, "momentum")
        for name in ("epochs", "batch_size", "imp_rounds", "retrain_epochs", "lanczos_steps"):
            positive_int(getattr(self, name), name)
        positive_int(self.hessian_samples, "hessian_samples", allow_none=True)
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
        """The paper's FC5 on CIFAR-10 (GPU), three seeds.

        From the paper's public code for FC5: SGD with momentum 0.9 at a constant learning rate of
        0.01, batch 128, 200 epochs, crop+flip, l1 strength 5e-5, 128 Lanczos steps over the whole
        training set. Not stated there, and chosen here: the IMP schedule (6 rounds of 30 %, 20
        epochs of retraining each), the weight decays, the retraining budget of the baselines, the
        stronger LOMP penalty for the comparison and its sparsities.
        """
        base: dict[str, Any] = dict(dataset="cifar10", model="fc5", lr=0.01, l1=5e-5, epochs=200,
                                    batch_size=128, imp_rounds=6, imp_rate=0.3, retrain_epochs=20,
                                    weight_decays=(0.0, 1e-4, 5e-4, 1e-3), lomp_l1=2e-4,
                                    sparsities=(0.9, 0.95, 0.98, 0.99), lanczos_steps=128,
                                    seeds=(0, 1, 2))
        base.update(overrides)
        return cls(**base)

    def data(self, seed: int = 0, data_dir: str | None = None,
             device: str | torch.device | None = None) -> "TaskData":
        """The data of this config for ``seed`` on ``device`` (default: the book's device).

        Digits: the 1,400 / 397 split of that seed. CIFAR: the folder ``data_dir`` (or
        ``$PRUNINGLAB_DATA``) in torchvision's layout.
        """
        from .. import runtime

        dev = runtime.device(str(device) if isinstance(device, torch.device) else device)
        if self.dataset == "digits":
            from ..data.digits import digits_split

            split = digits_split(seed=seed).to(dev)
            return TaskData(self, split.x_train, split.y_train, split.x_test, split.y_test,
                            None, None, 10, seed, dev)
        from ..data.cifar import cifar_split

        split = cifar_split(data_dir, self.dataset, seed=seed)
        return TaskData(self, split.x_train, split.y_train, split.x_test, split.y_test,
                        split.mean, split.std, split.num_classes, seed, dev)


@dataclass
class TaskData:
    """Train/test tensors of one task with the batching every experiment here uses.

    Digits batches come from :func:`pruninglab.train.make_loader`; CIFAR batches from
    :class:`pruninglab.data.cifar.TensorBatches` (normalised; crop+flip for training).
    """

    config: MovesConfig
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: Any
    std: Any
    num_classes: int
    seed: int
    device: torch.device

    def _batches(self, x, y, batch_size, *, shuffle, augment, seed, drop_last=True):
        from ..data.cifar import TensorBatches

        return TensorBatches(x, y, batch_size, shuffle=shuffle, drop_last=drop_last, augment=augment,
                             mean=self.mean, std=self.std, seed=seed, device=self.device)

    def train_batches(self, seed_offset: int = 0):
        seed = self.seed + seed_offset
        if self.config.dataset == "digits":
            from ..train import make_loader

            dataset = torch.utils.data.TensorDataset(self.x_train, self.y_train)
            return make_loader(dataset, self.config.batch_size, seed=seed)
        return self._batches(self.x_train, self.y_train, self.config.batch_size, shuffle=True,
                             augment=True, seed=seed)

    def hessian_batches(self) -> list:
        n = self.config.hessian_samples or len(self.x_train)
        if self.config.dataset == "digits":
            return [(self.x_train[:n], self.y_train[:n])]
        return list(self._batches(self.x_train[:n], self.y_train[:n], 500, shuffle=False,
                                  augment=False, seed=0, drop_last=False))

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        if self.config.dataset == "digits":
            from ..data.digits import accuracy

            return accuracy(model, self.x_test, self.y_test)
        was = model.training
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for x, y in self._batches(self.x_test, self.y_test, 1000, shuffle=False, augment=False,
                                  seed=0, drop_last=False):
            correct += (model(x).argmax(1) == y).sum()
        model.train(was)
        return int(correct) / len(self.y_test)


def build_network(config: MovesConfig, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """The network of ``config`` with the initialisation of ``seed``."""
    from .. import models

    torch.manual_seed(seed)
    if config.model == "mlp":
        in_features = 64 if config.dataset == "digits" else 3 * 32 * 32
        return models.fc_net(list(config.hidden), num_classes, in_features)
    if config.model in ("fc5", "fc12"):
        return getattr(models, config.model)(num_classes)
    if config.model == "vgg16":
        return models.vgg16_bn_cifar(num_classes)
    return getattr(models, f"{config.model}_cifar")(num_classes)


def train_network(
    config: MovesConfig,
    data: TaskData,
    *,
    l1: float = 0.0,
    weight_decay: float = 0.0,
    model: nn.Module | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    epochs: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """Train (or, with ``model`` and ``masks``, retrain) the config's network; returns the model.

    Defined in book/limit_moves.md. SGD with momentum through :func:`pruninglab.train.train`, with
    the l1 penalty hook of the paper's training (``l1``, all parameters) and coupled l2 weight decay
    (``weight_decay``, SGD's own). With ``masks`` the pruned weights stay exactly zero.
    """
    from ..train import l1_penalty, train

    nonnegative_float(l1, "l1")
    nonnegative_float(weight_decay, "weight_decay")
    epochs = config.epochs if epochs is None else positive_int(epochs, "epochs")
    if model is None:
        model = build_network(config, data.num_classes, seed).to(data.device)
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


def _width_and_epsilon(model: nn.Module, data: TaskData, config: MovesConfig, seed: int):
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


def measure_limit(model: nn.Module, data: TaskData, config: MovesConfig, *,
                  seed: int = 0) -> dict[str, float]:
    """Predicted and actual pruning limit of a trained (possibly already pruned) network.

    Defined in book/limit_moves.md. Returns ``dense_accuracy``, ``epsilon``, ``predicted`` (the
    fixed point of ``p = G(R(p))`` with the SLQ spectrum over all parameters; ``None`` when
    ``epsilon`` is 0), ``actual`` (largest
    removed fraction of one-shot global magnitude pruning, no fine-tuning, whose test accuracy is
    at least the network's own unpruned accuracy: the ``"at_least_bisect"`` rule of
    :func:`actual_pruning_limit`), ``actual_strict`` (the same with "strictly above", the rule of the
    paper's code, which is 0 when no pruned network beats the dense one), ``already_removed`` (the
    share of weights that were zero before), ``top_eigenvalue``, ``abs_trace`` and
    ``weight_norm`` (l2 norm of the prunable weights).
    """
    dense = data.accuracy(model)
    ws, eps, nodes, weights = _width_and_epsilon(model, data, config, seed)
    radius = MagnitudeRadius(model)
    pred = predicted_pruning_limit(radius, ws, eps).removed if eps > 0 else None
    # The chapter's "keeps its accuracy" is >= dense. Once IMP has zeroed weights, pruning only those
    # leaves the accuracy exactly equal, so the strict rule (> dense) can report 0 below the share
    # already removed; both are kept so the two rules can be compared.
    actual = actual_pruning_limit(model, data.accuracy, rule="at_least_bisect", progress=False)
    strict = actual_pruning_limit(model, data.accuracy, rule="strict", grid_step=0.01,
                                  progress=False)
    prunable = list(prunable_parameters(model).values())
    zeros = sum(int((w == 0).sum()) for w in prunable)
    return {
        "dense_accuracy": dense,
        "epsilon": eps,
        "predicted": pred,
        "actual": actual.removed,
        "actual_rule": actual.rule,
        "actual_strict": strict.removed,
        "already_removed": zeros / radius.num_weights,
        "top_eigenvalue": float(nodes.max()),
        "abs_trace": float((weights * nodes.abs()).sum()) * ws.hessian_dim,
        "weight_norm": math.sqrt(radius.total_sq),
    }


def iterative_pruning_limits(config: MovesConfig, data: TaskData, *, seed: int = 0,
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


def l2_limits(config: MovesConfig, data: TaskData, *, seed: int = 0, l1: float = 0.0,
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


def scaled_limits(model: nn.Module, data: TaskData, config: MovesConfig, *,
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


def _imp_to(config: MovesConfig, data: TaskData, model: nn.Module, target: float,
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
                    data: TaskData, config: MovesConfig, seed: int = 0) -> float:
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


def compare_pruners(config: MovesConfig, data: TaskData, *, seed: int = 0,
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


def run(config: MovesConfig, *, data_dir: str | None = None,
        device: str | torch.device | None = None) -> dict[str, Any]:
    """All three experiments for every seed of ``config``; the metrics of one result.json.

    Defined in book/limit_moves.md. ``{"seeds": {seed: {"imp", "l2", "scaling", "pruners"}},
    "config": ...}``.
    """
    out: dict[str, Any] = {"config": dataclasses.asdict(config), "seeds": {}}
    for seed in config.seeds:
        data = config.data(seed, data_dir, device)
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
    "MODELS",
    "DATASETS",
    "MovesConfig",
    "TaskData",
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
