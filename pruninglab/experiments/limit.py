"""``python -m pruninglab limit``: predicted vs actual pruning limit of one trained network (Zhang et al. 2024).

Defined in book/limit_experiments.md.

One run: train the model with the l1 penalty (the one shared training loop, with checkpoints and
``--resume``), measure the loss noise ``epsilon``, compute the Hessian spectrum (exact for small
models, stochastic Lanczos quadrature otherwise), solve the fixed point ``p = G(R(p))`` for the
predicted limit, and find the actual limit of global one-shot magnitude pruning without fine-tuning.

``--scale full`` is the paper's protocol (models, 200 epochs, batch 128, crop+flip, per-task learning
rate, warm-up, schedule and l1 strength, Lanczos with 128 steps (96 for AlexNet) over the whole
training set, on a GPU); ``--scale small`` runs tiny settings of the same code path on a CPU.
Notebooks call :func:`run` with :meth:`LimitConfig.small` / :meth:`LimitConfig.full`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import _checks, models, runtime
from ..sharpness import hessian_parameters
from ..data.cifar import TensorBatches, cifar_split
from ..limits.pruning_limit import (
    MagnitudeRadius,
    actual_pruning_limit,
    kinematic_band,
    loss_noise_epsilon,
    predicted_pruning_limit,
    train_with_l1,
    width_curve,
    width_spectrum,
)
from . import base
from .base import ExperimentConfig, option

PAPER_MODELS = ("fc5", "fc12", "alexnet", "vgg16", "resnet18", "resnet50")
#: The registry name (:data:`pruninglab.models.MODELS`) of each of the paper's CIFAR models.
REGISTRY_NAME = {"fc5": "fc5", "fc12": "fc12", "alexnet": "alexnet_cifar", "vgg16": "vgg16_bn_cifar",
                 "resnet18": "resnet18_cifar", "resnet50": "resnet50_cifar"}
#: How the actual limit is measured (see :class:`LimitConfig`).
LIMIT_RULES = ("strict", "at_least_bisect")
DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")
#: The dataset each of the paper's models is trained on in the paper.
PAPER_DATASET = {"fc5": "cifar10", "fc12": "cifar10", "alexnet": "cifar10", "vgg16": "cifar10",
                 "resnet18": "cifar100", "resnet50": "cifar100"}
#: The paper's per-task settings (from its public code): learning rate,
#: warm-up epochs, schedule, l1 strength, Lanczos steps, and whether the zero-eigenvalue mass is
#: estimated from Hessian rows.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    "fc5": dict(lr=0.01, warmup_epochs=0, schedule="none", l1=5e-5, lanczos_steps=128, zero_mass_rows=0,
                hessian_batch_size=1000),
    "fc12": dict(lr=0.01, warmup_epochs=0, schedule="none", l1=5e-5, lanczos_steps=128, zero_mass_rows=0,
                 hessian_batch_size=1000),
    "alexnet": dict(lr=0.01, warmup_epochs=5, schedule="multistep", milestones=(60, 120, 160), gamma=0.5,
                    l1=3e-5, lanczos_steps=96, zero_mass_rows=100, hessian_batch_size=500),
    "vgg16": dict(lr=0.01, warmup_epochs=5, schedule="none", l1=1e-4, lanczos_steps=128, zero_mass_rows=100,
                  hessian_batch_size=500),
    "resnet18": dict(lr=0.1, warmup_epochs=5, schedule="cosine", l1=5e-5, lanczos_steps=128, zero_mass_rows=100,
                     hessian_batch_size=250),
    "resnet50": dict(lr=0.1, warmup_epochs=5, schedule="cosine", l1=2e-5, lanczos_steps=128, zero_mass_rows=100,
                     hessian_batch_size=250),
}
# TinyImageNet (the paper's two other tasks: ResNet18 and ResNet50): its settings are not in the text or
# code available to us [R]; the presets reuse the same network's CIFAR-100 settings above, the CIFAR
# stem (3x3 stride-1 conv, no max-pool; 64x64 images end in 8x8 maps) and crop (pad 4) + flip.
# (hessian_batch_size is ours, not the paper's: the chunk of training images per double-backward pass,
# sized so that the second-order graph of a conv net fits in GPU memory; it does not change the Hessian.)


@dataclass(frozen=True)
class LimitConfig(ExperimentConfig):
    """Everything one limit run depends on. Defined in book/limit_experiments.md.

    ``model``: one of :data:`PAPER_MODELS` or ``"mlp-H1-H2-..."`` (hidden widths of a ReLU MLP on the
    flattened input). ``dataset``: ``digits`` (scikit-learn, bundled), ``cifar10`` or ``cifar100``
    (a local torchvision-format folder). ``spectrum``: ``"exact"`` (dense Hessian, small models) or
    ``"slq"`` (stochastic Lanczos quadrature with ``lanczos_steps`` steps and ``slq_probes`` probes).
    ``zero_mass_rows > 0`` follows the paper's code for its conv nets: of that many Hessian rows (at
    weights spread over the magnitude percentiles) the share that is exactly zero is added to the
    spectrum as a mass of zero eigenvalues (:func:`pruninglab.limits.pruning_limit.width_spectrum`).
    ``report_tolerances`` adds the actual limit at those accuracy drops to the metrics.
    """

    model: str = option("mlp-32-32", "fc5, fc12, alexnet, vgg16, resnet18, resnet50 (the paper's) or mlp-H1-H2-...")
    dataset: str = option("digits", "digits (bundled), cifar10, cifar100 or tinyimagenet (a folder given by "
                                    "--data; tinyimagenet with resnet18/resnet50: settings [R]); "
                                    "default: the model's dataset in the paper")
    l1: float = option(1e-4, "[P] l1 strength (per task in the full preset)")
    lr: float = option(0.05, "[P] learning rate (per task in the full preset)")
    momentum: float = option(0.9, "[R] SGD momentum")
    epochs: int = option(300, "[P] epochs (200 in the full preset)")
    batch_size: int = option(64, "[P] batch size (128 in the full preset)")
    warmup_epochs: int = option(0, "[P] linear warm-up epochs (per task)")
    schedule: str = option("none", "[P] learning-rate schedule: none | multistep | cosine (per task)")
    schedule_unit: str = option("epoch", "epoch: warm-up, milestones and cosine length count epochs (converted "
                                         "to iterations; the intended schedule); iteration: the same numbers "
                                         "count iterations, as the paper's code steps its epoch-based "
                                         "schedulers every iteration")
    milestones: tuple[int, ...] = option((), "[P] multistep milestones")
    gamma: float = option(0.5, "[P] multistep factor")
    augment: bool = option(False, "[P] random crop + flip (CIFAR)")
    train_samples: int | None = option(None, "training images (default: the whole training split)")
    test_samples: int | None = option(None, "test images (default: the whole test split)")
    spectrum: str = option("slq", "exact (dense Hessian, small models) or slq (stochastic Lanczos quadrature)")
    lanczos_steps: int = option(128, "[P] Lanczos steps (96 for AlexNet)")
    slq_probes: int = option(1, "[P] SLQ probe vectors")
    hessian_samples: int | None = option(None, "[P] Hessian images (default: the whole non-augmented split)")
    hessian_batch_size: int = option(2000, "[R] images per double-backward chunk (memory only)")
    zero_mass_rows: int = option(0, "[P] Hessian rows sampled for the zero-eigenvalue share (conv nets: 100)")
    compare_exact: bool = option(False, "with slq: also predict from the exact Hessian (small models only)")
    epsilon_batch_size: int = option(64, "[P] batch size of the loss-noise epsilon (the training batch)")
    limit_rule: str = option("at_least_bisect",
                             "actual limit: strict (largest p on the grid with accuracy strictly above dense "
                             "- tolerance, the paper's code) or at_least_bisect (>= dense - tolerance, coarse "
                             "grid + bisection)")
    limit_grid_step: float = option(1e-3, "[P] strict rule: grid step of p (0.001 in the paper's code)")
    grid: int = option(20, "at_least_bisect: coarse grid points before bisection")
    resolution: float = option(1e-3, "at_least_bisect: bisection stops at this bracket width")
    tolerance: float = option(0.0, "[P] allowed accuracy drop (0)")
    report_tolerances: tuple[float, ...] = option((0.01,), "also measure the actual limit at these drops")
    eval_every_epochs: int = option(10, "evaluate every N epochs")
    checkpoint_every_epochs: int = option(5, "checkpoint every N epochs")
    seed: int = option(0, "random seed")

    def __post_init__(self):
        _model_kind(self.model)
        _checks.one_of(self.dataset, "dataset", DATASETS)
        _checks.one_of(self.spectrum, "spectrum", ("exact", "slq"))
        _checks.one_of(self.schedule, "schedule", ("none", "multistep", "cosine"))
        _checks.one_of(self.schedule_unit, "schedule_unit", ("epoch", "iteration"))
        _checks.one_of(self.limit_rule, "limit_rule", LIMIT_RULES)
        for name in ("epochs", "batch_size", "lanczos_steps", "slq_probes", "hessian_batch_size",
                     "epsilon_batch_size", "grid", "eval_every_epochs", "checkpoint_every_epochs"):
            _checks.positive_int(getattr(self, name), name)
        for name in ("train_samples", "test_samples", "hessian_samples"):
            _checks.positive_int(getattr(self, name), name, allow_none=True)
        for name in ("warmup_epochs", "zero_mass_rows", "seed"):
            _checks.nonnegative_int(getattr(self, name), name)
        for name in ("l1", "momentum", "tolerance", "gamma"):
            _checks.nonnegative_float(getattr(self, name), name)
        _checks.positive_float(self.lr, "lr")
        _checks.finite_float(self.limit_grid_step, "limit_grid_step", low=0.0, high=0.5, low_open=True)
        _checks.finite_float(self.resolution, "resolution", low=0.0, high=0.5, low_open=True)
        for m in self.milestones:
            _checks.positive_int(m, "milestones")
        for t in self.report_tolerances:
            _checks.nonnegative_float(t, "report_tolerances")

    @classmethod
    def small(cls, model: str = "mlp-32-32", dataset: str | None = None, **overrides) -> "LimitConfig":
        """Tiny settings that run on a 2-core CPU (digits: seconds; CIFAR models: a few steps on a subset)."""
        dataset = dataset or _default_dataset(model)
        if dataset == "digits":
            base: dict[str, Any] = dict(model=model, dataset=dataset)
        else:
            paper = PAPER_SETTINGS.get(_model_kind(model), PAPER_SETTINGS["fc5"])
            base = dict(model=model, dataset=dataset, lr=paper["lr"], l1=paper["l1"], epochs=2, batch_size=64,
                        warmup_epochs=0, schedule="none", augment=True, train_samples=512, test_samples=500,
                        spectrum="slq", lanczos_steps=16, hessian_samples=256, hessian_batch_size=256,
                        epsilon_batch_size=64, grid=10, resolution=0.01, eval_every_epochs=1,
                        checkpoint_every_epochs=1)
        base.update(overrides)
        if "batch_size" in overrides and "epsilon_batch_size" not in overrides:
            base["epsilon_batch_size"] = overrides["batch_size"]  # epsilon is measured on training-size batches
        return cls(**base)

    @classmethod
    def full(cls, model: str = "fc5", dataset: str | None = None, **overrides) -> "LimitConfig":
        """The paper's protocol for the paper's models (GPU); for digits MLPs, the small setting with the exact Hessian.

        The actual limit follows the paper's code: the largest ``p`` on a 0.001 grid whose accuracy is
        strictly above dense (``limit_rule="strict"``)."""
        dataset = dataset or _default_dataset(model)
        kind = _model_kind(model)
        if dataset == "digits":
            base: dict[str, Any] = dict(model=model, dataset=dataset, spectrum="exact", limit_rule="strict")
        else:
            paper = dict(PAPER_SETTINGS.get(kind, PAPER_SETTINGS["fc5"]))
            base = dict(model=model, dataset=dataset, epochs=200, batch_size=128, augment=True,
                        spectrum="slq", slq_probes=1, hessian_samples=None,
                        epsilon_batch_size=128, limit_rule="strict", limit_grid_step=1e-3,
                        eval_every_epochs=10, checkpoint_every_epochs=1, **paper)
        base.update(overrides)
        if "batch_size" in overrides and "epsilon_batch_size" not in overrides:
            base["epsilon_batch_size"] = overrides["batch_size"]
        return cls(**base)


def _model_kind(model: str) -> str:
    if not isinstance(model, str):
        raise ValueError(f"model: expected a name such as 'fc5' or 'mlp-32-32', got {model!r}")
    if model in PAPER_MODELS:
        return model
    if model.startswith("mlp-"):
        parts = model.split("-")[1:]
        if parts and all(p.isdigit() and int(p) > 0 for p in parts):
            return "mlp"
    raise ValueError(
        f"model: expected one of {', '.join(PAPER_MODELS)} or 'mlp-H1-H2-...' (hidden widths), got {model!r}"
    )


def _default_dataset(model: str) -> str:
    kind = _model_kind(model)
    return "digits" if kind == "mlp" else PAPER_DATASET[kind]


def build_model(model: str, in_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network named ``model`` for inputs of shape ``in_shape`` (without the batch dimension).
    """
    kind = _model_kind(model)
    in_features = int(math.prod(in_shape))
    if kind == "mlp":
        hidden = [int(p) for p in model.split("-")[1:]]
        return models.build_model("fc_net", hidden=hidden, num_classes=num_classes, in_features=in_features)
    if kind in ("fc5", "fc12"):
        return models.build_model(kind, num_classes=num_classes, in_features=in_features)
    sizes = ((3, 32, 32), (3, 64, 64)) if kind in ("resnet18", "resnet50") else ((3, 32, 32),)
    if tuple(in_shape) not in sizes:
        expected = " or ".join("x".join(map(str, s)) for s in sizes)
        raise ValueError(f"model: {model} expects {expected} images; the dataset gives {tuple(in_shape)}")
    return models.build_model(REGISTRY_NAME[kind], num_classes=num_classes)




