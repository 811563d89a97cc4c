"""``python -m pruninglab limit-moves``: what moves paper 1's pruning limit (IMP, l2, weight scaling, pruners).

Defined in book/sapp_imagenet.md. One run is one seed of :class:`pruninglab.limits.interventions.MovesConfig`
(the paper reports three: run ``--seed 0``, ``--seed 1``, ``--seed 2``); its metrics are what
:func:`pruninglab.limits.interventions.run` returns for that seed.

    python -m pruninglab limit-moves                                   # small: digits MLP, minutes on a CPU
    python -m pruninglab limit-moves --scale full --data DIR --seed 1  # FC5 on CIFAR-10, a GPU job
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import _checks
from ..limits import interventions as iv
from . import base
from .base import ExperimentConfig, option

EXPERIMENT = "limit-moves"


@dataclass(frozen=True)
class LimitMovesConfig(iv.MovesConfig, ExperimentConfig):
    """:class:`~pruninglab.limits.interventions.MovesConfig` with the seed of one run (``seeds == (seed,)``)."""

    seed: int = option(0, "the seed of this run (one run per seed; the paper reports 3 seeds) [P]")

    def __post_init__(self):
        super().__post_init__()
        _checks.nonnegative_int(self.seed, "seed")
        if tuple(self.seeds) != (self.seed,):
            raise ValueError(f"seeds: one run is one seed; expected ({self.seed},) (set --seed), "
                             f"got {tuple(self.seeds)}")

    @classmethod
    def small(cls, **overrides) -> "LimitMovesConfig":
        """:meth:`MovesConfig.small` for one seed."""
        return cls._preset(iv.MovesConfig.small(), overrides)

    @classmethod
    def full(cls, **overrides) -> "LimitMovesConfig":
        """:meth:`MovesConfig.full` (the paper's FC5 on CIFAR-10) for one seed."""
        return cls._preset(iv.MovesConfig.full(), overrides)

    @classmethod
    def _preset(cls, preset: iv.MovesConfig, overrides: dict) -> "LimitMovesConfig":
        values = {**dataclasses.asdict(preset), **overrides}
        seed = values.setdefault("seed", 0)
        if "seeds" not in overrides:
            values["seeds"] = (seed,)
        return cls(**values)


def execute(config: LimitMovesConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run: every intervention for the config's seed (no checkpoints)."""
    plain = iv.MovesConfig(**{k: v for k, v in dataclasses.asdict(config).items() if k != "seed"})
    return True, iv.run(plain, data_dir=ctx.data, device=ctx.device)


def _resolve_data(data: str | None, config: LimitMovesConfig):
    import os
    from pathlib import Path

    if config.dataset == "digits":
        if data is not None:
            raise ValueError("--data: the digits are bundled with scikit-learn; expected no --data "
                             "(or --dataset cifar10/cifar100)")
        return None
    found = data or os.environ.get("PRUNINGLAB_DATA")
    if not found:
        raise ValueError(f"--data: {config.dataset} needs its folder (torchvision format); expected "
                         "--data DIR or $PRUNINGLAB_DATA")
    if not Path(found).expanduser().is_dir():
        raise FileNotFoundError(f"--data: no folder {found} (expected the {config.dataset} folder)")
    return found


def _summary(metrics: dict) -> str:
    parts = []
    for seed, res in metrics["seeds"].items():
        first, last = res["imp"][0], res["imp"][-1]
        parts.append(f"seed {seed}: IMP predicted {first['predicted']:.3f} -> {last['predicted']:.3f}, "
                     f"actual {first['actual']:.3f} -> {last['actual']:.3f}")
    return "; ".join(parts)


EXPERIMENT_SPEC = base.Experiment(
    name=EXPERIMENT, config_cls=LimitMovesConfig, execute=execute, data="path", resumable=False,
    summarize=_summary, resolve_data=_resolve_data,
    description="What moves the pruning limit: iterative pruning, l2, weight scaling, pruners compared.")


def main(argv: list[str] | None = None) -> int:
    """Command line: one seed of the interventions at the chosen scale, stored with its identity."""
    return base.main(EXPERIMENT_SPEC, argv)


if __name__ == "__main__":
    raise SystemExit(main())
