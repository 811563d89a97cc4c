"""Hessian estimates: pruninglab.sharpness vs PyHessian, curvlinops and hessian-eigenthings, on CPU.

The maintained peers (``bench_peers``): for each case, each method's time to the top eigenvalue and to
the top three eigenvalues within 1% of an ARPACK reference (each method's own algorithm, its step count
found by an untimed search, then timed with its operator built inside the call), and the time of 100
Hutchinson probes for the trace. The last line's ``peers`` object gives, per peer and case, the
time ratios peer / ours (``ratio_top1``, ``ratio_top3``, ``ratio_trace``; above 1: ours is faster).
curvlinops has no eigensolver of its own; it is timed with SciPy's ``eigsh`` on its ``to_scipy()``.

The detailed PyHessian comparison (``bench_case``) follows.

Protocol (shared/BENCHMARKS.md): both methods on the same model, data and thread count, interleaved
(PyHessian, ours, PyHessian, ours, ...), ``--reps`` repetitions after one warm-up, medians reported
(min..max printed), ``/proc/loadavg`` recorded at start and end. Errors are against a reference
computed by ARPACK (``scipy.sparse.linalg.eigsh``, tol 1e-10) on a float64 copy of the model.
Cases: a digits MLP 64-256-256-10 and a small digits CNN, each briefly trained and at initialisation
(the top of an untrained network's spectrum is clustered, which is where power iteration is slow).

Figures per case:

* ``pyhessian``: ``hessian(...).eigenvalues()`` with its defaults (maxIter=100, tol=1e-3 on the
  relative change between steps, which does not bound the error);
* ``ours``: Lanczos with the defaults of ``hessian_eigenvalues`` (tol=1e-5 on the Ritz residual);
* ``pyhessian_1pct``: PyHessian without its stopping rule, interrupted as soon as its estimate is
  within 1% of the reference (an oracle stop no user has: its best possible time to 1%);
* ``ours_1pct``: Lanczos run for the number of steps after which its top Ritz value is within 1% of the
  reference (the same oracle, read off an untimed run from the same start vector);
* ``ours_same_budget``: Lanczos given exactly as many Hessian-vector products as PyHessian's default used.

Both methods start from the same vector (PyHessian's ``torch.randn`` draws after the same seed), so
the HVP counts are paired: Lanczos' top Ritz value after ``j`` products is never below the power
iteration's estimate after ``j`` products (both are Rayleigh quotients over the same Krylov space).

``speedup`` = PyHessian's time to 1% / ours to 1% (wall; ``speedup_cpu`` the same in CPU time,
``hvp_ratio_1pct`` the ratio of product counts, which the machine's load cannot distort);
``speedup_defaults`` = PyHessian default / ours
default (ours 100-1000x more accurate); ``speedup_same_budget`` = PyHessian default / ours with its
HVP count; ``hvp_time_ratio`` = seconds per product, ours / PyHessian. Both methods build the
gradient graph once and reuse it (PyHessian's ``data=`` mode; our single-batch default); ``.grad`` is
zeroed before and after every PyHessian call (it accumulates into ``.grad``).

Usage: ``python benchmarks/hessian.py [--reps 5] [--models mlp,cnn] [--resnet18]``.
The last printed line is one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from pruninglab.data.digits import digits_split
from pruninglab.models import mlp
from pruninglab.sharpness import hessian_eigenvalues, hvp_operator, lanczos
from pruninglab.train import make_loader, train


@contextlib.contextmanager
def quiet_gc():
    """Collect garbage before a timed call and keep the collector off during it (as timeit does), so
    neither side pays for the other's leftovers."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def setup(name: str, trained: bool = True, seed: int = 0):
    """The model (briefly trained, or at its initialisation) and the data of the Hessian (one batch)."""
    torch.manual_seed(seed)
    if name == "mlp":
        d = digits_split(test_size=1, flatten=True)
        model = mlp([64, 256, 256, 10])
    elif name == "cnn":
        d = digits_split(test_size=1, flatten=False)
        model = small_cnn()
    elif name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(32, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (32,), generator=g)
        return model.eval(), x, y
    else:
        raise ValueError(f"model: unknown benchmark model {name!r}")
    x = torch.cat([d.x_train, d.x_test])
    y = torch.cat([d.y_train, d.y_test])
    if trained:
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        loader = make_loader(torch.utils.data.TensorDataset(x, y), 128, seed=seed)
        train(model, F.cross_entropy, loader, opt, steps=150, progress=False)
    model.eval()
    return model, x, y