@dataclass
class _Data:
    train: TensorBatches
    test: TensorBatches
    epsilon: TensorBatches
    hessian: list
    in_shape: tuple[int, ...]
    num_classes: int


def _load_data(config: LimitConfig, data_dir: str | None, dev: torch.device) -> _Data:
    if config.dataset == "digits":
        from ..data.digits import digits_split

        split = digits_split(seed=config.seed)
        x_tr, y_tr, x_te, y_te = split.x_train, split.y_train, split.x_test, split.y_test
        if config.train_samples is not None:
            x_tr, y_tr = x_tr[: config.train_samples], y_tr[: config.train_samples]
        if config.test_samples is not None:
            x_te, y_te = x_te[: config.test_samples], y_te[: config.test_samples]
        mean = std = None
        num_classes = 10
        if config.augment:
            raise ValueError("augment: the digits are 8x8 feature vectors; crop+flip augmentation is for CIFAR")
    elif config.dataset == "tinyimagenet":
        split = _tinyimagenet(data_dir, config)
        x_tr, y_tr, x_te, y_te = split.x_train, split.y_train, split.x_test, split.y_test
        mean, std = split.mean, split.std
        num_classes = split.num_classes
    else:
        split = cifar_split(data_dir, config.dataset, train_samples=config.train_samples,
                            test_samples=config.test_samples, seed=config.seed)
        x_tr, y_tr, x_te, y_te = split.x_train, split.y_train, split.x_test, split.y_test
        mean, std = split.mean, split.std
        num_classes = split.num_classes
    kw = dict(mean=mean, std=std, device=dev)
    train = TensorBatches(x_tr, y_tr, config.batch_size, shuffle=True, augment=config.augment, seed=config.seed, **kw)
    test = TensorBatches(x_te, y_te, 1000, shuffle=False, drop_last=False, **kw)
    # The paper's code: the per-batch losses of the (augmented) training loader, in eval mode.
    eps_batches = TensorBatches(x_tr, y_tr, config.epsilon_batch_size, shuffle=True, augment=config.augment,
                                seed=config.seed + 1, **kw)
    # Hessian-vector products on fixed, non-augmented training data.
    n_h = len(x_tr) if config.hessian_samples is None else min(config.hessian_samples, len(x_tr))
    hess_src = TensorBatches(x_tr[:n_h], y_tr[:n_h], config.hessian_batch_size, shuffle=False, drop_last=False, **kw)
    hessian = [(x, y) for x, y in hess_src]
    return _Data(train, test, eps_batches, hessian, tuple(x_tr.shape[1:]), num_classes)


