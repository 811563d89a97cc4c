"""Benchmark: batched torch interior-point solvers vs a loop of cvxpy solves on a phase-transition grid.

Defined in book/convex_geometry.md (the solvers); protocol in BENCHMARKS.md.

The same problems (one seed) are solved by

* ours: :func:`pruninglab.limits.phase.solve_l1_batched` (one batch per m: every k and trial at once),
* the peer: :func:`pruninglab.limits.phase.solve_l1_cvxpy`, i.e. cvxpy + CLARABEL one problem at a time,
  with the problem built once per m through ``cp.Parameter`` (the fast way to use cvxpy in a loop;
  the build is done before timing starts),

interleaved (peer, ours, peer, ours, ...), ``--reps`` times each; medians are reported. Agreement is the
fraction of trials where both solvers reach the same verdict (relative error to the planted x0 below
``success_tol``); the error of both against CLARABEL at tight tolerances (1e-11) on three problems per m
is reported too. The group-l1 solver is measured the same way on a smaller grid. The last line printed is
one JSON object with the figures.

Threads: cvxpy/CLARABEL solve on one core, so the headline ``speedup`` times ours with one torch thread
(equal resources); ``--threads 1,2`` (default) also times ours with two threads, the setting of
BENCHMARKS.md, reported as ``speedup_2thr``. On this shared machine two threads can be far slower than
one when other jobs keep the second core busy (every parallel region then waits for a descheduled
thread), so read the two figures together with the recorded load.

Run: ``python benchmarks/phase_transition.py`` (a few minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pruninglab.limits.phase import (
    recovery_success,
    sample_recovery_problems,
    solve_group_l1_batched,
    solve_group_l1_cvxpy,
    solve_l1_batched,
    solve_l1_cvxpy,
)


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def make_grid(d: int, ms: list[int], ks: list[int], trials: int, group_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    k_batch = torch.tensor(ks, dtype=torch.long).repeat_interleave(trials)
    return [sample_recovery_problems(len(k_batch), m, d, k_batch, group_size=group_size, generator=gen)
            for m in ms]


def to_device(batches, dev):
    return [(p.A.to(dev), p.b.to(dev), p.x0.to(dev)) for p in batches]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_seconds() -> float:
    # Process CPU time (all threads): unlike wall time it does not count time spent descheduled.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_torch(batches, group_size: int, dev: torch.device):
    sync(dev)
    t0, c0 = time.perf_counter(), cpu_seconds()
    xs, iters, conv = [], [], []
    for A, b, _ in batches:
        sol = solve_l1_batched(A, b) if group_size == 1 else solve_group_l1_batched(A, b, group_size)
        xs.append(sol.x)
        iters.append(sol.iterations)
        conv.append(sol.converged)
    sync(dev)
    return time.perf_counter() - t0, cpu_seconds() - c0, xs, torch.cat(iters), torch.cat(conv)


def run_cvxpy(batches, group_size: int):
    t0, c0 = time.perf_counter(), cpu_seconds()
    xs, statuses = [], []
    for A, b, _ in batches:
        if group_size == 1:
            x, st = solve_l1_cvxpy(A, b)
        else:
            x, st = solve_group_l1_cvxpy(A, b, group_size)
        xs.append(x)
        statuses += st
    return time.perf_counter() - t0, cpu_seconds() - c0, xs, statuses


def _stats(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def compare(name: str, cpu_batches, dev_batches, group_size: int, reps: int, tol: float, dev,
            thread_counts: list[int], reference_per_batch: int = 3) -> dict:
    # Warm-up (lazy initialisation, cvxpy's first canonicalisation of each shape).
    for nt in thread_counts:
        torch.set_num_threads(nt)
        run_torch([(A[:2], b[:2], None) for A, b, _ in dev_batches], group_size, dev)
    run_cvxpy([(p.A[:1], p.b[:1], None) for p in cpu_batches], group_size)
    peer_inputs = [(p.A, p.b, None) for p in cpu_batches]
    wall_peer, cpu_peer = [], []
    wall_ours = {nt: [] for nt in thread_counts}
    cpu_ours = {nt: [] for nt in thread_counts}
    for _ in range(reps):  # interleaved: peer, ours (each thread count), peer, ours, ...
        wp, cp_, xs_peer, statuses = run_cvxpy(peer_inputs, group_size)
        wall_peer.append(wp)
        cpu_peer.append(cp_)
        for nt in thread_counts:
            torch.set_num_threads(nt)
            wo, co, xs_ours, iters, conv = run_torch(dev_batches, group_size, dev)
            wall_ours[nt].append(wo)
            cpu_ours[nt].append(co)
    x0 = torch.cat([p.x0 for p in cpu_batches])
    x_ours = torch.cat([x.cpu() for x in xs_ours])
    x_peer = torch.as_tensor(np.concatenate(xs_peer), dtype=x_ours.dtype)
    # Independent reference: CLARABEL at tight tolerances on the first few problems of every batch.
    tight = dict(tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    ref_rows, offset = [], 0
    for p in cpu_batches:
        rows = list(range(offset, offset + min(reference_per_batch, len(p.A))))
        if group_size == 1:
            x_ref, _ = solve_l1_cvxpy(p.A[: len(rows)], p.b[: len(rows)], **tight)
        else:
            x_ref, _ = solve_group_l1_cvxpy(p.A[: len(rows)], p.b[: len(rows)], group_size, **tight)
        ref_rows.append((rows, torch.as_tensor(x_ref, dtype=x_ours.dtype)))
        offset += len(p.A)
    idx = [r for rows, _ in ref_rows for r in rows]
    x_tight = torch.cat([x for _, x in ref_rows])
    ok_ours = recovery_success(x_ours, x0, tol)
    ok_peer = recovery_success(torch.nan_to_num(x_peer, nan=float("inf")), x0, tol)
    n = len(x0)
    finite = torch.isfinite(x_peer).all(dim=1)
    out = {
        f"{name}problems": n,
        f"{name}agreement": round(float((ok_ours == ok_peer).double().mean()), 4),
        f"{name}cvxpy_wall_s": _stats(wall_peer),
        f"{name}cvxpy_cpu_s": _stats(cpu_peer),
        f"{name}success_rate_torch": round(float(ok_ours.double().mean()), 4),
        f"{name}success_rate_cvxpy": round(float(ok_peer.double().mean()), 4),
        f"{name}torch_converged": round(float(conv.double().mean()), 4),
        f"{name}torch_mean_iterations": round(float(iters.double().mean()), 2),
        f"{name}cvxpy_optimal": round(sum(s == "optimal" for s in statuses) / n, 4),
        f"{name}max_abs_diff_x": float((x_ours[finite] - x_peer[finite]).abs().max()),
        f"{name}reference_problems": len(idx),
        f"{name}torch_max_abs_error_vs_tight_reference": float((x_ours[idx] - x_tight).abs().max()),
        f"{name}cvxpy_max_abs_error_vs_tight_reference": float((x_peer[idx] - x_tight).abs().max()),
    }
    for nt in thread_counts:
        out[f"{name}torch_{nt}thr_wall_s"] = _stats(wall_ours[nt])
        out[f"{name}torch_{nt}thr_cpu_s"] = _stats(cpu_ours[nt])
        out[f"{name}speedup_{nt}thr"] = round(statistics.median(wall_peer) / statistics.median(wall_ours[nt]), 2)
        out[f"{name}speedup_cpu_time_{nt}thr"] = round(
            statistics.median(cpu_peer) / statistics.median(cpu_ours[nt]), 2)
    return out


def _summary_line(label: str, f: dict, prefix: str, thread_counts: list[int]) -> str:
    parts = [f"{label}: {f[prefix + 'problems']} problems; cvxpy wall median {f[prefix + 'cvxpy_wall_s']['median']} s"
             f" (cpu {f[prefix + 'cvxpy_cpu_s']['median']} s)"]
    for nt in thread_counts:
        parts.append(f"torch {nt} thread(s) wall median {f[prefix + f'torch_{nt}thr_wall_s']['median']} s "
                     f"(min/max {f[prefix + f'torch_{nt}thr_wall_s']['min']}/{f[prefix + f'torch_{nt}thr_wall_s']['max']},"
                     f" cpu {f[prefix + f'torch_{nt}thr_cpu_s']['median']} s): speedup {f[prefix + f'speedup_{nt}thr']}x")
    parts.append(f"agreement {f[prefix + 'agreement']}")
    return "; ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--no-group", action="store_true", help="skip the group-l1 comparison")
    parser.add_argument("--threads", default="1,2",
                        help="torch thread counts to time ours with, comma-separated (default 1,2); the first "
                             "one gives the headline 'speedup'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--success-tol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError as err:
        raise SystemExit(f"--threads: expected comma-separated integers, got {args.threads!r}") from err
    if not thread_counts or min(thread_counts) < 1:
        raise SystemExit(f"--threads: expected positive integers, got {args.threads!r}")

    dev = torch.device(args.device)
    load_start = loadavg()
    d = args.d
    # 10 x 10 grid over (m/d, s/d): m = 0.05d, 0.15d, ..., 0.95d; s = 0.03d, 0.08d, ..., 0.48d.
    ms = [max(1, round(d * (0.05 + 0.1 * i))) for i in range(10)]
    ks = [max(1, round(d * (0.03 + 0.05 * i))) for i in range(10)]
    cpu_batches = make_grid(d, ms, ks, args.trials, 1, args.seed)
    figures = {"d": d, "ms": ms, "ks": ks, "trials": args.trials, "reps": args.reps,
               "torch_thread_counts": thread_counts, "device": str(dev),
               "peer": f"cvxpy {cp_version()} + CLARABEL, problem built once per m with cp.Parameter"}
    figures.update(compare("", cpu_batches, to_device(cpu_batches, dev), 1, args.reps, args.success_tol, dev,
                           thread_counts))
    figures["speedup"] = figures[f"speedup_{thread_counts[0]}thr"]
    figures["speedup_threads"] = thread_counts[0]
    print(_summary_line("l1", figures, "", thread_counts))

    if not args.no_group:
        G = d // args.group_size
        gms = [max(1, round(d * (0.1 + 0.2 * i))) for i in range(5)]
        gks = [max(1, round(G * (0.04 + 0.1 * i))) for i in range(5)]
        gb = make_grid(d, gms, gks, args.trials, args.group_size, args.seed + 1)
        g = compare("group_", gb, to_device(gb, dev), args.group_size, args.reps, args.success_tol, dev,
                    thread_counts)
        g.update({"group_size": args.group_size, "group_ms": gms, "group_ks": gks,
                  "group_speedup": g[f"group_speedup_{thread_counts[0]}thr"]})
        figures.update(g)
        print(_summary_line(f"group-l1 (group size {args.group_size})", figures, "group_", thread_counts))

    load_end = loadavg()
    figures["loadavg_start"], figures["loadavg_end"] = load_start, load_end
    busiest = max(x or 0 for x in (load_start, load_end))
    figures["load_warning"] = (
        f"1-minute load {busiest} is above the thread count: absolute times are inflated and the figures suspect"
        if busiest > max(thread_counts) else None
    )
    print(json.dumps(figures))
    return 0


def cp_version() -> str:
    import cvxpy

    return cvxpy.__version__


if __name__ == "__main__":
    raise SystemExit(main())
