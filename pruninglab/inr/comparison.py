"""Meta-SparseINR against Dense-Narrow at equal weight counts, over seeds and two step budgets.

Defined in book/meta_sparse_inr.md.

Lee et al. (2021) claim that a sparse meta-learned SIREN beats a *dense* meta-learned SIREN with the
same number of weights (Dense-Narrow). :func:`dense_narrow_comparison` tests that claim at small scale:
for every seed it meta-learns a dense SIREN, prunes it in rounds of ``prune_rate`` (global magnitude,
fresh outer Adam each round as in the official code; and, optionally, random pruning from the same
dense meta-initialisation), and at each round listed in ``rounds`` meta-learns a Dense-Narrow SIREN
whose width gives the closest weight count. Each Dense-Narrow model is evaluated twice along one
training run:

- **paper budget**: after ``dense_steps`` meta-steps, the dense phase's budget (the pruned model at
  round ``r`` has had ``dense_steps + r * round_steps``);
- **matched budget**: after ``dense_steps + r * round_steps`` meta-steps, as many as the pruned model.

With a constant outer learning rate, the model after the first ``dense_steps`` steps of a longer run is
exactly a ``dense_steps`` run, so one run serves both budgets. Every model is fitted to the held-out
signals by each test-time protocol of ``eval_modes`` (see :data:`pruninglab.inr.metasparse.EVAL_MODES`)
and scored by the mean PSNR over signals; :func:`summarise_comparison` gives mean and standard
deviation over seeds, and the seed-paired PSNR gaps.

Run from the command line (writes ``result.json`` with config and provenance)::

    python -m pruninglab.inr.comparison --preset recorded --out results/meta_sparse_inr/dense_narrow_faces
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from .._checks import nonnegative_int, one_of, positive_float, positive_int
from ..masks import ones_masks
from .meta import MetaObjective
from .metasparse import EVAL_MODES, fit_signals, meta_sparse_rounds, meta_train
from .siren import coordinate_grid, narrow_width, pruned_counts, siren

__all__ = [
    "DenseNarrowComparison",
    "dense_narrow_comparison",
    "summarise_comparison",
]

DATASETS = ("faces", "photos")


@dataclass(frozen=True)
class DenseNarrowComparison:
    """Settings of :func:`dense_narrow_comparison`.

    Defined in book/meta_sparse_inr.md. ``rounds`` are the pruning rounds at which Meta-SparseINR is
    compared (density ``(1 - prune_rate)^r``); ``data`` is ``"faces"`` (scikit-image's LFW crops,
    25x25 grey) or ``"photos"`` (32x32 crops of the bundled colour photographs, split by photo).
    """

    data: str = "faces"
    width: int = 64
    depth: int = 4
    omega0: float = 30.0
    inner_steps: int = 2
    inner_lr: float = 1e-2
    first_order: bool = False
    outer_lr: float = 1e-4
    meta_batch: int = 3
    dense_steps: int = 300
    round_steps: int = 100
    rounds: tuple[int, ...] = (3, 6, 9)
    prune_rate: float = 0.2
    fresh_optimizer_each_round: bool = True
    include_random: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    num_train: int = 80
    num_test: int = 20
    eval_modes: tuple[str, ...] = ("adam", "sgd2")

    def __post_init__(self) -> None:
        one_of(self.data, "data", DATASETS)
        for name in ("width", "depth", "meta_batch", "num_train", "num_test"):
            positive_int(getattr(self, name), name)
        for name in ("inner_steps", "dense_steps", "round_steps"):
            nonnegative_int(getattr(self, name), name)
        for name in ("omega0", "outer_lr", "inner_lr"):
            positive_float(getattr(self, name), name)
        if not self.rounds or any(nonnegative_int(r, "rounds") < 1 for r in self.rounds):
            raise ValueError(f"rounds: expected a non-empty tuple of positive integers, got {self.rounds!r}")
        if list(self.rounds) != sorted(set(self.rounds)):
            raise ValueError(f"rounds: expected increasing, distinct rounds, got {self.rounds!r}")
        if len(self.seeds) < 1:
            raise ValueError("seeds: expected at least one seed")
        for mode in self.eval_modes:
            one_of(mode, "eval_modes", EVAL_MODES)

    @classmethod
    def small(cls, **overrides) -> "DenseNarrowComparison":
        """A live run of well under a minute on one idle core: width 24 (1,800 weights), 2 seeds,
        60 dense steps, rounds of 30 steps compared at rounds 2 and 4, 4 test faces."""
        base = dict(width=24, dense_steps=60, round_steps=30, rounds=(2, 4), seeds=(0, 1),
                    num_test=4, include_random=False)
        return cls(**{**base, **overrides})

    @classmethod
    def recorded(cls, **overrides) -> "DenseNarrowComparison":
        """The intermediate setting recorded under ``results/meta_sparse_inr/``: width 32 (3,168
        weights), 3 seeds, 200 dense steps, rounds of 60 steps compared at rounds 3, 6 and 9 (51 %,
        26 %, 13 % density), 8 held-out faces; Random Pruning is left to the live run."""
        base = dict(width=32, dense_steps=200, round_steps=60, rounds=(3, 6, 9), num_test=8,
                    include_random=False)
        return cls(**{**base, **overrides})


def _signals(config: DenseNarrowComparison):
    from ..data.images import lfw_faces, photo_crops

    if config.data == "faces":
        return lfw_faces(config.num_train, config.num_test)
    return photo_crops(32, crops_per_photo=max(1, config.num_train // 8), num_test_photos=2)


def _evaluate(config, net, coords, test, masks=None) -> dict:
    params = dict(net.named_parameters())
    out = {}
    for mode in config.eval_modes:
        fit = fit_signals(net, params, coords, test, masks, eval_mode=mode)
        out[mode] = {"psnr": fit.mean_psnr, "psnr_per_signal": fit.psnr.tolist()}
    return out


def _one_seed(config: DenseNarrowComparison) -> dict:
    torch.set_num_threads(1)
    return dense_narrow_comparison(config)


def dense_narrow_comparison(config: DenseNarrowComparison | None = None, *,
                            log: Callable[[str], None] | None = None, jobs: int = 1) -> dict:
    """Run the comparison of the module docstring; return a JSON-able record of every evaluated model.

    Defined in book/meta_sparse_inr.md. The record holds ``counts`` (weights after each compared
    round), ``widths`` (the Dense-Narrow width per round) and ``runs``: one entry per (seed, model)
    with ``method`` ("meta-sparse", "random", "dense-narrow"), ``round``, ``weights``, ``meta_steps``,
    ``budget`` ("paper" / "matched" for Dense-Narrow) and ``eval`` (mean and per-signal PSNR per
    test-time protocol). Pass it to :func:`summarise_comparison`. ``jobs > 1`` runs the seeds in
    that many processes (one thread each) and merges their records; the result is the same.
    """
    config = config or DenseNarrowComparison()
    log = log or (lambda msg: None)
    jobs = positive_int(jobs, "jobs")
    if jobs > 1 and len(config.seeds) > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing

        parts = [dataclasses.replace(config, seeds=(s,)) for s in config.seeds]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(parts)), mp_context=ctx) as pool:
            records = list(pool.map(_one_seed, parts))
        merged = dict(records[0])
        merged["runs"] = [run for rec in records for run in rec["runs"]]
        return merged
    split = _signals(config)
    channels = split.channels
    coords = coordinate_grid(split.height, split.width)
    test = split.test.stack(config.num_test)
    dense_count = siren(2, config.width, config.depth, channels).num_weights()
    counts = pruned_counts(dense_count, max(config.rounds), config.prune_rate)
    widths = {r: narrow_width(counts[r], 2, config.depth, channels) for r in config.rounds}
    runs: list[dict] = []

    def objective(width: int, seed: int) -> tuple[MetaObjective, torch.optim.Optimizer]:
        net = siren(2, width, config.depth, channels, omega0=config.omega0, seed=seed)
        obj = MetaObjective(net, coords, ones_masks(net), inner_steps=config.inner_steps,
                            inner_lr=config.inner_lr, first_order=config.first_order)
        return obj, torch.optim.Adam(obj.parameters(), lr=config.outer_lr)

    def train(obj, opt, steps: int, seed: int) -> None:
        meta_train(obj, opt, split.train, steps, meta_batch=config.meta_batch, seed=seed, progress=False)

    for seed in config.seeds:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        dense, opt = objective(config.width, seed)
        train(dense, opt, config.dense_steps, seed)
        dense_state = {k: v.clone() for k, v in dense.state_dict().items()}
        runs.append({"seed": seed, "method": "dense", "round": 0, "weights": dense_count,
                     "meta_steps": config.dense_steps,
                     "eval": _evaluate(config, dense.inr, coords, test, dense.masks)})

        methods = ["meta-sparse"] + (["random"] if config.include_random else [])
        for method in methods:
            obj, _ = objective(config.width, seed)
            obj.load_state_dict(dense_state)
            first_opt = torch.optim.Adam(obj.parameters(), lr=config.outer_lr)
            if not config.fresh_optimizer_each_round:  # carry the dense phase's Adam state
                first_opt.load_state_dict(opt.state_dict())

            def on_round(r, count, o, method=method):
                if r in config.rounds:
                    runs.append({"seed": seed, "method": method, "round": r, "weights": count,
                                 "meta_steps": config.dense_steps + r * config.round_steps,
                                 "eval": _evaluate(config, o.inr, coords, test, o.masks)})

            meta_sparse_rounds(obj, first_opt, split.train, rounds=max(config.rounds),
                               round_steps=config.round_steps,
                               method="magnitude" if method == "meta-sparse" else "random",
                               rate=config.prune_rate,
                               fresh_optimizer_each_round=config.fresh_optimizer_each_round,
                               meta_batch=config.meta_batch, seed=seed, on_round=on_round,
                               progress=False)

        for r in config.rounds:
            obj, nopt = objective(widths[r], seed)
            train(obj, nopt, config.dense_steps, seed)
            base = {"seed": seed, "method": "dense-narrow", "round": r, "width": widths[r],
                    "weights": obj.inr.num_weights()}
            runs.append({**base, "budget": "paper", "meta_steps": config.dense_steps,
                         "eval": _evaluate(config, obj.inr, coords, test)})
            train(obj, nopt, r * config.round_steps, seed + 1000 * r)
            runs.append({**base, "budget": "matched",
                         "meta_steps": config.dense_steps + r * config.round_steps,
                         "eval": _evaluate(config, obj.inr, coords, test)})
        log(f"seed {seed}: {time.perf_counter() - t0:.0f} s")

    return {"counts": {r: counts[r] for r in config.rounds}, "dense_weights": dense_count,
            "widths": widths, "runs": runs}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_comparison(record: Mapping, eval_mode: str = "adam") -> list[dict]:
    """Mean ± std over seeds of each model's PSNR at each compared round, and the seed-paired gaps.

    Defined in book/meta_sparse_inr.md. One dict per round with keys ``round``, ``weights``,
    ``width``, ``dn_weights``, and ``(mean, std)`` pairs ``meta-sparse``, ``random`` (if run),
    ``dn-paper``, ``dn-matched``, ``gap-paper`` and ``gap-matched`` (Meta-SparseINR minus
    Dense-Narrow, per seed, then mean ± std), plus ``wins-matched``: on how many seeds
    Meta-SparseINR is ahead of the budget-matched Dense-Narrow.
    """
    runs = record["runs"]
    if not runs or eval_mode not in runs[0]["eval"]:
        raise ValueError(f"eval_mode: {eval_mode!r} was not evaluated in this record")

    def psnr(method, r, budget=None) -> dict[int, float]:
        return {run["seed"]: run["eval"][eval_mode]["psnr"] for run in runs
                if run["method"] == method and run["round"] == r and run.get("budget") == budget}

    rows = []
    for key in record["counts"]:
        r = int(key)
        ms, rp = psnr("meta-sparse", r), psnr("random", r)
        dn_p, dn_m = psnr("dense-narrow", r, "paper"), psnr("dense-narrow", r, "matched")
        dn_run = next(run for run in runs if run["method"] == "dense-narrow" and run["round"] == r)
        row = {"round": r, "weights": int(record["counts"][key]), "width": dn_run["width"],
               "dn_weights": dn_run["weights"], "seeds": len(ms),
               "meta-sparse": _mean_std(list(ms.values())),
               "dn-paper": _mean_std(list(dn_p.values())),
               "dn-matched": _mean_std(list(dn_m.values())),
               "gap-paper": _mean_std([ms[s] - dn_p[s] for s in ms]),
               "gap-matched": _mean_std([ms[s] - dn_m[s] for s in ms]),
               "wins-matched": sum(ms[s] > dn_m[s] for s in ms)}
        if rp:
            row["random"] = _mean_std(list(rp.values()))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: run a preset once and store ``result.json`` (config, provenance, wall time)."""
    from ..runtime import device_name, save_result

    ap = argparse.ArgumentParser(prog="python -m pruninglab.inr.comparison", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=("small", "recorded"), default="recorded")
    ap.add_argument("--data", choices=DATASETS, default="faces")
    ap.add_argument("--out", type=Path, required=True, help="folder for result.json")
    ap.add_argument("--jobs", type=int, default=1, help="processes, one seed each")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = getattr(DenseNarrowComparison, args.preset)(data=args.data)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    record = dense_narrow_comparison(config, log=print, jobs=args.jobs)
    wall = time.perf_counter() - t0
    record["setting"] = f"{args.preset} preset, {args.data}"
    record["jobs"] = args.jobs
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    record["cpu_time_s"] = time.process_time() - cpu0 + children.ru_utime + children.ru_stime
    path = save_result("meta_sparse_inr-dense-narrow", record, dataclasses.asdict(config), scale_name="small",
                       dev=torch.device("cpu"), wall_time_s=wall, out_dir=args.out)
    print(f"wrote {path} after {wall:.0f} s on {device_name(torch.device('cpu'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