def _tinyimagenet(data_dir: str | None, config: LimitConfig):
    """TinyImageNet, with ``train_samples`` / ``test_samples`` drawn evenly over the classes (seeded)."""
    import dataclasses as dc

    from ..data.tinyimagenet import tinyimagenet_split, tinyimagenet_wnids

    n_classes = len(tinyimagenet_wnids(data_dir))
    per = {k: None if n is None else -(-n // n_classes)
           for k, n in (("train", config.train_samples), ("test", config.test_samples))}
    split = tinyimagenet_split(data_dir, train_per_class=per["train"], test_per_class=per["test"])
    gen = torch.Generator().manual_seed(config.seed)
    picked = {}
    for name, n in (("train", config.train_samples), ("test", config.test_samples)):
        x, y = getattr(split, f"x_{name}"), getattr(split, f"y_{name}")
        if n is not None and n < len(x):
            keep = torch.randperm(len(x), generator=gen)[:n].sort().values
            x, y = x[keep], y[keep]
        picked[f"x_{name}"], picked[f"y_{name}"] = x, y
    return dc.replace(split, **picked)


@torch.no_grad()
def _accuracy(model: nn.Module, batches: TensorBatches) -> float:
    was = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    total = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum()
        total += len(y)
    model.train(was)
    return int(correct) / total


def _lr_lambda(config: LimitConfig, steps_per_epoch: int, total_steps: int):
    """The learning-rate factor per iteration. With ``schedule_unit="epoch"`` warm-up, milestones and the
    cosine length are epochs converted to iterations; with ``"iteration"`` the same numbers count
    iterations (the paper's code steps its epoch-based schedulers every iteration)."""
    unit = steps_per_epoch if config.schedule_unit == "epoch" else 1
    warm = config.warmup_epochs * unit
    milestones = [m * unit for m in config.milestones]
    cosine_end = total_steps if config.schedule_unit == "epoch" else config.epochs

    def factor(step: int) -> float:
        f = 1.0
        if step < warm:
            f = (step + 1) / warm
        if config.schedule == "multistep":
            f *= config.gamma ** sum(step >= m for m in milestones)
        elif config.schedule == "cosine" and step >= warm:
            f *= 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, cosine_end - warm)))
        return f

    return factor