def reference_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """The top eigenvalue of :func:`reference_top_eigenvalues` and its HVP count."""
    vals, count = reference_top_eigenvalues(model, x, y, k=1)
    return float(vals[0]), count


def reference_top_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 1):
    """ARPACK (``eigsh``, tol 1e-10) on a float64 copy of the model: the reference for both methods.

    The product here is a plain double backward in float64 written for this script; the test suite
    checks our product against ``torch.func`` and ``torch.autograd.functional`` Hessians.
    """
    import copy

    from scipy.sparse.linalg import LinearOperator, eigsh

    m64 = copy.deepcopy(model).double().eval()
    params = list(m64.parameters())
    loss = F.cross_entropy(m64(x.double()), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]
    count = [0]

    def mv(v):
        count[0] += 1
        t = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1))
        vs = [c.view_as(p) for c, p in zip(t.split(sizes), params)]
        hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).numpy()

    dim = sum(sizes)
    op = LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    val = eigsh(op, k=k, which="LA", tol=1e-10, return_eigenvectors=False, v0=np.ones(dim))
    return np.sort(val)[::-1].copy(), count[0]


def pyhessian_module():
    """The module ``pyhessian.hessian`` (its package re-exports a class of the same name)."""
    import importlib

    importlib.import_module("pyhessian.hessian")
    return sys.modules["pyhessian.hessian"]


class _Reached(Exception):
    pass


def run_pyhessian(model, x, y, max_iter=100, tol=1e-3, stop_within=None):
    """PyHessian's top eigenvalue; returns (value, wall seconds, CPU seconds, HVP count).

    With ``stop_within=(reference, rel)`` PyHessian runs without its own stopping rule (tol=0) and is
    interrupted as soon as its current estimate (the Rayleigh quotient vᵀHv it computes) is within
    ``rel`` of the reference: an oracle stop, i.e. its best possible time to that accuracy.
    """
    ph = pyhessian_module()
    calls = [0]
    last = [float("nan")]
    original = ph.hessian_vector_product

    def counting(gradsH, params, v):
        calls[0] += 1
        hv = original(gradsH, params, v)
        if stop_within is not None:
            ref, rel = stop_within
            est = float(sum((a * b).sum() for a, b in zip(hv, v)))  # v is unit-norm in PyHessian
            last[0] = est
            if abs(est - ref) <= rel * abs(ref):
                raise _Reached
        return hv

    ph.hessian_vector_product = counting
    model.zero_grad(set_to_none=True)
    try:
        with quiet_gc():
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
                if stop_within is not None:
                    tol, max_iter = 0.0, 1000
                vals, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
                value = float(vals[0])
            except _Reached:
                value = last[0]
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            del h
    finally:
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)  # PyHessian leaves graph-carrying .grad behind
    if stop_within is not None and not abs(value - stop_within[0]) <= stop_within[1] * abs(stop_within[0]):
        secs = cpu = float("nan")  # never got there within 1000 steps
    return value, secs, cpu, calls[0]


def pyhessian_start_vector(model: nn.Module, seed: int) -> torch.Tensor:
    """The start vector PyHessian draws after ``torch.manual_seed(seed)`` (one randn per parameter), flat."""
    torch.manual_seed(seed)
    return torch.cat([torch.randn(p.size()).reshape(-1) for p in model.parameters() if p.requires_grad])


