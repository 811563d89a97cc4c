"""Phase transitions of l1 and group-l1 recovery: batched torch interior-point solvers, cvxpy references, grids.

Defined in book/convex_geometry.md.

The experiment behind every phase-transition figure: draw a Gaussian ``A`` (``m x d``) and a planted
vector ``x0`` with ``k`` nonzero groups (coordinates when ``group_size = 1``), solve

    minimise ``sum_g ||x_g||_2``  subject to  ``A x = A x0``,

and call the trial a success when the solution is ``x0`` (relative error below ``success_tol``).
ALMT's kinematic formula says the success probability jumps from 0 to 1 around ``m = delta``, the
statistical dimension of the descent cone (:mod:`pruninglab.limits.geometry`).

Solvers. A grid needs thousands of small solves, so the torch solvers solve a whole batch of
independent problems at once, with one tensor operation per step across the batch:

* :func:`solve_l1_batched`: a primal-dual interior-point method (Mehrotra predictor-corrector) on the
  LP ``x = u - v, u, v >= 0``. Each iteration factors one small normal-equation matrix per problem with
  a batched Cholesky: ``A D A^T`` (``m x m``) when ``m <= d/2``, else the null-space form
  ``N^T D^{-1} N`` (``(d-m) x (d-m)``), whichever is smaller. It converges in about ten iterations;
  problems that have converged leave the batch (per-problem early stopping).
* :func:`solve_group_l1_batched`: the same method for the second-order-cone program
  ``min sum t_g, ||x_g|| <= t_g, A x = b`` with Nesterov-Todd scaling; the normal matrix is
  ``A H A^T`` with ``H`` block-diagonal (identity plus rank one per group). With ``group_size = 1`` it
  solves the l1 problem too (a check on both).

:func:`solve_l1_cvxpy` / :func:`solve_group_l1_cvxpy` solve the same problems one by one with cvxpy
(CLARABEL, the problem built once per shape with ``cp.Parameter``): the reference for tests and the
benchmark, never used in grids by default.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Sequence

import numpy as np
import torch

from .._checks import int_at_least
from ..runtime import progress_enabled
from .geometry import statistical_dimension_group_l1

__all__ = [
    "RecoveryProblems",
    "BatchedSolution",
    "PhaseGrid",
    "sample_recovery_problems",
    "solve_l1_batched",
    "solve_group_l1_batched",
    "solve_l1_cvxpy",
    "solve_group_l1_cvxpy",
    "relative_error",
    "recovery_success",
    "phase_transition_grid",
    "transition_points",
    "predicted_transition",
]


# --------------------------------------------------------------------------- problems


@dataclass
class RecoveryProblems:
    """A batch of recovery problems ``A x = b`` with planted solutions ``x0`` (``b = A x0``).

    ``A``: ``(B, m, d)``, ``b``: ``(B, m)``, ``x0``: ``(B, d)``, ``k``: ``(B,)`` number of nonzero groups.
    """

    A: torch.Tensor
    b: torch.Tensor
    x0: torch.Tensor
    k: torch.Tensor
    group_size: int = 1


def sample_recovery_problems(
    num_problems: int,
    m: int,
    d: int,
    k: int | Sequence[int] | torch.Tensor,
    *,
    group_size: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> RecoveryProblems:
    """Draw ``num_problems`` Gaussian recovery problems in R^d with ``m`` measurements.

    Defined in book/convex_geometry.md.

    ``A`` has i.i.d. N(0, 1) entries; ``x0`` has ``k`` nonzero groups of ``group_size`` consecutive
    coordinates (chosen uniformly) with i.i.d. N(0, 1) entries. ``k`` is one integer or one per problem.
    Random numbers come from ``generator`` (a CPU generator keeps results identical on every device).
    """
    num_problems = int_at_least(num_problems, "num_problems", 1)
    d = int_at_least(d, "d", 1)
    m = int_at_least(m, "m", 1)
    group_size = int_at_least(group_size, "group_size", 1)
    if m > d:
        raise ValueError(f"m: expected 1 <= m <= d = {d} measurements, got {m}")
    if d % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide d = {d}")
    num_groups = d // group_size
    if isinstance(k, torch.Tensor):
        kk = k.to(torch.long).flatten().cpu()
    elif isinstance(k, Integral) and not isinstance(k, bool):
        kk = torch.full((num_problems,), int(k), dtype=torch.long)
    else:
        try:
            kk = torch.tensor([int(v) for v in k], dtype=torch.long)
        except (TypeError, ValueError) as err:
            raise ValueError(f"k: expected an integer or a sequence of integers, got {k!r}") from err
    if kk.numel() != num_problems:
        raise ValueError(f"k: expected one value or {num_problems} values, got {kk.numel()}")
    if bool((kk < 0).any()) or bool((kk > num_groups).any()):
        raise ValueError(f"k: expected 0 <= k <= {num_groups} (number of groups), got {kk.tolist()}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    A = torch.randn(num_problems, m, d, generator=generator, dtype=dtype)
    # Uniform random support: the k smallest of G uniform scores in each row.
    ranks = torch.rand(num_problems, num_groups, generator=generator).argsort(dim=1).argsort(dim=1)
    active = (ranks < kk.unsqueeze(1)).repeat_interleave(group_size, dim=1)
    x0 = torch.randn(num_problems, d, generator=generator, dtype=dtype) * active
    A, x0 = A.to(dev), x0.to(dev)
    b = _matvec(A, x0)
    return RecoveryProblems(A=A, b=b, x0=x0, k=kk.to(dev), group_size=group_size)


def _matvec(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (B, m, d) x (B, d) -> (B, m). A row-vector bmm against the transposed view is several times
    # faster on CPU than bmm with a (B, d, 1) column.
    return torch.bmm(x.unsqueeze(1), A.transpose(1, 2)).squeeze(1)


def _rmatvec(A: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # (B, m, d)^T x (B, m) -> (B, d)
    return torch.bmm(y.unsqueeze(1), A).squeeze(1)


def _check_system(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if not isinstance(A, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("A, b: expected torch tensors")
    single = A.dim() == 2
    if single:
        A, b = A.unsqueeze(0), b.unsqueeze(0)
    if A.dim() != 3:
        raise ValueError(f"A: expected shape (B, m, d) or (m, d), got {tuple(A.shape)}")
    B, m, d = A.shape
    if b.shape != (B, m):
        raise ValueError(f"b: expected shape ({B}, {m}) to match A, got {tuple(b.shape)}")
    if m > d:
        raise ValueError(f"A: expected m <= d (an underdetermined system), got m = {m} > d = {d}")
    if not A.dtype.is_floating_point:
        raise ValueError(f"A: expected a floating-point tensor, got {A.dtype}")
    for label, t in (("A", A), ("b", b)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{label}: contains NaN or Inf values; expected finite numbers")
    return A, b.to(dtype=A.dtype, device=A.device), single


# --------------------------------------------------------------------------- solutions


@dataclass
class BatchedSolution:
    """Solutions of a batch: ``x`` ``(B, d)``, ``converged`` ``(B,)`` bool, ``iterations`` ``(B,)``.

    """

    x: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor


def relative_error(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """``||x - x0|| / max(||x0||, tiny)`` row by row.

    """
    x0 = x0.to(device=x.device, dtype=x.dtype)
    return (x - x0).norm(dim=-1) / x0.norm(dim=-1).clamp_min(torch.finfo(x.dtype).tiny)


def recovery_success(x: torch.Tensor, x0: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Per-row success: relative error ``||x - x0|| / ||x0||`` at most ``tol`` (``x0 = 0``: ``||x|| <= tol``).

    Defined in book/convex_geometry.md.
    """
    if not (tol > 0):
        raise ValueError(f"tol: expected a positive tolerance, got {tol!r}")
    x0 = x0.to(device=x.device, dtype=x.dtype)
    ref = x0.norm(dim=-1)
    return (x - x0).norm(dim=-1) <= tol * torch.where(ref > 0, ref, torch.ones_like(ref))