def _actual_limit(model: nn.Module, accuracy, config: LimitConfig, tolerance: float, progress,
                  rule: str | None = None):
    """The actual limit under ``rule`` (default ``config.limit_rule``): ``strict`` is the largest ``p`` on a
    grid of step ``limit_grid_step`` with accuracy strictly above dense - tolerance (the paper's code);
    ``at_least_bisect`` the coarse grid + bisection with ``>=``."""
    rule = rule or config.limit_rule
    extra = (dict(grid_step=config.limit_grid_step) if rule == "strict"
             else dict(grid=config.grid, resolution=config.resolution))
    return actual_pruning_limit(model, accuracy, tolerance=tolerance, rule=rule, progress=progress, **extra)


def _zero_mass(model: nn.Module, loss_fn, data, params: list[str], rows: int, progress: bool | None = None) -> float:
    """The paper code's zero-eigenvalue share: of ``rows`` Hessian rows, at weights spread over the
    magnitude percentiles 0..99 %, the share whose l1 norm is below 1e-7."""
    from ..masks import prunable_parameters
    from ..sharpness import hvp_operator

    prunable = prunable_parameters(model)
    with hvp_operator(model, loss_fn, data, params) as op:
        offsets, start = {}, 0
        for n, size in zip(op.names, op.sizes):
            offsets[n] = start
            start += size
        names = [n for n in prunable if n in offsets]
        mags = torch.cat([prunable[n].detach().abs().reshape(-1) for n in names])
        order = torch.argsort(mags)
        # rows = 100 gives the weights at the magnitude percentiles 0, 1, ..., 99 %.
        picks = [order[int(i * len(order) / rows)] for i in range(rows)]
        bounds = torch.tensor([0] + [prunable[n].numel() for n in names]).cumsum(0)
        zero = 0
        from tqdm.auto import tqdm

        for flat in tqdm(picks, desc="Hessian rows", disable=not runtime.progress_enabled(progress), leave=False):
            j = int(torch.searchsorted(bounds, flat, right=True)) - 1
            idx = offsets[names[j]] + int(flat) - int(bounds[j])
            e = torch.zeros(op.dim, device=op.device, dtype=op.dtype)
            e[idx] = 1
            zero += int(float(op(e).abs().sum()) < 1e-7)
    return zero / rows