def run_ours(model, x, y, v0, tol=1e-5, num_steps=100):
    """Lanczos from ``v0``: the defaults of ``hessian_eigenvalues`` (tol=1e-5), or a fixed number of steps
    (``tol=None``). Returns (value, wall seconds, CPU seconds, HVP count, result)."""
    with quiet_gc():
        t0, c0 = time.perf_counter(), time.process_time()
        with hvp_operator(model, F.cross_entropy, [(x, y)]) as op:
            res = lanczos(op, 1, num_steps=num_steps, tol=tol, v0=v0)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return float(res.ritz_values[0]), secs, cpu, op.num_hvp, res


def lanczos_steps_to(res, ref: float, rel: float) -> int | None:
    """First step at which the top Ritz value of the leading tridiagonal is within ``rel`` of ``ref``."""
    from scipy.linalg import eigh_tridiagonal

    a, b = res.alphas.numpy(), res.betas.numpy()
    for j in range(1, len(a) + 1):
        top = a[0] if j == 1 else eigh_tridiagonal(a[:j], b[: j - 1], eigvals_only=True)[-1]
        if abs(top - ref) <= rel * abs(ref):
            return j
    return None


def run_ours_public(model, x, y, seed):
    """The public entry point with its defaults (the same computation as ``run_ours(tol=1e-5)``)."""
    val = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=1, generator=torch.Generator().manual_seed(seed))
    return float(val[0])


def hvp_time_ratio(model, x, y, n=15):
    """Seconds per Hessian-vector product, ours / PyHessian (graphs built beforehand, not timed)."""
    from pyhessian.utils import hessian_vector_product

    ph = pyhessian_module()
    model.zero_grad(set_to_none=True)
    h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
    v = [torch.randn_like(p) for p in h.params]
    op = hvp_operator(model, F.cross_entropy, [(x, y)])
    vf = op.flatten(v)
    op(vf)
    hessian_vector_product(h.gradsH, h.params, v)
    ours, theirs = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        hessian_vector_product(h.gradsH, h.params, v)
        theirs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        op(vf)
        ours.append(time.perf_counter() - t0)
    op.close()
    del h
    model.zero_grad(set_to_none=True)
    return statistics.median(ours) / statistics.median(theirs)