def _step_to_boundary(pairs, fraction: float = 1.0) -> torch.Tensor:
    # min(1, fraction * largest alpha keeping every z + alpha dz >= 0), per row, for (z, dz) pairs with
    # z > 0: alpha_max = 1 / max_i(-dz_i / z_i), so the answer is fraction / max(fraction, max_i(-dz_i/z_i)).
    worst = None
    for z, dz in pairs:
        r = (-dz / z).amax(dim=1)
        worst = r if worst is None else torch.maximum(worst, r)
    return fraction / worst.clamp_min(fraction)


def _regularise_(M: torch.Tensor, reg: float) -> torch.Tensor:
    # Near the solution of a degenerate LP (successful recovery has only s < m nonzeros) the normal
    # matrix becomes singular; a relative diagonal shift keeps the Cholesky defined and costs only a
    # slightly inexact Newton direction, which the interior-point iteration tolerates.
    diag = M.diagonal(dim1=1, dim2=2)
    diag += reg * diag.amax(dim=1, keepdim=True)
    return M


def _cholesky(M: torch.Tensor, reg: float, keep: bool = False) -> torch.Tensor:
    # Cholesky of the regularised normal matrix (M itself is shifted in place unless keep=True); a
    # problem whose factorisation still fails gets a much larger shift (its direction is then only
    # approximate; the iteration or the finite-value guard handles it).
    L, info = torch.linalg.cholesky_ex(_regularise_(M.clone() if keep else M, reg))
    if bool((info > 0).any()):
        bad = (info > 0).to(M.dtype).view(-1, 1)
        M2 = M.clone()
        diag = M2.diagonal(dim1=1, dim2=2)
        diag += (reg + bad * 1e-7) * diag.amax(dim=1, keepdim=True).clamp_min(torch.finfo(M.dtype).tiny)
        L, _ = torch.linalg.cholesky_ex(M2)
    return L


# --------------------------------------------------------------------------- l1: LP interior point


def _null_space_basis(A: torch.Tensor):
    # A basis N (B, d, d - m) of null(A) with orthonormal columns, the LU factors of A1 (A = [A1 A2], A1
    # square) and a per-problem flag saying whether this route worked. The columns of [-A1^{-1} A2; I]
    # span null(A); one CholeskyQR pass (N <- N R^{-1}, R^T R = N^T N) orthonormalises them up to about
    # cond(A1)^2 * eps, which is all the iteration needs, at a fraction of the cost of a complete
    # Householder QR. The caller solves flagged problems (A1 singular or badly conditioned) another way.
    B, m, d = A.shape
    k = d - m
    LU, piv, info = torch.linalg.lu_factor_ex(A[:, :, :m])
    Z = torch.linalg.lu_solve(LU, piv, A[:, :, m:])  # A1^{-1} A2
    eye = torch.eye(k, dtype=A.dtype, device=A.device).expand(B, k, k)
    raw = torch.cat([-Z, eye], dim=1)
    R, rinfo = torch.linalg.cholesky_ex(torch.bmm(raw.transpose(1, 2), raw), upper=True)
    # LAPACK hands back column-major batches; later elementwise products and indexing are much
    # faster on a row-major copy.
    N = torch.linalg.solve_triangular(R, raw, upper=True, left=False).contiguous()
    err = (torch.bmm(N.transpose(1, 2), N) - eye).abs().amax(dim=(1, 2))
    ok = (info == 0) & (rinfo == 0) & torch.isfinite(err) & (err < 1e-6)
    return N, LU, piv, ok


