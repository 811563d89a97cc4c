"""``python -m pruninglab sapp-digits``: SA++, ACDC and block magnitude pruning of the digits MLP.

Defined in book/sapp.md.

One run = one seed: the dense MLP and every (method, block size, sparsity) of the grid, each trained
for ``steps`` steps with the paper's ImageNet schedule shape scaled to the run
(:func:`pruninglab.pruners.schedule.imagenet_phases`), SGD with momentum, weight decay on all
parameters (logits included), batch 64; the two hidden layers are pruned, the output layer stays
dense. The metrics are the test accuracies, keyed ``"<method>/B<block>/s<sparsity>"`` plus
``"dense_accuracy"``; several seeds are several runs (the chapter averages them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import _checks, runtime
from . import base
from .base import ExperimentConfig, option

#: The block pruners compared, by name.
METHOD_NAMES = ("sapp", "acdc", "magnitude")


@dataclass(frozen=True)
class SappDigitsConfig(ExperimentConfig):
    """One seed of the digits comparison. Defined in book/sapp.md."""

    steps: int = option(300, "[R] optimizer steps of every run")
    blocks: tuple[int, ...] = option((1, 4, 8), "[R] block sizes B (1: unstructured)")
    sparsities: tuple[float, ...] = option((0.8, 0.9, 0.95, 0.98, 0.99), "[R] block sparsities of the hidden layers")
    methods: tuple[str, ...] = option(METHOD_NAMES, "methods: sapp, acdc, magnitude")
    sizes: tuple[int, ...] = option((64, 256, 256, 10), "[R] MLP layer sizes")
    pruned_layers: tuple[str, ...] = option(("0", "2"), "[R] the pruned layers (the hidden ones)")
    lr: float = option(0.1, "[R] SGD learning rate")
    momentum: float = option(0.9, "[R] SGD momentum")
    weight_decay: float = option(5e-4, "[R] weight decay on all parameters (SA++ logits included)")
    batch_size: int = option(64, "[R] batch size")
    seed: int = option(0, "random seed (one run per seed)")

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            _checks.positive_int(getattr(self, name), name)
        _checks.nonnegative_int(self.seed, "seed")
        for b in self.blocks:
            _checks.positive_int(b, "blocks")
        for s in self.sparsities:
            _checks.fraction(s, "sparsities")
        for m in self.methods:
            _checks.one_of(m, "methods", METHOD_NAMES)
        _checks.positive_float(self.lr, "lr")
        _checks.nonnegative_float(self.momentum, "momentum")
        _checks.nonnegative_float(self.weight_decay, "weight_decay")

    @classmethod
    def full(cls, **overrides) -> "SappDigitsConfig":
        """The same experiment with more steps and sparsities (the paper's own settings are the ImageNet
        and Criteo experiments)."""
        base_ = dict(steps=2000, sparsities=(0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995))
        return cls(**{**base_, **overrides})


def key(method: str, block: int, sparsity: float) -> str:
    """The metric name of one setting, e.g. ``"sapp/B4/s0.9"``."""
    return f"{method}/B{block}/s{sparsity:g}"


def train_one(config: SappDigitsConfig, method: str, block: int, sparsity: float, data, dev) -> float:
    """Train the digits MLP with one pruner (``"dense"``: none); return the finalized model's test accuracy."""
    from ..data.digits import accuracy
    from ..models import mlp
    from ..pruners.acdc import ACDCPruner, BlockMagnitudePruner
    from ..pruners.schedule import imagenet_phases, kept_blocks
    from ..pruners.sequential_attention import SequentialAttentionPruner
    from ..train import make_loader, train

    pruners = {"sapp": SequentialAttentionPruner, "acdc": ACDCPruner, "magnitude": BlockMagnitudePruner}
    runtime.seed_everything(config.seed)
    model = mlp(config.sizes).to(dev)
    hooks = []
    if method != "dense":
        hooks = [pruners[method](model, sparsity=sparsity, block_size=block,
                                 phases=imagenet_phases(config.steps, method), layers=list(config.pruned_layers))]
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    train(model, nn.functional.cross_entropy, make_loader(data.train_dataset(), config.batch_size, seed=config.seed),
          optimizer, steps=config.steps, hooks=hooks, progress=False)
    if hooks:
        masks = hooks[0].finalize()
        for name, m in masks.items():  # exact block counts in every run
            lay = hooks[0].layouts[name]
            if int(m.sum()) != kept_blocks(lay.num_blocks, sparsity) * block * block:
                raise RuntimeError(f"{method} B={block} s={sparsity}: {name} kept {int(m.sum())} weights")
    return accuracy(model, data.x_test, data.y_test)


def run(config: SappDigitsConfig, *, device: str | torch.device | None = None) -> dict:
    """Every setting of ``config`` for its seed; return ``{"dense_accuracy", "<method>/B<b>/s<s>": accuracy}``.

    Defined in book/sapp.md.
    """
    from ..data.digits import digits_split

    if not isinstance(config, SappDigitsConfig):
        raise ValueError(f"config: expected a SappDigitsConfig, got {type(config).__name__}")
    dev = device if isinstance(device, torch.device) else runtime.device(device)
    data = digits_split().to(dev)
    metrics = {"dense_accuracy": train_one(config, "dense", 1, 0.0, data, dev)}
    for block in config.blocks:
        for method in config.methods:
            for s in config.sparsities:
                metrics[key(method, block, s)] = train_one(config, method, block, s, data, dev)
    return metrics


def execute(config: SappDigitsConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run (no checkpoints: minutes on a CPU)."""
    return True, run(config, device=ctx.device)


EXPERIMENT_SPEC = base.Experiment(
    name="sapp-digits", config_cls=SappDigitsConfig, execute=execute, data=None, resumable=False,
    summarize=lambda m: f"dense accuracy {m['dense_accuracy']:.3f}; {len(m) - 1} pruned settings",
    description="SA++ vs ACDC vs block magnitude pruning of the digits MLP (one seed per run).")


def main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab sapp-digits [--scale small|full] [--seed S]``. Defined in book/sapp_imagenet.md."""
    return base.main(EXPERIMENT_SPEC, argv)