def bench_case(name: str, trained: bool, reps: int) -> dict:
    model, x, y = setup(name, trained=trained)
    dim = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    ref, ref_hvps = reference_top_eigenvalue(model, x, y)
    label = f"{name}-{'trained' if trained else 'init'}"
    print(f"[{label}] {dim:,} parameters, {x.shape[0]} samples; reference (ARPACK, float64) "
          f"{ref:.8f} in {ref_hvps} HVPs, {time.perf_counter() - t0:.1f} s", flush=True)

    def rel(v):
        return abs(v - ref) / abs(ref)

    # warm-up (lazy initialisation on both sides)
    torch.manual_seed(0)
    run_pyhessian(model, x, y)
    run_ours(model, x, y, pyhessian_start_vector(model, 0))

    keys = ("ph", "ph1", "ours", "ours1", "budget")
    rows: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in keys}
    for r in range(reps):
        seed = 1000 + r
        v0 = pyhessian_start_vector(model, seed)  # both methods start from the same vector
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global RNG
        v, t, c, n = run_pyhessian(model, x, y)
        rows["ph"].append((t, c, rel(v), n))
        v, t, c, n2, _ = run_ours(model, x, y, v0)
        rows["ours"].append((t, c, rel(v), n2))
        torch.manual_seed(seed)
        v, t, c, n3 = run_pyhessian(model, x, y, stop_within=(ref, 0.01))
        rows["ph1"].append((t, c, rel(v), n3))
        # Ours to 1% with the same oracle: the step count from an untimed trajectory, then a timed run.
        _, _, _, _, traj = run_ours(model, x, y, v0, tol=None, num_steps=200)
        need = lanczos_steps_to(traj, ref, 0.01)
        v, t, c, n4, _ = run_ours(model, x, y, v0, tol=None, num_steps=need)
        rows["ours1"].append((t, c, rel(v), n4))
        v, t, c, n5, _ = run_ours(model, x, y, v0, tol=None, num_steps=n)
        rows["budget"].append((t, c, rel(v), n5))
        print(f"  rep {r}: defaults: PyHessian {rows['ph'][-1][0]:.3f}s {n} HVPs err {rows['ph'][-1][2]:.1e}, "
              f"ours {rows['ours'][-1][0]:.3f}s {n2} HVPs err {rows['ours'][-1][2]:.1e} | to 1%: PyHessian "
              f"{rows['ph1'][-1][0]:.3f}s {n3} HVPs, ours {rows['ours1'][-1][0]:.3f}s {n4} HVPs | ours@{n} HVPs "
              f"{rows['budget'][-1][0]:.3f}s err {rows['budget'][-1][2]:.1e}", flush=True)
    v_pub = run_ours_public(model, x, y, 1)
    assert rel(v_pub) < 1e-4, "hessian_eigenvalues (public defaults) disagrees with the reference"

    def med(key, i):
        return statistics.median(row[i] for row in rows[key])

    def span(key, i):
        vals = [row[i] for row in rows[key]]
        return f"{min(vals):.3g}..{max(vals):.3g}"

    def fig(key):
        return {"seconds": med(key, 0), "cpu_seconds": med(key, 1), "hvps": med(key, 3), "rel_err": med(key, 2),
                "max_rel_err": max(row[2] for row in rows[key])}

    ratio = hvp_time_ratio(model, x, y)
    out = {
        "params": dim,
        "reference": ref,
        "pyhessian": fig("ph"),
        "ours": fig("ours"),
        "pyhessian_1pct": fig("ph1"),
        "ours_1pct": fig("ours1"),
        "ours_same_budget": fig("budget"),
        "speedup": med("ph1", 0) / med("ours1", 0),
        "speedup_cpu": med("ph1", 1) / med("ours1", 1),
        "hvp_ratio_1pct": med("ph1", 3) / med("ours1", 3),
        "speedup_defaults": med("ph", 0) / med("ours", 0),
        "speedup_same_budget": med("ph", 0) / med("budget", 0),
        "hvp_time_ratio": ratio,
    }
    print(f"[{label}] medians over {reps} reps (min..max), wall seconds:\n"
          f"  PyHessian default (tol=1e-3)   {med('ph', 0):.3f}s ({span('ph', 0)}), HVPs {span('ph', 3)}, "
          f"rel err {med('ph', 2):.2e} ({span('ph', 2)})\n"
          f"  ours default (tol=1e-5)        {med('ours', 0):.3f}s ({span('ours', 0)}), HVPs {span('ours', 3)}, "
          f"rel err {med('ours', 2):.2e} ({span('ours', 2)})\n"
          f"  PyHessian to 1% (oracle stop)  {med('ph1', 0):.3f}s ({span('ph1', 0)}), HVPs {span('ph1', 3)}\n"
          f"  ours to 1% (oracle stop)       {med('ours1', 0):.3f}s ({span('ours1', 0)}), HVPs {span('ours1', 3)}\n"
          f"  ours, PyHessian's HVP budget   {med('budget', 0):.3f}s ({span('budget', 0)}), rel err "
          f"{med('budget', 2):.2e} ({span('budget', 2)})\n"
          f"  speedup to 1%: {out['speedup']:.2f}x wall, {out['speedup_cpu']:.2f}x CPU time, "
          f"{out['hvp_ratio_1pct']:.2f}x fewer HVPs; defaults: {out['speedup_defaults']:.2f}x; equal HVP budget: "
          f"{out['speedup_same_budget']:.2f}x; time per HVP ours/PyHessian {ratio:.2f}", flush=True)
    return out