def _particular(LU: torch.Tensor, piv: torch.Tensor, r: torch.Tensor, d: int) -> torch.Tensor:
    # A solution of A x = r: [A1^{-1} r; 0].
    top = torch.linalg.lu_solve(LU, piv, r.unsqueeze(-1)).squeeze(-1)
    return torch.cat([top, top.new_zeros(r.shape[0], d - r.shape[1])], 1)


def solve_l1_batched(
    A: torch.Tensor,
    b: torch.Tensor,
    *,
    tol: float = 1e-8,
    max_iter: int = 60,
    linear_algebra: str = "auto",
    null_space_above: float = 0.5,
    regularization: float = 1e-15,
    step_fraction: float = 0.99,
    refine: int = 0,
    compact_fraction: float = 0.2,
) -> BatchedSolution:
    """Solve ``min ||x||_1 s.t. A x = b`` for a batch of problems by a primal-dual interior-point method.

    Defined in book/convex_geometry.md.

    ``A``: ``(B, m, d)`` with ``m <= d`` and full row rank, ``b``: ``(B, m)`` (or one problem without
    the batch axis). Use float64: the last iterations need it. The LP is ``min 1^T(u + v)`` over
    ``A(u - v) = b, u, v >= 0`` with dual ``max b^T y, -1 <= A^T y <= 1``; we track ``w = A^T y`` and
    the slacks ``1 - w``, ``1 + w``. Mehrotra's predictor-corrector gives the steps (separate primal and
    dual step lengths). ``linear_algebra``: ``"range"`` solves ``(A D A^T) dy = r`` (``m x m``),
    ``"null"`` solves ``(N^T D^{-1} N) dz = r`` with ``N`` an orthonormal basis of ``null(A)``
    (``(d-m) x (d-m)``); ``"auto"`` takes null when ``m > null_space_above * d``. ``refine`` steps of
    iterative refinement polish each range-form solve.

    A problem is done when its relative primal and dual residuals and its relative duality gap are all
    below ``tol``; its answer is recorded then, and done problems leave the batch once they make up
    ``compact_fraction`` of it (per-problem early stopping without a copy at every iteration).
    Returns x, a converged flag and the iteration count.
    """
    A, b, single = _check_system(A, b)
    if linear_algebra not in ("auto", "range", "null"):
        raise ValueError(f"linear_algebra: expected 'auto', 'range' or 'null', got {linear_algebra!r}")
    if not (0 < tol < 1):
        raise ValueError(f"tol: expected 0 < tol < 1, got {tol!r}")
    max_iter = int_at_least(max_iter, "max_iter", 1)
    refine = int_at_least(refine, "refine", 0)
    if not (0 < step_fraction < 1):
        raise ValueError(f"step_fraction: expected a number in (0, 1), got {step_fraction!r}")
    if not (0 <= compact_fraction <= 1):
        raise ValueError(f"compact_fraction: expected a number in [0, 1], got {compact_fraction!r}")
    B, m, d = A.shape
    dev, dt = A.device, A.dtype
    out_x = torch.zeros(B, d, dtype=dt, device=dev)
    out_conv = torch.zeros(B, dtype=torch.bool, device=dev)
    out_iter = torch.full((B,), max_iter, dtype=torch.long, device=dev)

    if m == d:  # a square system has one solution: nothing to optimise
        out_x = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
        out_conv[:] = True
        out_iter[:] = 0
        return _finish(out_x, out_conv, out_iter, single)

    use_null = linear_algebra == "null" or (linear_algebra == "auto" and m > null_space_above * d)
    options = dict(tol=tol, max_iter=max_iter, regularization=regularization, step_fraction=step_fraction,
                   refine=refine, compact_fraction=compact_fraction)
    N = LU = piv = None
    if use_null:
        N, LU, piv, ok = _null_space_basis(A)
        if not bool(ok.all()):
            # Problems whose leading m x m block is (nearly) singular: solve them in the range form.
            out = _finish(out_x, out_conv, out_iter, False)
            for sel, form in ((~ok, "range"), (ok, "null")):
                if bool(sel.any()):
                    part = solve_l1_batched(A[sel], b[sel], linear_algebra=form, **options)
                    out.x[sel], out.converged[sel], out.iterations[sel] = part.x, part.converged, part.iterations
            return _finish(out.x, out.converged, out.iterations, single)
        xp = _particular(LU, piv, b, d)
        x = xp - _matvec(N, _rmatvec(N, xp))  # the minimum-norm solution
    else:
        L0 = torch.linalg.cholesky(torch.bmm(A, A.transpose(1, 2)))
        x = _rmatvec(A, torch.cholesky_solve(b.unsqueeze(-1), L0).squeeze(-1))

    # Start: the minimum-norm solution split into positive parts plus a common offset; dual w = 0.
    offset = x.abs().mean(dim=1, keepdim=True).clamp_min(1e-2)
    u = x.clamp_min(0) + offset
    v = (-x).clamp_min(0) + offset
    w = torch.zeros_like(x)
    su = torch.ones_like(x)
    sv = torch.ones_like(x)
    bnorm = b.norm(dim=1)
    index = torch.arange(B, device=dev)
    recorded = torch.zeros(B, dtype=torch.bool, device=dev)
    dual_scale = 1 + math.sqrt(2 * d)

    for it in range(max_iter):
        x = u - v
        rp = b - _matvec(A, x)
        ru = 1.0 - w - su
        rv = 1.0 + w - sv
        comp = (u * su).sum(1) + (v * sv).sum(1)
        conv = (
            (rp.norm(dim=1) <= tol * (1 + bnorm))
            & (torch.sqrt(ru.square().sum(1) + rv.square().sum(1)) <= tol * dual_scale)
            & (comp <= tol * (1 + (u + v).sum(1)))
        )
        broken = ~torch.isfinite(comp) | ~torch.isfinite(rp).all(1)  # numerical breakdown: give up on it
        fresh = (conv | broken) & ~recorded
        if bool(fresh.any()):  # one host sync per iteration: the price of per-problem early stopping
            fin = index[fresh]
            out_x[fin] = x[fresh]
            out_conv[fin] = conv[fresh]
            out_iter[fin] = it
            recorded = recorded | fresh
            if bool(recorded.all()):
                break
            if int(recorded.sum()) >= compact_fraction * len(recorded):
                keep = ~recorded
                index, A, b, bnorm, u, v, w, su, sv, rp, ru, rv, comp, recorded = (
                    t[keep] for t in (index, A, b, bnorm, u, v, w, su, sv, rp, ru, rv, comp, recorded))
                if use_null:
                    N, LU, piv = N[keep], LU[keep], piv[keep]
            else:
                # Recorded problems ride along until the next compaction; park them at a benign
                # interior point (x = 0, w = 0, all slacks 1) so they cannot upset the factorisations.
                hold = recorded.unsqueeze(1)
                one, zero = torch.ones_like(u), torch.zeros_like(u)
                u, v, su, sv = (torch.where(hold, one, t) for t in (u, v, su, sv))
                w, ru, rv = (torch.where(hold, zero, t) for t in (w, ru, rv))
                rp = torch.where(hold, torch.zeros_like(rp), rp)
                comp = torch.where(recorded, torch.full_like(comp, 2.0 * d), comp)
        mu = comp / (2 * d)
        Du, Dv = u / su, v / sv
        D = Du + Dv
        if use_null:
            Dinv = 1.0 / D
            L = _cholesky(torch.bmm(N.transpose(1, 2), Dinv.unsqueeze(-1) * N), regularization)
        else:
            M = torch.bmm(A * D.unsqueeze(1), A.transpose(1, 2))
            L = _cholesky(M, regularization, keep=refine > 0)

        def direction(rcu, rcv):
            # Newton step for: A(du - dv) = rp, dw + dsu = ru, -dw + dsv = rv,
            # su du + u dsu = rcu, sv dv + v dsv = rcv, dw in range(A^T).
            au = (rcu - u * ru) / su
            av = (rcv - v * rv) / sv
            q = au - av  # dx = q + D dw
            if use_null:
                # The iterates start primal feasible and every step lies in null(A), so the primal
                # residual stays at rounding level and dx = N dz needs no particular-solution term.
                rhs = _rmatvec(N, Dinv * q).unsqueeze(-1)  # N^T D^{-1} q
                dx = _matvec(N, torch.cholesky_solve(rhs, L).squeeze(-1))
                e = dx - q  # = D dw; split it between u and v without forming D * (e / D)
                dw = Dinv * e
                dw = dw - _matvec(N, _rmatvec(N, dw))  # keep dw in range(A^T) = null(A)^perp
                du = au + (Du / D) * e
                dv = av - (Dv / D) * e
            else:
                rhs = (rp - _matvec(A, q)).unsqueeze(-1)
                dy = torch.cholesky_solve(rhs, L)
                for _ in range(refine):  # iterative refinement against the unregularised matrix
                    dy = dy + torch.cholesky_solve(rhs - torch.bmm(M, dy), L)
                dw = _rmatvec(A, dy.squeeze(-1))
                du = au + Du * dw
                dv = av - Dv * dw
            return du, dv, dw, ru - dw, rv + dw

        # Predictor (affine scaling) step.
        du, dv, dw, dsu, dsv = direction(-u * su, -v * sv)
        ap = _step_to_boundary(((u, du), (v, dv))).unsqueeze(1)
        ad = _step_to_boundary(((su, dsu), (sv, dsv))).unsqueeze(1)
        comp_aff = ((u + ap * du) * (su + ad * dsu)).sum(1) + ((v + ap * dv) * (sv + ad * dsv)).sum(1)
        sigma = (comp_aff / comp).clamp(0.0, 1.0).pow(3)
        target = (sigma * mu).unsqueeze(1)
        # Corrector: centre towards sigma * mu and cancel the predictor's second-order term.
        du, dv, dw, dsu, dsv = direction(target - u * su - du * dsu, target - v * sv - dv * dsv)
        ap = _step_to_boundary(((u, du), (v, dv)), step_fraction).unsqueeze(1)
        ad = _step_to_boundary(((su, dsu), (sv, dsv)), step_fraction).unsqueeze(1)
        u = u + ap * du
        v = v + ap * dv
        w = w + ad * dw
        su = su + ad * dsu
        sv = sv + ad * dsv
    else:
        left = ~recorded  # not converged within max_iter: report the last iterate
        out_x[index[left]] = (u - v)[left]

    return _finish(out_x, out_conv, out_iter, single)


