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

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import runtime
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

PAPER_MODELS = ("fc5", "fc12", "alexnet", "vgg16", "resnet18", "resnet50")
DATASETS = ("digits", "cifar10", "cifar100")
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
# (hessian_batch_size is ours, not the paper's: the chunk of training images per double-backward pass,
# sized so that the second-order graph of a conv net fits in GPU memory; it does not change the Hessian.)


@dataclass(frozen=True)
class LimitConfig:
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

    model: str = "mlp-32-32"
    dataset: str = "digits"
    l1: float = 1e-4
    lr: float = 0.05
    momentum: float = 0.9
    epochs: int = 300
    batch_size: int = 64
    warmup_epochs: int = 0
    schedule: str = "none"  # none | multistep | cosine (stepped per iteration, as in the paper's code)
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    augment: bool = False
    train_samples: int | None = None  # None: the whole training split
    test_samples: int | None = None
    spectrum: str = "slq"
    lanczos_steps: int = 128
    slq_probes: int = 1
    hessian_samples: int | None = None  # None: the whole (non-augmented) training split
    hessian_batch_size: int = 2000
    zero_mass_rows: int = 0
    compare_exact: bool = False  # with spectrum="slq": also predict from the exact Hessian (small models only)
    epsilon_batch_size: int = 64
    grid: int = 20
    resolution: float = 1e-3
    rule: str = ">="
    tolerance: float = 0.0
    report_tolerances: tuple[float, ...] = (0.01,)  # also measure the actual limit at these accuracy drops
    eval_every_epochs: int = 10
    checkpoint_every_epochs: int = 5
    seed: int = 0

    def __post_init__(self):
        _model_kind(self.model)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.spectrum not in ("exact", "slq"):
            raise ValueError(f"spectrum: expected 'exact' or 'slq', got {self.spectrum!r}")
        if self.schedule not in ("none", "multistep", "cosine"):
            raise ValueError(f"schedule: expected 'none', 'multistep' or 'cosine', got {self.schedule!r}")
        for name in ("epochs", "batch_size", "lanczos_steps", "slq_probes", "hessian_batch_size",
                     "epsilon_batch_size", "grid", "eval_every_epochs", "checkpoint_every_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("train_samples", "test_samples", "hessian_samples"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive integer or None, got {v!r}")
        if not (isinstance(self.l1, (int, float)) and self.l1 >= 0):
            raise ValueError(f"l1: expected a non-negative strength, got {self.l1!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr!r}")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs: expected a non-negative integer, got {self.warmup_epochs!r}")
        if isinstance(self.zero_mass_rows, bool) or not isinstance(self.zero_mass_rows, int) or self.zero_mass_rows < 0:
            raise ValueError(f"zero_mass_rows: expected a non-negative integer, got {self.zero_mass_rows!r}")

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
        """The paper's protocol for the paper's models (GPU); for digits MLPs, the small setting with the exact Hessian."""
        dataset = dataset or _default_dataset(model)
        kind = _model_kind(model)
        if dataset == "digits":
            base: dict[str, Any] = dict(model=model, dataset=dataset, spectrum="exact")
        else:
            paper = dict(PAPER_SETTINGS.get(kind, PAPER_SETTINGS["fc5"]))
            base = dict(model=model, dataset=dataset, epochs=200, batch_size=128, augment=True,
                        spectrum="slq", slq_probes=1, hessian_samples=None,
                        epsilon_batch_size=128, grid=20, resolution=1e-3, eval_every_epochs=10,
                        checkpoint_every_epochs=1, **paper)
        base.update(overrides)
        if "batch_size" in overrides and "epsilon_batch_size" not in overrides:
            base["epsilon_batch_size"] = overrides["batch_size"]
        return cls(**base)

    @classmethod
    def for_scale(cls, scale: str, model: str, dataset: str | None = None, **overrides) -> "LimitConfig":
        return cls.full(model, dataset, **overrides) if runtime.scale(scale) == "full" else cls.small(model, dataset, **overrides)


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

    Defined in book/limit_experiments.md.
    """
    from .. import models

    kind = _model_kind(model)
    in_features = int(math.prod(in_shape))
    if kind == "mlp":
        hidden = [int(p) for p in model.split("-")[1:]]
        return models.fc_net(hidden, num_classes, in_features)
    if kind in ("fc5", "fc12"):
        return getattr(models, kind)(num_classes, in_features)
    if tuple(in_shape) != (3, 32, 32):
        raise ValueError(f"model: {model} expects 3x32x32 images; the dataset gives {tuple(in_shape)}")
    if kind == "alexnet":
        return models.AlexNetCifar(num_classes)
    if kind == "vgg16":
        return models.vgg16_bn_cifar(num_classes)
    return getattr(models, f"{kind}_cifar")(num_classes)


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def hessian_parameters(model: nn.Module) -> list[str]:
    """The parameters the Hessian is taken over: all of them except normalisation layers' (as in the paper's code).

    Defined in book/limit_experiments.md. Biases are included, so this ``D`` exceeds the number of
    prunable weights ``D_w``.
    """
    skip = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _NORM_TYPES):
            prefix = f"{mod_name}." if mod_name else ""
            skip.update(prefix + n for n, _ in mod.named_parameters(recurse=False))
    return [n for n, p in model.named_parameters() if p.requires_grad and n not in skip]


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
    warm = config.warmup_epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in config.milestones]

    def factor(step: int) -> float:
        f = 1.0
        if step < warm:
            f = (step + 1) / warm
        if config.schedule == "multistep":
            f *= config.gamma ** sum(step >= m for m in milestones)
        elif config.schedule == "cosine" and step >= warm:
            f *= 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))
        return f

    return factor


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

    actual = actual_pruning_limit(model, lambda m: _accuracy(m, data.test), tolerance=config.tolerance,
                                  rule=config.rule, grid=config.grid, resolution=config.resolution, progress=progress)
    for tol in config.report_tolerances:
        extra[f"actual_tolerance_{tol:g}"] = actual_pruning_limit(
            model, lambda m: _accuracy(m, data.test), tolerance=tol, rule=config.rule, grid=config.grid,
            resolution=config.resolution, progress=progress).removed
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
        "actual_rule": f"test accuracy {config.rule} dense - {config.tolerance:g}",
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
    """``limit-<model>-<dataset>`` plus the l1 strength / seed when they differ from the preset."""
    name = f"limit-{config.model}-{config.dataset}"
    preset = LimitConfig.for_scale(scale_name, config.model, config.dataset)
    if config.l1 != preset.l1:
        name += f"-l1_{config.l1:g}"
    if config.seed != 0:
        name += f"-seed{config.seed}"
    return name


def _parser() -> argparse.ArgumentParser:
    from ..cli import add_common_arguments

    p = argparse.ArgumentParser(
        prog="python -m pruninglab limit",
        description="Train a network with l1 regularisation, then compare the predicted pruning limit "
                    "(p = G(R(p)), Zhang et al. 2024) with the actual one-shot magnitude pruning limit.",
    )
    p.add_argument("--model", default=None,
                   help=f"{', '.join(PAPER_MODELS)} or mlp-H1-H2-... (default: mlp-32-32 on digits at small scale, fc5 at full)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="digits (bundled), cifar10 or cifar100 (a torchvision-format folder given by --data); "
                        "default: the model's dataset in the paper, digits for MLPs")
    add_common_arguments(p)
    g = p.add_argument_group("overrides of the scale's preset")
    g.add_argument("--l1", type=float, default=None, help="l1 strength")
    g.add_argument("--lr", type=float, default=None, help="learning rate")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--spectrum", choices=["exact", "slq"], default=None)
    g.add_argument("--lanczos-steps", type=int, default=None)
    g.add_argument("--slq-probes", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None)
    g.add_argument("--test-samples", type=int, default=None)
    g.add_argument("--hessian-samples", type=int, default=None)
    g.add_argument("--zero-mass-rows", type=int, default=None)
    g.add_argument("--rule", choices=[">=", ">"], default=None, help="when a pruned model counts as good")
    g.add_argument("--tolerance", type=float, default=None, help="allowed accuracy drop (default 0)")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # simulate a crash (tests)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``limit`` subcommand. Defined in book/limit_experiments.md."""
    args = _parser().parse_args(argv)
    scale_name = runtime.scale(args.scale)
    model = args.model or ("fc5" if scale_name == "full" else "mlp-32-32")
    overrides = {k: getattr(args, k) for k in ("l1", "lr", "epochs", "batch_size", "spectrum", "lanczos_steps",
                                               "slq_probes", "train_samples", "test_samples", "hessian_samples",
                                               "zero_mass_rows", "rule", "tolerance")
                 if getattr(args, k) is not None}
    overrides["seed"] = args.seed
    config = LimitConfig.for_scale(scale_name, model, args.dataset, **overrides)
    name = experiment_name(config, scale_name)
    run_dir = Path(args.out) if args.out else runtime.results_dir(name, "small").parent.parent / "runs" / f"{name}-{scale_name}"
    dev = runtime.device(args.device)
    progress = False if args.no_progress else None
    t0 = time.perf_counter()
    metrics = run(config, data_dir=args.data, out_dir=run_dir, resume=args.resume, device=dev, progress=progress,
                  stop_after=args.stop_after)
    if "stopped_at" in metrics:
        print(f"limit: stopped after step {metrics['stopped_at']}; continue with --resume (checkpoint in {run_dir})")
        return 0
    path = runtime.save_result(name, metrics, config, scale_name=scale_name, dev=dev,
                               wall_time_s=time.perf_counter() - t0,
                               out_dir=Path(args.out) if args.out else None)
    print(f"{name} [{scale_name}]: dense accuracy {metrics['dense_accuracy']:.4f}, epsilon {metrics['epsilon']:.3g}, "
          f"predicted limit {metrics['predicted']:.3f}, actual {metrics['actual']:.3f} (removed fractions)")
    print(json.dumps({"result": str(path), "predicted": round(metrics["predicted"], 4),
                      "actual": round(metrics["actual"], 4), "gap": round(metrics["gap"], 4)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