# --------------------------------------------------------------------------- maintained peers

PEERS = ("pyhessian", "curvlinops", "hessian_eigenthings")


def _top_k_runner(peer: str, model, x, y, k: int, seed: int):
    """A function ``n -> (top-k values, HVPs)`` that builds the peer's operator and runs ``n`` steps.

    ``n`` is the number of Lanczos steps (ours, hessian-eigenthings), power-iteration steps per
    eigenvalue (PyHessian), or, for curvlinops (which leaves eigensolvers to SciPy), ARPACK's ``ncv``
    (the Krylov dimension of ``scipy.sparse.linalg.eigsh`` on ``to_scipy()``, tol 1e-2).
    """
    if peer == "ours":
        def run(n):
            with hvp_operator(model, F.cross_entropy, [(x, y)]) as op:
                res = lanczos(op, k, num_steps=n, tol=None, generator=torch.Generator().manual_seed(seed))
            return res.ritz_values[:k].numpy(), op.num_hvp
    elif peer == "pyhessian":
        ph = pyhessian_module()

        def run(n):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
            vals, _ = h.eigenvalues(maxIter=n, tol=0.0, top_n=k)
            model.zero_grad(set_to_none=True)
            return np.sort(np.asarray(vals, dtype=np.float64))[::-1], n * k
    elif peer == "hessian_eigenthings":
        import hessian_eigenthings as he

        def run(n):
            op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
            res = he.lanczos(op, k=k, max_iter=n, tol=0.0, which="LA", seed=seed)
            return np.sort(res.eigenvalues.double().numpy())[::-1], n
    elif peer == "curvlinops":
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh

        def run(n):
            H = HessianLinearOperator(model, nn.CrossEntropyLoss(), [p for p in model.parameters()], [(x, y)],
                                      check_deterministic=False)
            A = H.to_scipy()
            calls = [0]
            from scipy.sparse.linalg import LinearOperator

            def mv(v):
                calls[0] += 1
                return A.matvec(v)

            counted = LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
            v0 = np.random.default_rng(seed).standard_normal(A.shape[0])
            vals = eigsh(counted, k=k, which="LA", tol=1e-2, ncv=max(n, 2 * k + 1), v0=v0,
                         return_eigenvectors=False, maxiter=10_000)
            return np.sort(vals)[::-1], calls[0]
    else:
        raise ValueError(f"peer: unknown {peer!r}")
    return run


def _steps_to(run, ref: np.ndarray, rel: float, lo: int, hi: int = 256) -> int | None:
    """Smallest ``n`` in [lo, hi] whose values are all within ``rel`` of ``ref`` (untimed): doubling from
    ``lo``, then bisection between the last failure and the first success; ``None`` if ``hi`` fails."""
    def ok(n):
        vals, _ = run(n)
        return bool(np.all(np.abs(vals - ref) <= rel * np.abs(ref)))

    fail, n = None, lo
    while not ok(n):
        if n >= hi:
            return None
        fail, n = n, min(hi, 2 * n)
    if fail is None:
        return n
    while n - fail > 1:
        mid = (fail + n) // 2
        if ok(mid):
            n = mid
        else:
            fail = mid
    return n