def _finish(x, conv, iters, single) -> BatchedSolution:
    if single:
        return BatchedSolution(x[0], conv[0], iters[0])
    return BatchedSolution(x, conv, iters)


# --------------------------------------------------------------------------- group l1: SOCP interior point


def _soc_jdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a^T J b with J = diag(1, -1, ..., -1), over the last axis.
    return a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(-1)


def _soc_det(a: torch.Tensor) -> torch.Tensor:
    # a^T J a = (a0 - ||a1||)(a0 + ||a1||): the factored form keeps its accuracy near the cone boundary.
    n1 = a[..., 1:].norm(dim=-1)
    return (a[..., 0] - n1) * (a[..., 0] + n1)


def _soc_prod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Jordan product a o b = (a^T b, a0 b1 + b0 a1).
    return torch.cat([(a * b).sum(-1, keepdim=True), a[..., :1] * b[..., 1:] + b[..., :1] * a[..., 1:]], dim=-1)


def _soc_div(lam: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # The x with lam o x = r (arrow matrix solve): x0 = (l0 r0 - l1.r1)/det, x1 = (r1 - l1 x0)/l0.
    l0, l1 = lam[..., :1], lam[..., 1:]
    det = _soc_det(lam).unsqueeze(-1)
    x0 = (l0 * r[..., :1] - (l1 * r[..., 1:]).sum(-1, keepdim=True)) / det
    return torch.cat([x0, (r[..., 1:] - l1 * x0) / l0], dim=-1)


def _soc_max_step(z: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    # Largest alpha with z + alpha dz in the second-order cone, per problem (min over its cones).
    # q(alpha) = (z0 + alpha d0)^2 - ||z1 + alpha d1||^2 = a alpha^2 + 2 b alpha + c, with c > 0;
    # the step ends at the smallest positive root of q (none: unbounded).
    a = _soc_jdot(dz, dz)
    bb = _soc_jdot(z, dz)
    c = _soc_jdot(z, z)
    disc = bb * bb - a * c
    root = torch.sqrt(disc.clamp_min(0.0))
    qq = -(bb + torch.where(bb >= 0, root, -root))
    inf = torch.full_like(a, math.inf)
    r1 = torch.where(a != 0, qq / torch.where(a != 0, a, torch.ones_like(a)), inf)
    r2 = torch.where(qq != 0, c / torch.where(qq != 0, qq, torch.ones_like(qq)), inf)
    ok = disc >= 0
    r1 = torch.where(ok & (r1 > 0), r1, inf)
    r2 = torch.where(ok & (r2 > 0), r2, inf)
    return torch.minimum(r1, r2).amin(dim=1)


def solve_group_l1_batched(
    A: torch.Tensor,
    b: torch.Tensor,
    group_size: int,
    *,
    tol: float = 1e-8,
    max_iter: int = 80,
    regularization: float = 1e-15,
    step_fraction: float = 0.99,
    refine: int = 1,
) -> BatchedSolution:
    """Solve ``min sum_g ||x_g||_2 s.t. A x = b`` (groups: consecutive blocks of ``group_size``) for a batch.

    Defined in book/convex_geometry.md.

    A primal-dual interior-point method for the second-order-cone program ``min sum_g t_g`` over
    ``z_g = (t_g, x_g)`` in the cone ``||x_g|| <= t_g`` with ``A x = b``, using Nesterov-Todd scaling and
    Mehrotra's predictor-corrector. The Nesterov-Todd matrix of cone g is ``W = beta P(u)`` with ``P`` the
    quadratic representation; its inverse square restricted to ``x_g`` is ``(I + 2 v1 v1^T) / beta^2``,
    so the normal matrix is ``A H A^T = A diag(1/beta^2) A^T + U U^T`` with ``U_g = sqrt(2) A_g v1_g / beta_g``
    (one batched product plus a rank-G update). ``group_size = 1`` solves the l1 problem. Stopping rule
    and per-problem early stopping as in :func:`solve_l1_batched`; ``refine`` steps of iterative
    refinement polish each normal-equation solve.
    """
    A, b, single = _check_system(A, b)
    group_size = int_at_least(group_size, "group_size", 1)
    max_iter = int_at_least(max_iter, "max_iter", 1)
    if not (0 < tol < 1):
        raise ValueError(f"tol: expected 0 < tol < 1, got {tol!r}")
    B, m, d = A.shape
    if d % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide d = {d}")
    G, gs = d // group_size, group_size
    dev, dt = A.device, A.dtype
    out_x = torch.zeros(B, d, dtype=dt, device=dev)
    out_conv = torch.zeros(B, dtype=torch.bool, device=dev)
    out_iter = torch.full((B,), max_iter, dtype=torch.long, device=dev)
    if m == d:
        out_x = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
        out_conv[:] = True
        out_iter[:] = 0
        return _finish(out_x, out_conv, out_iter, single)

    # Start: minimum-norm x, t_g = ||x_g|| + offset (strictly inside the cone), y = 0, s = (1, 0).
    L0 = torch.linalg.cholesky(torch.bmm(A, A.transpose(1, 2)))
    x = _rmatvec(A, torch.cholesky_solve(b.unsqueeze(-1), L0).squeeze(-1)).view(B, G, gs)
    offset = x.norm(dim=-1).mean(dim=1, keepdim=True).clamp_min(1e-2)
    z = torch.cat([(x.norm(dim=-1) + offset).unsqueeze(-1), x], dim=-1)  # (B, G, gs + 1)
    s = torch.zeros_like(z)
    s[..., 0] = 1.0
    w = torch.zeros(B, d, dtype=dt, device=dev)  # A^T y
    e = torch.zeros(gs + 1, dtype=dt, device=dev)
    e[0] = 1.0
    jsign = 1.0 - 2.0 * torch.ones_like(e) + 2.0 * e  # the diagonal of J: (1, -1, ..., -1)
    bnorm = b.norm(dim=1)
    index = torch.arange(B, device=dev)
    rd_scale = 1 + math.sqrt(G)

    for it in range(max_iter):
        rp = b - _matvec(A, z[..., 1:].reshape(-1, d))
        rd = torch.cat([1.0 - s[..., :1], -w.view(-1, G, gs) - s[..., 1:]], dim=-1)  # c - A~^T y - s
        comp = (z * s).sum(dim=(1, 2))
        pobj = z[..., 0].sum(1)
        conv = (
            (rp.norm(dim=1) <= tol * (1 + bnorm))
            & (rd.flatten(1).norm(dim=1) <= tol * rd_scale)
            & (comp <= tol * (1 + pobj.abs()))
        )
        broken = ~torch.isfinite(comp) | ~torch.isfinite(rp).all(1)  # numerical breakdown: give up on it
        done = conv | broken
        if bool(done.any()):  # one host sync per iteration: the price of per-problem early stopping
            fin = index[done]
            out_x[fin] = z[done][..., 1:].reshape(-1, d)
            out_conv[fin] = conv[done]
            out_iter[fin] = it
            keep = ~done
            if not bool(keep.any()):
                break
            index, A, b, bnorm, z, s, w, rp, rd, comp = (
                t[keep] for t in (index, A, b, bnorm, z, s, w, rp, rd, comp))
        nb = A.shape[0]
        mu = comp / G

        # Nesterov-Todd scaling of every cone.
        zjz = _soc_det(z).clamp_min(torch.finfo(dt).tiny)
        sjs = _soc_det(s).clamp_min(torch.finfo(dt).tiny)
        zbar = z / zjz.sqrt().unsqueeze(-1)
        sbar = s / sjs.sqrt().unsqueeze(-1)
        gamma = torch.sqrt(0.5 * (1.0 + (zbar * sbar).sum(-1)))
        vv = (sbar + zbar * jsign) / (2.0 * gamma).unsqueeze(-1)  # P(v) zbar = sbar, v^T J v = 1
        beta = (sjs / zjz).pow(0.25).unsqueeze(-1)
        uu = (vv + e) / torch.sqrt(2.0 * (vv[..., :1] + 1.0))  # u o u = v: W = beta P(u)
        ju, jv = uu * jsign, vv * jsign

        def scale(r):  # W r = beta (2 u (u^T r) - J r)
            return beta * (2.0 * uu * (uu * r).sum(-1, keepdim=True) - r * jsign)

        def unscale(r):  # W^{-1} r = (1/beta) (2 J u (u^T J r) - J r)
            return (2.0 * ju * (ju * r).sum(-1, keepdim=True) - r * jsign) / beta

        def unscale2(r):  # W^{-2} r = (1/beta^2) (2 J v (v^T J r) - J r)
            return (2.0 * jv * (jv * r).sum(-1, keepdim=True) - r * jsign) / beta.square()

        lam = scale(z)
        # Normal matrix A H A^T, H_g = (I + 2 v1 v1^T) / beta^2 on group g.
        inv_beta = (1.0 / beta).squeeze(-1)  # (nb, G)
        Ag = A.view(nb, m, G, gs)
        U = (Ag * vv[..., 1:].unsqueeze(1)).sum(-1) * (math.sqrt(2.0) * inv_beta).unsqueeze(1)  # (nb, m, G)
        scaled = (Ag * inv_beta.square().view(nb, 1, G, 1)).reshape(nb, m, d)
        M = torch.baddbmm(torch.bmm(scaled, A.transpose(1, 2)), U, U.transpose(1, 2))
        L = _cholesky(M, regularization, keep=refine > 0)

        def direction(rc):
            # Solve A dx = rp, A~^T dy + ds = rd, W dz + W^{-1} ds = rc.
            h = unscale(rc) - unscale2(rd)
            rhs = rp - _matvec(A, h[..., 1:].reshape(nb, d))
            rhs = rhs.unsqueeze(-1)
            dy = torch.cholesky_solve(rhs, L)
            for _ in range(refine):  # iterative refinement against the unregularised matrix
                dy = dy + torch.cholesky_solve(rhs - torch.bmm(M, dy), L)
            dw = _rmatvec(A, dy.squeeze(-1)).view(nb, G, gs)
            at_dy = torch.cat([torch.zeros_like(dw[..., :1]), dw], dim=-1)
            return h + unscale2(at_dy), rd - at_dy, dw.reshape(nb, d)

        dz, ds, dw = direction(-lam)
        alpha = torch.minimum(_soc_max_step(z, dz), _soc_max_step(s, ds)).clamp(max=1.0).view(nb, 1, 1)
        comp_aff = ((z + alpha * dz) * (s + alpha * ds)).sum(dim=(1, 2))
        sigma = (comp_aff / comp).clamp(0.0, 1.0).pow(3)
        target = (sigma * mu).view(nb, 1, 1) * e
        corr = _soc_prod(unscale(ds), scale(dz))
        dz, ds, dw = direction(_soc_div(lam, target - _soc_prod(lam, lam) - corr))
        alpha = (step_fraction * torch.minimum(_soc_max_step(z, dz), _soc_max_step(s, ds))).clamp(max=1.0)
        alpha = alpha.view(nb, 1, 1)
        z = z + alpha * dz
        s = s + alpha * ds
        w = w + alpha.view(nb, 1) * dw
    else:
        out_x[index] = z[..., 1:].reshape(-1, d)

    return _finish(out_x, out_conv, out_iter, single)


# --------------------------------------------------------------------------- cvxpy references


def _as_numpy_batch(A, b):
    A = A.detach().cpu().numpy() if isinstance(A, torch.Tensor) else np.asarray(A, dtype=float)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=float)
    single = A.ndim == 2
    if single:
        A, b = A[None], b[None]
    if A.ndim != 3 or b.shape != A.shape[:2]:
        raise ValueError(f"A, b: expected shapes (B, m, d) and (B, m), got {A.shape} and {b.shape}")
    for label, arr in (("A", A), ("b", b)):
        if not np.isfinite(arr.astype(np.float64)).all():
            raise ValueError(f"{label}: contains NaN or Inf values; expected finite numbers")
    return A.astype(np.float64), b.astype(np.float64), single


def _cvxpy_loop(A, b, objective_of, solver: str, **solver_options):
    import cvxpy as cp

    A, b, single = _as_numpy_batch(A, b)
    B, m, d = A.shape
    x = cp.Variable(d)
    A_par, b_par = cp.Parameter((m, d)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(objective_of(x)), [A_par @ x == b_par])
    xs = np.zeros((B, d))
    statuses = []
    for i in range(B):
        A_par.value, b_par.value = A[i], b[i]
        try:
            with warnings.catch_warnings():
                # "Solution may be inaccurate": the status string ('optimal_inaccurate') says it per problem.
                warnings.simplefilter("ignore", UserWarning)
                problem.solve(solver=solver, **solver_options)
            statuses.append(problem.status)
            xs[i] = x.value if x.value is not None else np.nan
        except cp.error.SolverError:
            statuses.append("solver_error")
            xs[i] = np.nan
    return (xs[0], statuses[0]) if single else (xs, statuses)


def solve_l1_cvxpy(A, b, *, solver: str = "CLARABEL", **solver_options):
    """Reference: ``min ||x||_1 s.t. A x = b`` with cvxpy, one problem at a time; returns ``(x, statuses)``.

    Defined in book/convex_geometry.md.

    The problem is built once per shape with ``cp.Parameter`` (so only the solve repeats); ``x`` is a
    NumPy array ``(B, d)`` (NaN rows where the solver failed), statuses the cvxpy status strings.
    """
    import cvxpy as cp

    return _cvxpy_loop(A, b, cp.norm1, solver, **solver_options)


def solve_group_l1_cvxpy(A, b, group_size: int, *, solver: str = "CLARABEL", **solver_options):
    """Reference: ``min sum_g ||x_g||_2 s.t. A x = b`` with cvxpy (groups of ``group_size`` consecutive entries).

    """
    import cvxpy as cp

    group_size = int_at_least(group_size, "group_size", 1)
    d = (A.shape[-1])
    if d % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide d = {d}")
    G = d // group_size

    def objective(x):
        return cp.sum(cp.norm(cp.reshape(x, (G, group_size), order="C"), 2, axis=1))

    return _cvxpy_loop(A, b, objective, solver, **solver_options)


# --------------------------------------------------------------------------- grids


@dataclass
class PhaseGrid:
    """Empirical success probabilities over a grid of ``(m, k)``; rows index ``ks``, columns ``ms``.

    Defined in book/convex_geometry.md.
    """

    d: int
    group_size: int
    ms: list[int]
    ks: list[int]
    trials: int
    success: np.ndarray  # (len(ks), len(ms)) fraction of trials recovered
    converged: np.ndarray  # (len(ks), len(ms)) fraction of trials whose solver converged
    mean_iterations: np.ndarray  # (len(ks), len(ms))
    success_tol: float
    solver: str
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # e.g. the error ranges of recovered and failed trials

    @property
    def num_groups(self) -> int:
        return self.d // self.group_size

    def to_dict(self) -> dict:
        """JSON-friendly form (lists) for :func:`pruninglab.runtime.save_result`."""
        return {
            "d": self.d, "group_size": self.group_size, "ms": list(self.ms), "ks": list(self.ks),
            "trials": self.trials, "success": self.success.tolist(), "converged": self.converged.tolist(),
            "mean_iterations": self.mean_iterations.tolist(), "success_tol": self.success_tol,
            "solver": self.solver, "seconds": self.seconds, "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "PhaseGrid":
        return cls(d=int(data["d"]), group_size=int(data["group_size"]), ms=[int(v) for v in data["ms"]],
                   ks=[int(v) for v in data["ks"]], trials=int(data["trials"]),
                   success=np.asarray(data["success"], dtype=float),
                   converged=np.asarray(data["converged"], dtype=float),
                   mean_iterations=np.asarray(data["mean_iterations"], dtype=float),
                   success_tol=float(data["success_tol"]), solver=str(data["solver"]),
                   seconds=float(data.get("seconds", 0.0)), extra=dict(data.get("extra", {})))


def phase_transition_grid(
    d: int,
    ms: Sequence[int],
    ks: Sequence[int],
    trials: int,
    *,
    group_size: int = 1,
    solver: str = "torch",
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    success_tol: float = 1e-4,
    progress: bool | None = None,
) -> PhaseGrid:
    """Empirical probability of exact recovery over a grid of measurements ``ms`` and sparsities ``ks``.

    Defined in book/convex_geometry.md.

    For each ``m`` one batch holds ``trials`` independent problems for every ``k`` (``k`` nonzero
    groups of ``group_size``; coordinates when ``group_size = 1``), solved together by
    :func:`solve_l1_batched` / :func:`solve_group_l1_batched` (``solver="torch"``) or one by one with
    cvxpy (``solver="cvxpy"``). Problems come from one CPU generator seeded with ``seed``, so every
    solver and device sees the same problems.
    """
    import time

    d = int_at_least(d, "d", 1)
    trials = int_at_least(trials, "trials", 1)
    group_size = int_at_least(group_size, "group_size", 1)
    if d % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide d = {d}")
    if solver not in ("torch", "cvxpy"):
        raise ValueError(f"solver: expected 'torch' or 'cvxpy', got {solver!r}")
    ms = [int_at_least(v, "ms", 1) for v in ms]
    ks = [int_at_least(v, "ks", 0) for v in ks]
    if not ms or not ks:
        raise ValueError("ms, ks: expected non-empty sequences")
    if max(ms) > d:
        raise ValueError(f"ms: expected values <= d = {d}, got {max(ms)}")
    if max(ks) > d // group_size:
        raise ValueError(f"ks: expected values <= {d // group_size} (the number of groups), got {max(ks)}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(int(seed))
    success = np.zeros((len(ks), len(ms)))
    converged = np.zeros((len(ks), len(ms)))
    iters = np.zeros((len(ks), len(ms)))
    k_batch = torch.tensor(ks, dtype=torch.long).repeat_interleave(trials)
    steps = ms
    if progress_enabled(progress):
        from tqdm.auto import tqdm  # imported only when shown (it warns in kernels without widgets)

        steps = tqdm(ms, desc=f"phase grid d={d}")
    worst_recovered, best_failed = 0.0, math.inf
    t0 = time.perf_counter()
    for j, m in enumerate(steps):
        prob = sample_recovery_problems(len(k_batch), m, d, k_batch, group_size=group_size, generator=gen,
                                        device=dev, dtype=dtype)
        if solver == "torch":
            if group_size == 1:
                sol = solve_l1_batched(prob.A, prob.b)
            else:
                sol = solve_group_l1_batched(prob.A, prob.b, group_size)
            x, conv, its = sol.x, sol.converged, sol.iterations.to(dtype)
        else:
            if group_size == 1:
                xs, statuses = solve_l1_cvxpy(prob.A, prob.b)
            else:
                xs, statuses = solve_group_l1_cvxpy(prob.A, prob.b, group_size)
            x = torch.as_tensor(xs, dtype=dtype, device=dev)
            conv = torch.tensor([st == "optimal" for st in statuses], device=dev)
            its = torch.full((len(statuses),), float("nan"), dtype=dtype, device=dev)
        x = torch.nan_to_num(x, nan=math.inf)
        ok = recovery_success(x, prob.x0, success_tol)
        err = relative_error(x, prob.x0)
        if bool(ok.any()):
            worst_recovered = max(worst_recovered, float(err[ok].max()))
        if bool((~ok).any()):
            best_failed = min(best_failed, float(err[~ok].min()))
        success[:, j] = ok.view(len(ks), trials).to(torch.float64).mean(1).cpu().numpy()
        converged[:, j] = conv.view(len(ks), trials).to(torch.float64).mean(1).cpu().numpy()
        iters[:, j] = its.view(len(ks), trials).mean(1).cpu().numpy()
    return PhaseGrid(d=d, group_size=group_size, ms=ms, ks=ks, trials=trials, success=success,
                     converged=converged, mean_iterations=iters, success_tol=success_tol, solver=solver,
                     seconds=time.perf_counter() - t0,
                     extra={"largest_error_recovered": worst_recovered, "smallest_error_failed": best_failed})


def transition_points(grid: PhaseGrid, level: float = 0.5) -> np.ndarray:
    """For each ``k`` of ``grid``, the ``m`` where the empirical success first reaches ``level``.

    Defined in book/convex_geometry.md.

    Linear interpolation between the last grid ``m`` below ``level`` and the first at or above it; NaN
    when the success curve never crosses ``level`` inside the grid.
    """
    if not (0 < level < 1):
        raise ValueError(f"level: expected 0 < level < 1, got {level!r}")
    out = np.full(len(grid.ks), np.nan)
    ms = np.asarray(grid.ms, dtype=float)
    for i, row in enumerate(grid.success):
        above = np.nonzero(row >= level)[0]
        if above.size == 0:
            continue
        j = int(above[0])
        if j == 0:
            out[i] = ms[0] if row[0] == level else np.nan
            continue
        lo, hi = row[j - 1], row[j]
        out[i] = ms[j - 1] + (level - lo) / (hi - lo) * (ms[j] - ms[j - 1])
    return out


def predicted_transition(d: int, ks: Sequence[int], group_size: int = 1) -> np.ndarray:
    """The kinematic prediction ``m* = delta`` for each ``k`` (tau-formula statistical dimension).

    Defined in book/convex_geometry.md.
    """
    d = int_at_least(d, "d", 1)
    group_size = int_at_least(group_size, "group_size", 1)
    if d % group_size != 0:
        raise ValueError(f"group_size: {group_size} does not divide d = {d}")
    return np.array([statistical_dimension_group_l1(d // group_size, int(k), group_size) for k in ks])