def run(
    config: LimitConfig,
    *,
    data_dir: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train, then predict and measure the pruning limit; return the metrics (no file is written here).

    Defined in book/limit_experiments.md.

    ``out_dir`` receives the training log and checkpoints (``resume=True`` continues from them).
    ``stop_after`` ends training after that many steps, as a crash would; the returned dict then
    only has ``stopped_at``.
    """
    if not isinstance(config, LimitConfig):
        raise ValueError(f"config: expected a LimitConfig, got {type(config).__name__}")
    dev = runtime.device(str(device) if isinstance(device, torch.device) else device)
    runtime.seed_everything(config.seed)
    t_start = time.perf_counter()
    data = _load_data(config, data_dir, dev)
    model = build_model(config.model, data.in_shape, data.num_classes).to(dev)
    loss_fn = nn.functional.cross_entropy

    steps_per_epoch = len(data.train)
    steps = config.epochs * steps_per_epoch
    schedule = None
    if config.warmup_epochs or config.schedule != "none":
        factor = _lr_lambda(config, steps_per_epoch, steps)
        schedule = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor)  # noqa: E731
    result = train_with_l1(
        model, data.train, strength=float(config.l1), steps=steps, lr=float(config.lr), momentum=config.momentum,
        loss_fn=loss_fn, scheduler=schedule,
        evaluate=lambda m: {"test_accuracy": _accuracy(m, data.test)},
        eval_every=config.eval_every_epochs * steps_per_epoch, log_every=steps_per_epoch,
        out_dir=out_dir, checkpoint_every=config.checkpoint_every_epochs * steps_per_epoch if out_dir else None,
        resume=resume, config=dataclasses.asdict(config), progress=progress, stop_after=stop_after,
        desc=f"train {config.model}",
    )
    if result.step < steps:
        return {"stopped_at": result.step}
    t_trained = time.perf_counter()

    dense_acc = _accuracy(model, data.test)
    eps = loss_noise_epsilon(model, loss_fn, data.epsilon)

    from .. import sharpness

    params = hessian_parameters(model)
    hessian_dim = sum(dict(model.named_parameters())[n].numel() for n in params)
    gen = torch.Generator().manual_seed(config.seed)
    spectrum_stats: dict[str, float] = {}
    if config.spectrum == "exact":
        eig = sharpness.exact_hessian_eigenvalues(model, loss_fn, data.hessian, params)
        spectrum: Any = eig
        spectrum_stats = {"top_eigenvalue": float(eig[0]), "negative_share": float((eig < -1e-8).double().mean()),
                          "abs_trace": float(eig.abs().sum())}
    else:
        nodes, weights = sharpness.hessian_spectrum(model, loss_fn, data.hessian, num_steps=config.lanczos_steps,
                                                    num_probes=config.slq_probes, params=params, generator=gen,
                                                    progress=progress)
        spectrum = (nodes, weights)
        # (No negative share here: with a few Ritz nodes the zero cluster's mass lands on either side of 0.)
        spectrum_stats = {"top_eigenvalue": float(nodes.max()), "abs_trace": float((weights * nodes.abs()).sum()) * hessian_dim}
    zero_mass = 0.0
    if config.zero_mass_rows:
        zero_mass = _zero_mass(model, loss_fn, data.hessian, params, config.zero_mass_rows, progress)
    t_hessian = time.perf_counter()

    radius = MagnitudeRadius(model)
    ws = width_spectrum(spectrum, hessian_dim=hessian_dim if config.spectrum == "slq" else None, zero_mass=zero_mass)
    pred = predicted_pruning_limit(radius, ws, eps)
    extra: dict[str, Any] = {}
    if config.compare_exact and config.spectrum == "slq":
        eig = sharpness.exact_hessian_eigenvalues(model, loss_fn, data.hessian, params)
        extra["predicted_exact_spectrum"] = predicted_pruning_limit(radius, eig, eps).removed
        extra["negative_share"] = float((eig < -1e-8).double().mean())
    lower, upper = kinematic_band(radius, ws, eps)
    grid = [i / 100 for i in range(100)]
    curve = width_curve(radius, ws, eps, grid)

    def measure(tol: float):
        return _actual_limit(model, lambda m: _accuracy(m, data.test), config, tol, progress)

    actual = measure(config.tolerance)
    for tol in config.report_tolerances:
        extra[f"actual_tolerance_{tol:g}"] = measure(tol).removed
    # Both rules' answers, so a reader sees how much the rule moves the limit.
    for rule in LIMIT_RULES:
        extra[f"actual_{rule}"] = (actual.removed if rule == config.limit_rule else
                                   _actual_limit(model, lambda m: _accuracy(m, data.test), config,
                                                 config.tolerance, progress, rule=rule).removed)
    from ..masks import prunable_parameters

    prunable = list(prunable_parameters(model).values())
    small_share = sum(int((w.detach().abs() < 1e-3).sum()) for w in prunable) / radius.num_weights
    t_end = time.perf_counter()
    return {
        "model": config.model,
        "dataset": config.dataset,
        "l1": config.l1,
        "dense_accuracy": dense_acc,
        "epsilon": eps,
        "predicted": pred.removed,
        "actual": actual.removed,
        "gap": pred.removed - actual.removed,
        "radius_at_predicted": pred.radius,
        "kinematic_lower": lower.removed,
        "kinematic_upper": upper.removed,
        "hessian_dim": hessian_dim,
        "num_weights": radius.num_weights,
        "spectrum": ws.description,
        "zero_mass": zero_mass,
        **spectrum_stats,
        "actual_rule": (f"test accuracy {'>' if config.limit_rule == 'strict' else '>='} dense - "
                        f"{config.tolerance:g} ({config.limit_rule}"
                        + (f", grid step {config.limit_grid_step:g})" if config.limit_rule == "strict" else ")")),
        "small_weight_share": small_share,
        **extra,
        "actual_bracket": list(actual.bracket),
        "accuracy_curve": sorted([list(e) for e in actual.evaluations]),
        "width_curve": [[p, float(g)] for p, g in zip(grid, curve)],
        "train_steps": steps,
        "resumed_from": result.resumed_from,
        "train_s": t_trained - t_start,
        "hessian_s": t_hessian - t_trained,
        "limits_s": t_end - t_hessian,
    }


def experiment_name(config: LimitConfig, scale_name: str) -> str:
    """``limit-<model>-<dataset>`` plus the l1 strength / seed when they differ from the preset (chapter labels)."""
    name = f"limit-{config.model}-{config.dataset}"
    preset = LimitConfig.for_scale(scale_name, config.model, config.dataset)
    if config.l1 != preset.l1:
        name += f"-l1_{config.l1:g}"
    if config.seed != 0:
        name += f"-seed{config.seed}"
    return name


def _resolve_data(data: str | None, config: LimitConfig) -> str | None:
    if config.dataset == "digits":
        if data is not None:
            raise ValueError("--data: the digits are bundled with scikit-learn; expected no --data with dataset "
                             "digits (or --dataset cifar10/cifar100/tinyimagenet with its folder)")
        return None
    if data is None and os.environ.get("PRUNINGLAB_DATA"):
        data = os.environ["PRUNINGLAB_DATA"]
    if data is None:
        layout = "TinyImageNet layout" if config.dataset == "tinyimagenet" else "torchvision format"
        raise ValueError(f"--data: {config.dataset} needs its folder ({layout}); expected --data DIR "
                         "or $PRUNINGLAB_DATA")
    return data


def execute(config: LimitConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run: :func:`run` in the run folder of ``ctx``."""
    metrics = run(config, data_dir=ctx.data, out_dir=ctx.out_dir, resume=ctx.resume, device=ctx.device,
                  progress=ctx.progress, stop_after=ctx.stop_after)
    return "stopped_at" not in metrics, metrics


def _summary(m: dict) -> str:
    return (f"dense accuracy {m['dense_accuracy']:.4f}, epsilon {m['epsilon']:.3g}, predicted limit "
            f"{m['predicted']:.3f}, actual {m['actual']:.3f} (removed fractions)")


EXPERIMENT = base.Experiment(
    name="limit", config_cls=LimitConfig, execute=execute, resolve_data=_resolve_data, summarize=_summary,
    description="Train a network with l1 regularisation, then compare the predicted pruning limit "
                "(p = G(R(p)), Zhang et al. 2024) with the actual one-shot magnitude pruning limit.")


def main(argv: list[str] | None = None) -> int:
    """The ``limit`` subcommand. Defined in book/sapp_imagenet.md."""
    return base.main(EXPERIMENT, argv)


if __name__ == "__main__":
    raise SystemExit(main())