def _trace_runner(peer: str, model, x, y, probes: int, seed: int):
    """A function ``() -> (trace estimate, stderr)`` with ``probes`` Rademacher probes (Hutchinson)."""
    if peer == "ours":
        def run():
            with hvp_operator(model, F.cross_entropy, [(x, y)]) as op:
                est = op.trace(probes, generator=torch.Generator().manual_seed(seed))
            return est.trace, est.stderr
    elif peer == "pyhessian":
        ph = pyhessian_module()

        def run():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            h = ph.hessian(model, F.cross_entropy, data=(x, y), cuda=False)
            samples = np.asarray(h.trace(maxIter=probes, tol=0.0), dtype=np.float64)
            model.zero_grad(set_to_none=True)
            return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(len(samples)))
    elif peer == "hessian_eigenthings":
        import hessian_eigenthings as he

        def run():
            op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
            res = he.trace(op, num_matvecs=probes, method="hutchinson", seed=seed)
            return float(res.estimate), float(res.stderr)
    elif peer == "curvlinops":
        from curvlinops import HessianLinearOperator, hutchinson_trace

        def run():
            torch.manual_seed(seed)
            H = HessianLinearOperator(model, nn.CrossEntropyLoss(), [p for p in model.parameters()], [(x, y)],
                                      check_deterministic=False)
            return float(hutchinson_trace(H, probes)), None  # curvlinops returns no standard error
    else:
        raise ValueError(f"peer: unknown {peer!r}")
    return run


