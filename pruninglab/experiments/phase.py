"""``python -m pruninglab phase``: phase-transition grids of l1 and group-l1 recovery.

Defined in book/convex_geometry.md.

Draws the empirical success probability of exact recovery over (m/d, s/d) for l1 and over
(m/d, k/G) for group-l1, next to the statistical-dimension prediction, and stores the result with
its provenance (``results/phase/<run id>/result.json`` at full scale, the git-ignored cache at small scale).
The chapter calls :func:`run` with the same config, so the notebook and the command line agree.

    python -m pruninglab phase                  # small: d = 100, a few seconds on a CPU
    python -m pruninglab phase --scale full     # d = 400, fine grids, meant for a GPU
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _checks
from ..limits.geometry import statistical_dimension_l1, statistical_dimension_l1_mc
from ..limits.phase import PhaseGrid, phase_transition_grid, predicted_transition, transition_points
from ..runtime import device as pick_device
from . import base
from .base import ExperimentConfig, option

EXPERIMENT = "phase"


@dataclass(frozen=True)
class PhaseConfig(ExperimentConfig):
    """Grid sizes of the phase-transition experiment (``small()`` for a CPU, ``full()`` for a GPU).

    Defined in book/convex_geometry.md.
    """

    d: int = option(100, "l1: ambient dimension")
    num_m: int = option(20, "l1: measurement counts m = d (i + 0.5) / num_m, i < num_m")
    s_step: float = option(0.05, "l1: sparsities s/d = 0.02 and s_step, 2 s_step, ... up to max_sparsity")
    max_sparsity: float = option(0.6, "largest sparsity s/d (and k/G) of the grids")
    trials: int = option(10, "l1: random problems per grid cell")
    group_size: int = option(4, "group-l1: entries per group (d = num_groups * group_size)")
    num_groups: int = option(25, "group-l1: number of groups")
    group_num_m: int = option(12, "group-l1: measurement counts")
    group_num_k: int = option(15, "group-l1: active-group counts k, evenly spaced in [1, max_sparsity * num_groups]")
    group_trials: int = option(10, "group-l1: random problems per grid cell")
    mc_samples: int = option(4000, "Monte-Carlo draws for the statistical-dimension check")
    success_tol: float = option(1e-4, "relative error below which a recovery counts as exact")
    which: str = option("both", "grids to run: both, l1 or group")
    cpu_threads: int | None = option(None, "torch CPU threads (1 is often faster for these small problems)")
    seed: int = option(0, "random seed")

    def __post_init__(self):
        for name in ("d", "num_m", "trials", "group_size", "num_groups", "group_num_m", "group_num_k",
                     "group_trials", "mc_samples"):
            _checks.positive_int(getattr(self, name), name)
        _checks.positive_int(self.cpu_threads, "cpu_threads", allow_none=True)
        _checks.nonnegative_int(self.seed, "seed")
        _checks.fraction(self.s_step, "s_step", low_open=True)
        _checks.fraction(self.max_sparsity, "max_sparsity", low_open=True, high_open=False)
        _checks.positive_float(self.success_tol, "success_tol")
        _checks.one_of(self.which, "which", ("both", "l1", "group"))

    @classmethod
    def full(cls, **overrides) -> "PhaseConfig":
        base_ = dict(d=400, num_m=40, s_step=0.0125, trials=50, group_size=4, num_groups=100, group_num_m=40,
                     group_num_k=30, group_trials=40, mc_samples=20000)
        return cls(**{**base_, **overrides})

    def l1_grid(self) -> tuple[list[int], list[int]]:
        """The ``(ms, ss)`` of the l1 grid."""
        ms = sorted({max(1, min(self.d - 1, round(self.d * (i + 0.5) / self.num_m))) for i in range(self.num_m)})
        fractions = [0.02] + list(np.arange(1, int(self.max_sparsity / self.s_step + 1e-9) + 1) * self.s_step)
        ss = sorted({max(1, min(self.d, int(round(f * self.d)))) for f in fractions})
        return ms, ss

    def group_grid(self) -> tuple[list[int], list[int]]:
        """The ``(ms, ks)`` of the group-l1 grid (k = number of nonzero groups)."""
        d = self.num_groups * self.group_size
        ms = sorted({max(1, min(d - 1, round(d * (i + 0.5) / self.group_num_m))) for i in range(self.group_num_m)})
        top = max(1, round(self.max_sparsity * self.num_groups))
        ks = sorted({int(round(v)) for v in np.linspace(1, top, self.group_num_k)})
        return ms, ks


def _grid_summary(grid: PhaseGrid) -> dict:
    predicted = predicted_transition(grid.d, grid.ks, grid.group_size)
    empirical = transition_points(grid)
    out = grid.to_dict()
    out["predicted_m50"] = predicted.tolist()
    out["empirical_m50"] = [None if np.isnan(v) else float(v) for v in empirical]
    return out


def run(config: PhaseConfig, *, device: torch.device | str | None = None, progress: bool | None = None,
        which: str | None = None) -> dict:
    """Run the grids (and the Monte-Carlo check) of ``config``; return the metrics dict.

    Defined in book/convex_geometry.md. ``which`` overrides ``config.which``.
    """
    which = _checks.one_of(config.which if which is None else which, "which", ("both", "l1", "group"))
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    metrics: dict = {"device": str(dev)}
    if which in ("both", "l1"):
        ms, ss = config.l1_grid()
        grid = phase_transition_grid(config.d, ms, ss, config.trials, seed=config.seed, device=dev,
                                     success_tol=config.success_tol, progress=progress)
        metrics["l1"] = _grid_summary(grid)
        gen = torch.Generator().manual_seed(config.seed)
        checks = []
        for frac in (0.05, 0.1, 0.2, 0.5):
            s = max(1, round(frac * config.d))
            mc = statistical_dimension_l1_mc(config.d, s, config.mc_samples, generator=gen, device=dev)
            checks.append({"s": s, "formula": statistical_dimension_l1(config.d, s), "mc": mc.mean,
                           "mc_stderr": mc.stderr})
        metrics["l1_mc"] = checks
    if which in ("both", "group"):
        ms, ks = config.group_grid()
        grid = phase_transition_grid(config.num_groups * config.group_size, ms, ks, config.group_trials,
                                     group_size=config.group_size, seed=config.seed + 1, device=dev,
                                     success_tol=config.success_tol, progress=progress)
        metrics["group"] = _grid_summary(grid)
    return metrics


def execute(config: PhaseConfig, ctx: base.RunContext) -> tuple[bool, dict]:
    """The command line's run (no checkpoints: the grids take seconds to minutes)."""
    with base.cpu_threads(config.cpu_threads):
        return True, run(config, device=ctx.device, progress=ctx.progress)


def _summary(metrics: dict) -> str:
    parts = []
    for key in ("l1", "group"):
        if key in metrics:
            g = metrics[key]
            dev_m = [abs(e - p) for e, p in zip(g["empirical_m50"], g["predicted_m50"]) if e is not None]
            worst = f"{max(dev_m):.1f}" if dev_m else "n/a"
            parts.append(f"{key}: d={g['d']} grid {len(g['ks'])}x{len(g['ms'])} x {g['trials']} trials in "
                         f"{g['seconds']:.1f} s, largest |empirical 50% m - delta| = {worst}")
    return "; ".join(parts)


EXPERIMENT_SPEC = base.Experiment(name=EXPERIMENT, config_cls=PhaseConfig, execute=execute, data=None,
                                  resumable=False, summarize=_summary,
                                  description="Phase-transition grids of l1 and group-l1 recovery.")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the grids at the chosen scale and store them with provenance.

    Defined in book/sapp_imagenet.md.
    """
    return base.main(EXPERIMENT_SPEC, argv)


if __name__ == "__main__":
    raise SystemExit(main())
