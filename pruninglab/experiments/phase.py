"""``python -m pruninglab phase``: phase-transition grids of l1 and group-l1 recovery.

Defined in book/convex_geometry.md.

Draws the empirical success probability of exact recovery over (m/d, s/d) for l1 and over
(m/d, k/G) for group-l1, next to the statistical-dimension prediction, and stores the result with
its provenance (``results/phase/result.json`` at full scale, the git-ignored cache at small scale).
The chapter calls :func:`run` with the same config, so the notebook and the command line agree.

    python -m pruninglab phase                  # small: d = 100, a few seconds on a CPU
    python -m pruninglab phase --scale full     # d = 400, fine grids, meant for a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..cli import add_common_arguments
from ..limits.geometry import statistical_dimension_l1, statistical_dimension_l1_mc
from ..limits.phase import PhaseGrid, phase_transition_grid, predicted_transition, transition_points
from ..runtime import device as pick_device
from ..runtime import save_result, scale

EXPERIMENT = "phase"


@dataclass(frozen=True)
class PhaseConfig:
    """Grid sizes of the phase-transition experiment (``small()`` for a CPU, ``full()`` for a GPU).

    Defined in book/convex_geometry.md.
    """

    d: int = 100  # l1: ambient dimension
    num_m: int = 20  # l1: measurement counts m = d (i + 0.5) / num_m, i < num_m
    s_step: float = 0.05  # l1: sparsities s/d = 0.02 and s_step, 2 s_step, ... up to max_sparsity
    max_sparsity: float = 0.6
    trials: int = 10
    group_size: int = 4  # group-l1: d = num_groups * group_size
    num_groups: int = 25
    group_num_m: int = 12
    group_num_k: int = 15  # active groups k evenly spaced in [1, max_sparsity * num_groups]
    group_trials: int = 10
    mc_samples: int = 4000  # Monte-Carlo draws for the statistical-dimension check
    seed: int = 0
    success_tol: float = 1e-4

    @classmethod
    def small(cls) -> "PhaseConfig":
        return cls()

    @classmethod
    def full(cls) -> "PhaseConfig":
        return cls(d=400, num_m=40, s_step=0.0125, trials=50, group_size=4, num_groups=100, group_num_m=40,
                   group_num_k=30, group_trials=40, mc_samples=20000)

    @classmethod
    def for_scale(cls, scale_name: str | None = None) -> "PhaseConfig":
        return cls.full() if scale(scale_name) == "full" else cls.small()

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
        which: str = "both") -> dict:
    """Run the grids (and the Monte-Carlo check) of ``config``; return the metrics dict.

    Defined in book/convex_geometry.md.
    """
    if which not in ("both", "l1", "group"):
        raise ValueError(f"which: expected 'both', 'l1' or 'group', got {which!r}")
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


def main(argv: list[str] | None = None) -> int:
    """Command line: run the grids at the chosen scale and store them with provenance.

    Defined in book/convex_geometry.md.
    """
    parser = argparse.ArgumentParser(prog="python -m pruninglab phase", description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--which", choices=["both", "l1", "group"], default="both")
    parser.add_argument("--trials", type=int, default=None, help="override the trials per grid cell")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is often faster for these small operations)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    sc = scale(args.scale)
    config = PhaseConfig.for_scale(sc)
    config = dataclasses.replace(config, seed=args.seed)
    if args.trials is not None:
        if args.trials < 1:
            raise ValueError(f"--trials: expected a positive integer, got {args.trials}")
        config = dataclasses.replace(config, trials=args.trials, group_trials=args.trials)
    dev = pick_device(args.device)
    t0 = time.perf_counter()
    metrics = run(config, device=dev, progress=False if args.no_progress else None, which=args.which)
    wall = time.perf_counter() - t0
    path = save_result(EXPERIMENT, metrics, config, scale_name=sc, dev=dev, wall_time_s=wall, out_dir=args.out)
    for key in ("l1", "group"):
        if key in metrics:
            g = metrics[key]
            dev_m = [abs(e - p) for e, p in zip(g["empirical_m50"], g["predicted_m50"]) if e is not None]
            worst = f"{max(dev_m):.1f}" if dev_m else "n/a"
            print(f"{key}: d={g['d']} grid {len(g['ks'])}x{len(g['ms'])} x {g['trials']} trials in "
                  f"{g['seconds']:.1f} s; largest |empirical 50% m - delta| = {worst}")
    print(f"wrote {path} ({wall:.1f} s on {dev})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