def bench_peers(name: str, trained: bool, reps: int, rel: float = 0.01, probes: int = 100,
                peers: tuple[str, ...] = PEERS, max_steps: int = 256) -> dict:
    """Every peer and ours on one case: time to ``rel`` on the top eigenvalue and on the top 3, and the
    time of ``probes`` Hutchinson probes. Each method's step count for ``rel`` is found by an untimed
    search against the ARPACK reference (an oracle stop), then the runs with those counts are timed,
    interleaved across methods (median of ``reps``; each operator is built inside its timed call).
    Ratios are peer / ours."""
    model, x, y = setup(name, trained=trained)
    ref3, _ = reference_top_eigenvalues(model, x, y, k=3)
    label = f"{name}-{'trained' if trained else 'init'}"
    print(f"[{label}] peers; reference top-3 {np.round(ref3, 6).tolist()}", flush=True)
    methods = ("ours", *peers)
    out: dict = {"reference_top3": ref3.tolist()}
    # Untimed: each method's step count to `rel` (its oracle stop); then the timed calls, interleaved
    # (ours, peer 1, peer 2, ..., ours, ...) so that a change of load hits every method alike.
    calls: dict[tuple[str, str], Any] = {}
    steps: dict[tuple[str, str], int | None] = {}
    for method in methods:
        for k in (1, 3):
            run = _top_k_runner(method, model, x, y, k, seed=0)
            run(k + 1)  # warm-up
            n = _steps_to(run, ref3[:k], rel, lo=k + 1, hi=max_steps)
            steps[method, f"top{k}"] = n
            if n is not None:
                calls[method, f"top{k}"] = (lambda run=run, n=n: run(n))
        calls[method, "trace"] = _trace_runner(method, model, x, y, probes, seed=0)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    results: dict[tuple[str, str], Any] = {}
    for _ in range(reps):
        for key, fn in calls.items():
            with quiet_gc():
                t0 = time.perf_counter()
                results[key] = fn()
                times[key].append(time.perf_counter() - t0)
    for method in methods:
        row: dict = {}
        for k in (1, 3):
            key = (method, f"top{k}")
            if key not in calls:
                row[f"top{k}"] = {"seconds": None, "steps": None, "hvps": None, "rel_err": None}
                continue
            vals, hvps = results[key]
            err = float(np.max(np.abs(vals - ref3[:k]) / np.abs(ref3[:k])))
            row[f"top{k}"] = {"seconds": statistics.median(times[key]), "steps": steps[key], "hvps": hvps,
                              "rel_err": err}
        est, se = results[method, "trace"]
        row["trace"] = {"seconds": statistics.median(times[method, "trace"]), "probes": probes, "estimate": est,
                        "stderr": se}
        out[method] = row
        print(f"  {method:20s} top1 {row['top1']['seconds']}s ({row['top1']['hvps']} HVPs), "
              f"top3 {row['top3']['seconds']}s ({row['top3']['hvps']} HVPs), trace {row['trace']['seconds']:.3f}s "
              f"= {est:.4g} ± {se if se is None else round(se, 3)}", flush=True)
    for method in peers:
        for key in ("top1", "top3", "trace"):
            a, b = out[method][key]["seconds"], out["ours"][key]["seconds"]
            out[method][f"ratio_{key}"] = (a / b) if a is not None and b else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for both sides (BENCHMARKS.md: 2; on a 2-core machine under other load, "
                             "1 avoids OpenMP spin-waits that swing per-operation times 10-100x)")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--states", default="trained,init", help="trained and/or init (untrained) weights")
    parser.add_argument("--resnet18", action="store_true", help="also torchvision resnet18, batch 32x3x32x32 (slow)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="maintained peers timed beside ours on the same cases (empty: none)")
    parser.add_argument("--peer-reps", type=int, default=3)
    parser.add_argument("--peer-probes", type=int, default=100, help="Hutchinson probes for the trace")
    parser.add_argument("--peer-max-steps", type=int, default=256,
                        help="steps (per eigenvalue) after which a method counts as not reaching 1%%")
    parser.add_argument("--skip-pyhessian-detail", action="store_true",
                        help="skip the detailed PyHessian comparison above and run only the peers' table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("PRUNINGLAB_PROGRESS", "0")  # no bars inside timed calls
    warnings.filterwarnings("ignore", category=UserWarning)
    start_load = loadavg()
    print(f"loadavg at start: {start_load}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    models = [m for m in args.models.split(",") if m]
    states = [s for s in args.states.split(",") if s]
    results = {} if args.skip_pyhessian_detail else {
        f"{m}-{s}": bench_case(m, s == "trained", args.reps) for m in models for s in states}
    if args.resnet18 and not args.skip_pyhessian_detail:
        results["resnet18-init"] = bench_case("resnet18", False, args.reps)
    peer_names = tuple(p for p in args.peers.split(",") if p)
    peer_cases = {f"{m}-{s}": bench_peers(m, s == "trained", args.peer_reps, peers=peer_names,
                                               probes=args.peer_probes, max_steps=args.peer_max_steps)
                  for m in models for s in states} if peer_names else {}
    end_load = loadavg()
    print(f"loadavg at end: {end_load}", flush=True)
    if max(start_load[0], end_load[0]) > torch.get_num_threads():
        print("NOTE: the 1-minute load exceeded the thread count; absolute times are suspect, ratios less so.")
    summary = {
        "speedup": {k: round(r["speedup"], 3) for k, r in results.items()},
        "speedup_cpu": {k: round(r["speedup_cpu"], 3) for k, r in results.items()},
        "hvp_ratio_1pct": {k: round(r["hvp_ratio_1pct"], 3) for k, r in results.items()},
        "rel_diff": {k: r["ours_1pct"]["max_rel_err"] for k, r in results.items()},
        "speedup_defaults": {k: round(r["speedup_defaults"], 3) for k, r in results.items()},
        "rel_diff_defaults": {k: r["ours"]["max_rel_err"] for k, r in results.items()},
        "rel_diff_pyhessian_defaults": {k: r["pyhessian"]["max_rel_err"] for k, r in results.items()},
        "speedup_same_budget": {k: round(r["speedup_same_budget"], 3) for k, r in results.items()},
        "hvp_time_ratio": {k: round(r["hvp_time_ratio"], 3) for k, r in results.items()},
        "cases": results,
        "peers": {p: {case: {key: (round(r[p][key], 3) if r[p][key] is not None else None)
                             for key in ("ratio_top1", "ratio_top3", "ratio_trace")}
                      for case, r in peer_cases.items()} for p in peer_names},
        "peer_cases": peer_cases,
        "threads": torch.get_num_threads(),
        "loadavg_start": start_load,
        "loadavg_end": end_load,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
