"""The theory behind SequentialAttention++: masks as penalties, group LASSO, subadditive penalties, OMPR.

Defined in book/sapp_theory.md.

Everything here works on a small *group least-squares* problem

$$\\mathcal L(\\beta) = \\tfrac{1}{2n}\\lVert X\\beta - y\\rVert^2 + \\tfrac{\\rho}{2}\\lVert\\beta\\rVert^2,$$

strictly convex thanks to the ridge $\\rho > 0$, with the coordinates of $\\beta$ split into disjoint
groups (the blocks of a weight matrix). The arrays are NumPy float64: these are exactness checks
of a theorem with cvxpy as the reference, not training code.

- Mask/penalty identities (Yasuda et al. 2024, Lemmas 2.1-2.3): :func:`mask_penalty` (closed forms)
  and :func:`mask_penalty_by_minimisation` (the 1-D minimisation over the mask).
- Group LASSO: :class:`GroupLassoSolver` (cvxpy, one compiled problem, ``lam`` a ``cp.Parameter``),
  :func:`group_lasso_tau`, :func:`one_group_solution` (semi-analytic), :func:`group_lasso_kkt_residual`.
- Problem (1) with a subadditive ``q``: :func:`penalized_objective`, :func:`local_solve_penalized`,
  :func:`random_start_search`, :func:`support_search`, :func:`grid_search_penalized` (exhaustive).
- :func:`ompr` (Appendix B, Algorithm 2) and :func:`best_subset` (exhaustive reference).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, special


def _single_threaded_blas(fn):
    """Run ``fn`` with one BLAS thread: these problems are tiny, and on a shared machine a second
    OpenBLAS thread that waits for a busy core made each L-BFGS step ~100x slower (measured)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        threadpool_limits = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
        with ctx:
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- mask/penalty identities

MASK_KINDS = ("identity", "exponential", "l1", "powerprop")


def lambert_q(a):
    """Lemma 2.1's penalty $q(a) = \\tfrac14 W(2a^2)^2 + \\tfrac12 W(2a^2)$ (``W`` = Lambert W).

    Defined in book/sapp_theory.md.

    It is $\\min_w\\, w^2 + a^2 e^{-2w}$: the exponential mask $e^{w}$ on a group of norm $a$ with an
    $\\ell_2$ penalty on mask and weights. Vectorised over ``a >= 0``.
    """
    a = np.asarray(a, dtype=float)
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError("a: expected finite group norms >= 0")
    w = special.lambertw(2.0 * a**2).real
    return 0.25 * w**2 + 0.5 * w


def mask_penalty(kind: str, a):
    """The group penalty that a mask with an $\\ell_2$ (or $\\ell_1$) penalty turns into, in closed form.

    Defined in book/sapp_theory.md.

    - ``"identity"``: mask $w$, penalty $\\tfrac12(w^2+\\lVert\\beta\\rVert^2)$ gives $a$ (group LASSO);
    - ``"exponential"``: mask $e^{w}$, penalty $w^2+\\lVert\\beta\\rVert^2$ gives :func:`lambert_q` (Lemma 2.1);
    - ``"l1"``: mask $w$, penalty $|w|+\\lVert\\beta\\rVert^2$ gives $\\tfrac32 2^{1/3} a^{2/3}$ (Lemma 2.2);
    - ``"powerprop"``: $u_T=\\lVert\\beta_T\\rVert\\beta_T$, penalty $\\lVert\\beta\\rVert^2$ gives $a$ (Lemma 2.3).

    ``a`` is the group norm of the effective weights $u$.
    """
    a = np.asarray(a, dtype=float)
    if np.any(a < 0) or not np.all(np.isfinite(a)):
        raise ValueError("a: expected finite group norms >= 0")
    if kind in ("identity", "powerprop"):
        return a.copy()
    if kind == "exponential":
        return lambert_q(a)
    if kind == "l1":
        return 1.5 * 2.0 ** (1.0 / 3.0) * a ** (2.0 / 3.0)
    raise ValueError(f"kind: expected one of {', '.join(MASK_KINDS)}, got {kind!r}")


def mask_penalty_by_minimisation(kind: str, a: float) -> tuple[float, float]:
    """Minimise the mask out numerically: returns ``(penalty, optimal mask value)`` for one norm ``a``.

    Defined in book/sapp_theory.md.

    The weights of a group with effective norm $a$ and mask $w$ have norm $a/m(w)$, so the penalty
    is a 1-D function of $w$ (bounded Brent search, tolerance 1e-12):

    - identity: $\\tfrac12(w^2 + a^2/w^2)$; exponential: $w^2 + a^2 e^{-2w}$; l1: $w + a^2/w^2$.

    ``"powerprop"`` has no free mask (the group's own norm is the mask), so it is not accepted
    here; the chapter checks Lemma 2.3 by gradient descent instead.
    """
    if not (isinstance(a, (int, float, np.floating)) and a > 0 and math.isfinite(a)):
        raise ValueError(f"a: expected one positive finite group norm, got {a!r}")
    a = float(a)
    if kind == "identity":
        f, lo, hi = (lambda w: 0.5 * (w * w + a * a / (w * w))), 1e-9, 10.0 * (1.0 + a)
    elif kind == "exponential":
        f, lo, hi = (lambda w: w * w + a * a * math.exp(-2.0 * w)), -10.0, 10.0 + a
    elif kind == "l1":
        f, lo, hi = (lambda w: w + a * a / (w * w)), 1e-9, 10.0 * (1.0 + a)
    else:
        raise ValueError(f"kind: expected 'identity', 'exponential' or 'l1', got {kind!r}")
    res = optimize.minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    return float(res.fun), float(res.x)


# --------------------------------------------------------------------------- subadditive penalties


@dataclass(frozen=True)
class Penalty:
    """A strictly increasing penalty ``q`` on $[0,\\infty)$ with its inverse and both derivatives.

    """

    name: str
    q: Callable
    q_inv: Callable
    dq: Callable
    dq_inv: Callable


PENALTIES: dict[str, Penalty] = {
    "identity": Penalty("identity", lambda x: x, lambda s: s, lambda x: np.ones_like(x), lambda s: np.ones_like(s)),
    "sqrt": Penalty("sqrt", np.sqrt, lambda s: s * s, lambda x: 0.5 / np.sqrt(x), lambda s: 2.0 * s),
    "log1p": Penalty("log1p", np.log1p, np.expm1, lambda x: 1.0 / (1.0 + x), np.exp),
}


def penalty(name: str | Penalty) -> Penalty:
    """Look up a penalty by name (``"identity"``, ``"sqrt"``, ``"log1p"``) or pass a :class:`Penalty`.

    Defined in book/sapp_theory.md.
    """
    if isinstance(name, Penalty):
        return name
    if name not in PENALTIES:
        raise ValueError(f"q: expected one of {', '.join(PENALTIES)} or a Penalty, got {name!r}")
    return PENALTIES[name]


def subadditivity_gap(q: Callable, xs) -> tuple[float, float, float]:
    """The largest $q(x+y) - q(x) - q(y)$ over ``x, y`` in the grid ``xs``, and where it occurs.

    Defined in book/sapp_theory.md.

    Returns ``(gap, x, y)``; a positive gap means ``q`` is **not** subadditive on the grid.
    """
    xs = np.asarray(xs, dtype=float)
    if xs.ndim != 1 or xs.size == 0 or np.any(xs < 0):
        raise ValueError("xs: expected a non-empty 1-D grid of values >= 0")
    x, y = np.meshgrid(xs, xs, indexing="ij")
    gap = q(x + y) - q(x) - q(y)
    i, j = np.unravel_index(int(np.argmax(gap)), gap.shape)
    return float(gap[i, j]), float(xs[i]), float(xs[j])


# --------------------------------------------------------------------------- the problem


def contiguous_groups(sizes: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Index arrays of consecutive groups with the given sizes.

    """
    if len(sizes) == 0 or any((not isinstance(s, (int, np.integer))) or s < 1 for s in sizes):
        raise ValueError(f"sizes: expected a non-empty list of positive group sizes, got {sizes!r}")
    ends = np.cumsum(sizes)
    return tuple(np.arange(e - s, e) for s, e in zip(sizes, ends))


@dataclass(frozen=True)
class GroupLeastSquares:
    """$\\mathcal L(\\beta)=\\frac{1}{2n}\\lVert X\\beta-y\\rVert^2+\\frac{\\rho}{2}\\lVert\\beta\\rVert^2$ with groups.

    """

    X: np.ndarray
    y: np.ndarray
    groups: tuple[np.ndarray, ...]
    ridge: float

    def __post_init__(self):
        X, y = np.asarray(self.X, dtype=float), np.asarray(self.y, dtype=float)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X, y: expected shapes (n, d) and (n,), got {X.shape} and {y.shape}")
        if not self.ridge > 0:
            raise ValueError(f"ridge: expected > 0 (it makes the loss strictly convex), got {self.ridge!r}")
        flat = np.concatenate([np.asarray(g) for g in self.groups]) if self.groups else np.array([])
        if np.sort(flat).tolist() != list(range(X.shape[1])):
            raise ValueError(f"groups: expected disjoint index arrays covering 0..{X.shape[1] - 1} exactly")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def hessian(self) -> np.ndarray:
        return self.X.T @ self.X / self.n + self.ridge * np.eye(self.dim)

    def loss(self, beta: np.ndarray) -> float:
        r = self.X @ beta - self.y
        return float(r @ r / (2 * self.n) + 0.5 * self.ridge * beta @ beta)

    def grad(self, beta: np.ndarray) -> np.ndarray:
        return self.X.T @ (self.X @ beta - self.y) / self.n + self.ridge * beta


def make_group_least_squares(
    n_samples: int = 60,
    n_groups: int = 20,
    group_size: int = 4,
    n_true: int = 3,
    noise: float = 0.1,
    ridge: float = 1e-3,
    seed: int = 0,
) -> GroupLeastSquares:
    """A random group least-squares problem: Gaussian ``X``, ``n_true`` groups carry signal.

    Defined in book/sapp_theory.md.
    """
    for nm, v in (("n_samples", n_samples), ("n_groups", n_groups), ("group_size", group_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm}: expected a positive int, got {v!r}")
    if not (isinstance(n_true, int) and 0 <= n_true <= n_groups):
        raise ValueError(f"n_true: expected an int in [0, n_groups={n_groups}], got {n_true!r}")
    rng = np.random.default_rng(seed)
    groups = contiguous_groups([group_size] * n_groups)
    d = n_groups * group_size
    X = rng.standard_normal((n_samples, d))
    beta = np.zeros(d)
    for g in rng.choice(n_groups, size=n_true, replace=False):
        beta[groups[g]] = rng.standard_normal(group_size) * rng.uniform(0.5, 2.0)
    y = X @ beta + noise * rng.standard_normal(n_samples)
    return GroupLeastSquares(X, y, groups, ridge)


def group_norms(problem: GroupLeastSquares, beta: np.ndarray) -> np.ndarray:
    """$\\lVert\\beta|_{T_i}\\rVert_2$ for every group.

    Defined in book/sapp_theory.md.
    """
    beta = np.asarray(beta, dtype=float)
    if beta.shape != (problem.dim,):
        raise ValueError(f"beta: expected shape ({problem.dim},), got {beta.shape}")
    return np.array([np.linalg.norm(beta[g]) for g in problem.groups])


def support(problem: GroupLeastSquares, beta: np.ndarray, tol: float = 1e-6) -> list[int]:
    """The groups whose norm exceeds ``tol`` times the largest group norm (solver zeros are ~1e-9).

    Defined in book/sapp_theory.md.
    """
    norms = group_norms(problem, beta)
    top = norms.max()
    return [] if top == 0 else [int(i) for i in np.flatnonzero(norms > tol * max(top, 1.0))]


def group_lasso_tau(problem: GroupLeastSquares) -> tuple[float, int]:
    """$\\tau = \\max_i \\lVert\\nabla\\mathcal L(0)|_{T_i}\\rVert_2$ and the arg-max group.

    Defined in book/sapp_theory.md.

    For $\\lambda \\ge \\tau$ the group-LASSO minimiser is 0; just below, it is the arg-max group
    alone (one step of group orthogonal matching pursuit).
    """
    norms = group_norms(problem, problem.grad(np.zeros(problem.dim)))
    j = int(np.argmax(norms))
    return float(norms[j]), j


def group_lasso_objective(problem: GroupLeastSquares, beta: np.ndarray, lam: float) -> float:
    """Problem (2): $\\mathcal L(\\beta) + \\lambda\\sum_i\\lVert\\beta|_{T_i}\\rVert_2$.

    Defined in book/sapp_theory.md.
    """
    return problem.loss(beta) + lam * float(group_norms(problem, beta).sum())


class GroupLassoSolver:
    """The group LASSO (2) compiled once in cvxpy with $\\lambda$ a ``cp.Parameter``; ``solve(lam)``.

    Defined in book/sapp_theory.md.

    ``solver`` is named explicitly (default CLARABEL, an interior-point conic solver); a status
    other than ``optimal`` raises ``RuntimeError``. ``last_status`` and ``last_solve_time`` keep
    the latest solve's status and solver time.
    """

    def __init__(self, problem: GroupLeastSquares, solver: str = "CLARABEL", **solver_options):
        import cvxpy as cp

        if solver not in cp.installed_solvers():
            raise ValueError(f"solver: {solver!r} is not installed; installed: {', '.join(cp.installed_solvers())}")
        self.problem, self.solver, self.solver_options = problem, solver, solver_options
        self.beta = cp.Variable(problem.dim)
        self.lam = cp.Parameter(nonneg=True)
        loss = cp.sum_squares(problem.X @ self.beta - problem.y) / (2 * problem.n)
        loss = loss + 0.5 * problem.ridge * cp.sum_squares(self.beta)
        pen = sum(cp.norm(self.beta[g], 2) for g in problem.groups)
        self.cp_problem = cp.Problem(cp.Minimize(loss + self.lam * pen))
        self.last_status: str | None = None
        self.last_solve_time: float | None = None

    def solve(self, lam: float) -> np.ndarray:
        import cvxpy as cp

        if not (isinstance(lam, (int, float, np.floating)) and lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam: expected a finite value >= 0, got {lam!r}")
        self.lam.value = float(lam)
        self.cp_problem.solve(solver=self.solver, verbose=False, **self.solver_options)
        self.last_status = self.cp_problem.status
        self.last_solve_time = self.cp_problem.solver_stats.solve_time
        if self.cp_problem.status != cp.OPTIMAL:
            raise RuntimeError(f"group LASSO at lam={lam}: solver {self.solver} returned status {self.cp_problem.status!r}")
        return np.asarray(self.beta.value, dtype=float).copy()


def one_group_solution(problem: GroupLeastSquares, lam: float, group: int) -> np.ndarray:
    """The group-LASSO minimiser restricted to one group, semi-analytically (no cvxpy).

    Defined in book/sapp_theory.md.

    On group $T$ with $H=\\nabla^2\\mathcal L|_{TT}$, $b=-\\nabla\\mathcal L(0)|_T$: zero if
    $\\lVert b\\rVert\\le\\lambda$, else $\\beta_T=(H+\\tfrac{\\lambda}{r}I)^{-1}b$ with the radius
    $r=\\lVert\\beta_T\\rVert$ the root of $\\sum_k c_k^2/(\\mu_k r+\\lambda)^2=1$ ($H=V\\,\\mathrm{diag}(\\mu)V^\\top$,
    $c=V^\\top b$), found by Brent's method. If every other group's gradient norm at this point is
    below $\\lambda$ (see :func:`group_lasso_kkt_residual`), it is the minimiser of (2) itself.
    """
    if not (isinstance(group, (int, np.integer)) and 0 <= group < problem.n_groups):
        raise ValueError(f"group: expected an index in [0, {problem.n_groups}), got {group!r}")
    if not lam > 0:
        raise ValueError(f"lam: expected > 0, got {lam!r}")
    g = problem.groups[group]
    beta = np.zeros(problem.dim)
    b = -problem.grad(beta)[g]
    if np.linalg.norm(b) <= lam:
        return beta
    mu, V = np.linalg.eigh(problem.hessian()[np.ix_(g, g)])
    c = V.T @ b

    def psi(r):
        return float(np.sum(c**2 / (mu * r + lam) ** 2) - 1.0)

    hi = np.linalg.norm(c) / mu.min() + 1.0  # psi(hi) < 0 since mu*hi > |c|
    r = optimize.brentq(psi, 0.0, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    beta[g] = V @ (c * r / (mu * r + lam))
    return beta


def group_lasso_kkt_residual(problem: GroupLeastSquares, beta: np.ndarray, lam: float, tol: float = 1e-9) -> dict:
    """How far ``beta`` is from the group-LASSO optimality conditions at ``lam``.

    Defined in book/sapp_theory.md.

    Nonzero group: $\\nabla_T\\mathcal L + \\lambda\\beta_T/\\lVert\\beta_T\\rVert = 0$; zero group:
    $\\lVert\\nabla_T\\mathcal L\\rVert \\le \\lambda$. Returns the largest residual of each kind and the
    *margin* $\\lambda - \\max_{\\text{zero groups}}\\lVert\\nabla_T\\mathcal L\\rVert$ (positive = strict).
    """
    beta = np.asarray(beta, dtype=float)
    grad = problem.grad(beta)
    active_res, zero_norms = 0.0, [0.0]
    for g in problem.groups:
        nb = np.linalg.norm(beta[g])
        if nb > tol:
            active_res = max(active_res, float(np.linalg.norm(grad[g] + lam * beta[g] / nb)))
        else:
            zero_norms.append(float(np.linalg.norm(grad[g])))
    return {"active_residual": active_res, "zero_margin": lam - max(zero_norms)}


@_single_threaded_blas
def powerprop_solve(problem: GroupLeastSquares, lam: float, beta0: np.ndarray, max_iter: int = 5000) -> np.ndarray:
    r"""Lemma 2.3 by descent: minimise $\mathcal L(u(\beta)) + \lambda\lVert\beta\rVert^2$ with $u_T=\lVert\beta_T\rVert\beta_T$.

    Defined in book/sapp_theory.md.

    A smooth non-convex problem, solved by L-BFGS from ``beta0``; returns the effective weights
    $u$, to compare with the group-LASSO minimiser at the same $\lambda$ (Lemma 2.3 says the
    optimal values agree).
    """
    beta0 = np.asarray(beta0, dtype=float)
    if beta0.shape != (problem.dim,):
        raise ValueError(f"beta0: expected shape ({problem.dim},), got {beta0.shape}")
    sizes = np.array([len(g) for g in problem.groups])
    order = np.concatenate(problem.groups)  # group-contiguous layout for reduceat
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def f(z):
        norms = np.sqrt(np.add.reduceat(z * z, starts))
        u = np.empty_like(z)
        u[order] = np.repeat(norms, sizes) * z
        g = problem.grad(u)[order]
        value = problem.loss(u) + lam * float(z @ z)
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = np.where(norms > 0, np.add.reduceat(z * g, starts) / norms, 0.0)
        grad = np.repeat(norms, sizes) * g + np.repeat(proj, sizes) * z + 2.0 * lam * z
        return value, grad

    res = optimize.minimize(f, beta0[order], jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "gtol": 1e-12, "ftol": 1e-15})
    z = res.x
    norms = np.sqrt(np.add.reduceat(z * z, starts))
    u = np.empty_like(z)
    u[order] = np.repeat(norms, sizes) * z
    return u


# --------------------------------------------------------------------------- problem (1)


def penalized_objective(problem: GroupLeastSquares, beta: np.ndarray, lam: float, q: str | Penalty = "sqrt") -> float:
    """Problem (1): $\\mathcal L(\\beta) + \\lambda\\, q^{-1}\\big(\\sum_i q(\\lVert\\beta|_{T_i}\\rVert_2)\\big)$.

    Defined in book/sapp_theory.md.
    """
    pen = penalty(q)
    return problem.loss(beta) + lam * float(pen.q_inv(np.sum(pen.q(group_norms(problem, beta)))))


def _objective_and_grad(problem: GroupLeastSquares, lam: float, pen: Penalty, idx: np.ndarray, sizes: Sequence[int]):
    """(1) as a function of the coordinates ``idx`` only (the rest fixed at 0), with its gradient.

    The local groups are consecutive slices of the sub-vector with the given ``sizes``.
    """
    H = problem.hessian()[np.ix_(idx, idx)]
    b = (problem.X.T @ problem.y / problem.n)[idx]
    c0 = float(problem.y @ problem.y / (2 * problem.n))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    sizes = np.asarray(sizes)

    def f(z):
        norms = np.sqrt(np.add.reduceat(z * z, starts))
        s = np.sum(pen.q(norms))
        Hz = H @ z
        value = 0.5 * z @ Hz - b @ z + c0 + lam * float(pen.q_inv(s))
        grad = Hz - b
        # q may have an infinite slope at 0 (sqrt): zero groups contribute no gradient (subgradient 0).
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(norms > 0, lam * pen.dq_inv(s) * pen.dq(norms) / norms, 0.0)
        grad += np.repeat(scale, sizes) * z
        return value, grad

    return f


@_single_threaded_blas
def local_solve_penalized(
    problem: GroupLeastSquares,
    lam: float,
    q: str | Penalty,
    beta0: np.ndarray,
    groups: Sequence[int] | None = None,
    max_iter: int = 500,
) -> tuple[np.ndarray, float]:
    """A local minimiser of (1) from ``beta0``: L-BFGS, then zeroing groups where that lowers (1).

    ``groups`` restricts the search to those groups (the others stay 0). The penalty is not smooth
    where a group is zero, and L-BFGS only approaches such points, so afterwards the smallest group
    whose exact zeroing does not increase the objective is set to 0 and L-BFGS is rerun on the
    groups left, until no group can be zeroed. If that ends at 0 although a group's gradient norm there
    exceeds ``lam`` (so 0 is not a local minimiser), it continues inside that group. A local solve is a heuristic; the theorem is the guarantee.
    """
    pen = penalty(q)
    beta0 = np.asarray(beta0, dtype=float)
    if beta0.shape != (problem.dim,):
        raise ValueError(f"beta0: expected shape ({problem.dim},), got {beta0.shape}")
    sel = list(range(problem.n_groups)) if groups is None else sorted(int(g) for g in groups)
    beta = np.zeros(problem.dim)
    opts = {"maxiter": max_iter, "gtol": 1e-10}
    while sel:
        idx = np.concatenate([problem.groups[g] for g in sel])
        f = _objective_and_grad(problem, lam, pen, idx, [len(problem.groups[g]) for g in sel])
        z0 = beta0[idx] if not beta.any() else beta[idx]
        z = optimize.minimize(f, z0, jac=True, method="L-BFGS-B", options=opts).x
        val = f(z)[0]
        offsets = np.cumsum([0] + [len(problem.groups[g]) for g in sel])
        norms = np.array([np.linalg.norm(z[offsets[i]:offsets[i + 1]]) for i in range(len(sel))])
        dropped = None
        for i in np.argsort(norms):  # try an exact zero, smallest group first; one group per pass
            trial = z.copy()
            trial[offsets[i]:offsets[i + 1]] = 0.0
            if f(trial)[0] <= val:
                z, dropped = trial, sel[i]
                break
        beta = np.zeros(problem.dim)
        beta[idx] = z
        if dropped is None:
            break
        sel = [g for g in sel if g != dropped]
    if not beta.any():
        # At 0 every q here has (q^-1)(q(t)) = t along one group, slope lam; a group whose gradient
        # norm at 0 exceeds lam is a descent direction, so 0 is not a local minimiser: step into it.
        allowed = list(range(problem.n_groups)) if groups is None else sorted(int(g) for g in groups)
        grad0 = -problem.X.T @ problem.y / problem.n
        gnorms = [np.linalg.norm(grad0[problem.groups[g]]) for g in allowed]
        best = int(np.argmax(gnorms))
        if gnorms[best] > lam:
            g = allowed[best]
            start = np.zeros(problem.dim)
            start[problem.groups[g]] = -1e-3 * grad0[problem.groups[g]]
            return local_solve_penalized(problem, lam, pen, start, groups=[g], max_iter=max_iter)
    return beta, penalized_objective(problem, beta, lam, pen)


@_single_threaded_blas
def random_start_search(
    problem: GroupLeastSquares, lam: float, q: str | Penalty, n_starts: int = 20, scale: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, list[float]]:
    """Local solves of (1) from ``n_starts`` random Gaussian starts; the best point and all values.

    Defined in book/sapp_theory.md.
    """
    if not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"n_starts: expected a positive int, got {n_starts!r}")
    rng = np.random.default_rng(seed)
    best, best_val, values = None, math.inf, []
    for _ in range(n_starts):
        beta, val = local_solve_penalized(problem, lam, q, scale * rng.standard_normal(problem.dim))
        values.append(val)
        if val < best_val:
            best, best_val = beta, val
    return best, values


@_single_threaded_blas
def support_search(
    problem: GroupLeastSquares,
    lam: float,
    q: str | Penalty,
    max_groups: int = 2,
    starts_per_support: int = 2,
    seed: int = 0,
) -> dict[int, tuple[float, tuple[int, ...]]]:
    """For each support size up to ``max_groups``, the best value of (1) over **every** support of that size.

    Defined in book/sapp_theory.md.

    Size 0 is exact; size 1 is convex ($q^{-1}(q(r)) = r$: the one-group group LASSO, solved
    semi-analytically); larger supports use local solves from ``starts_per_support`` random starts.
    Returns ``{size: (best value, best support)}``.
    """
    if not isinstance(max_groups, int) or not 0 <= max_groups <= problem.n_groups:
        raise ValueError(f"max_groups: expected an int in [0, {problem.n_groups}], got {max_groups!r}")
    pen = penalty(q)
    rng = np.random.default_rng(seed)
    out = {0: (penalized_objective(problem, np.zeros(problem.dim), lam, pen), ())}
    for size in range(1, max_groups + 1):
        best = (math.inf, ())
        for supp in itertools.combinations(range(problem.n_groups), size):
            if size == 1:
                val = penalized_objective(problem, one_group_solution(problem, lam, supp[0]), lam, pen)
            else:
                val = min(
                    local_solve_penalized(problem, lam, pen, rng.standard_normal(problem.dim), groups=supp)[1]
                    for _ in range(starts_per_support)
                )
            if val < best[0]:
                best = (val, supp)
        out[size] = best
    return out


@_single_threaded_blas
def grid_search_penalized(
    problem: GroupLeastSquares, lam: float, q: str | Penalty, radius: float, points: int = 161, chunk: int = 200_000
) -> tuple[np.ndarray, float]:
    """Exhaustive minimisation of (1) over a grid on $[-r, r]^d$ (``d <= 3``), then a local polish.

    Defined in book/sapp_theory.md.

    The grid has an odd number of points per axis, so 0 is on it for every coordinate; the best
    grid point is polished by :func:`local_solve_penalized`. A global search for tiny problems, where
    (1) is non-convex and a local solve proves nothing.
    """
    if problem.dim > 3:
        raise ValueError(f"problem: the grid search is for dim <= 3, got dim={problem.dim}")
    if not isinstance(points, int) or points < 3 or points % 2 == 0:
        raise ValueError(f"points: expected an odd int >= 3 (so 0 is a grid point), got {points!r}")
    pen = penalty(q)
    H, b = problem.hessian(), problem.X.T @ problem.y / problem.n
    c0 = float(problem.y @ problem.y / (2 * problem.n))
    axis = np.linspace(-radius, radius, points)
    best_val, best = math.inf, None
    total = points**problem.dim
    for start in range(0, total, chunk):
        flat = np.arange(start, min(start + chunk, total))
        Z = np.stack([axis[(flat // points**k) % points] for k in range(problem.dim)], axis=1)
        loss = 0.5 * np.einsum("ni,ij,nj->n", Z, H, Z) - Z @ b + c0
        norms = np.stack([np.linalg.norm(Z[:, g], axis=1) for g in problem.groups], axis=1)
        vals = loss + lam * pen.q_inv(pen.q(norms).sum(axis=1))
        i = int(np.argmin(vals))
        if vals[i] < best_val:
            best_val, best = float(vals[i]), Z[i].copy()
    grid_support = [g for g, idx in enumerate(problem.groups) if np.any(best[idx] != 0)]
    polished, val = local_solve_penalized(problem, lam, pen, best, groups=grid_support)
    return (polished, val) if val <= best_val else (best, best_val)


# --------------------------------------------------------------------------- OMPR (Appendix B)


def restricted_minimiser(problem: GroupLeastSquares, groups: Sequence[int]) -> np.ndarray:
    """$\\arg\\min \\mathcal L$ over $\\beta$ supported on ``groups`` (no penalty), in closed form.

    """
    beta = np.zeros(problem.dim)
    if len(groups) == 0:
        return beta
    idx = np.concatenate([problem.groups[int(g)] for g in sorted(groups)])
    H = problem.hessian()[np.ix_(idx, idx)]
    beta[idx] = np.linalg.solve(H, (problem.X.T @ problem.y / problem.n)[idx])
    return beta


@dataclass
class OMPRResult:
    """Output of :func:`ompr`: the final and the best support, and the loss after each round.

    """

    support: tuple[int, ...]
    loss: float
    best_support: tuple[int, ...]
    best_loss: float
    history: list[float] = field(default_factory=list)


@_single_threaded_blas
def ompr(problem: GroupLeastSquares, k: int, rounds: int, start: Sequence[int] | None = None, seed: int = 0) -> OMPRResult:
    """Orthogonal matching pursuit with replacement over groups (Appendix B, Algorithm 2).

    Defined in book/sapp_theory.md.

    Each round solves (1) penalising only the groups outside the current support $S$ with
    $\\lambda$ just below their largest gradient norm; by Theorem 1.1 that adds exactly the outside
    group with the largest gradient norm at the restricted minimiser (so it is computed that way).
    Then the group of $S$ with the smallest norm in the refit is dropped. ``start`` defaults to
    ``k`` random groups.
    """
    if not (isinstance(k, int) and 1 <= k < problem.n_groups):
        raise ValueError(f"k: expected an int in [1, {problem.n_groups - 1}], got {k!r}")
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    if start is None:
        start = np.random.default_rng(seed).choice(problem.n_groups, size=k, replace=False)
    S = sorted(int(g) for g in start)
    if len(S) != k or len(set(S)) != k or not all(0 <= g < problem.n_groups for g in S):
        raise ValueError(f"start: expected {k} distinct group indices, got {list(start)!r}")
    beta = restricted_minimiser(problem, S)
    history = [problem.loss(beta)]
    best = (history[0], tuple(S))
    for _ in range(rounds):
        gnorms = group_norms(problem, problem.grad(beta))
        outside = [g for g in range(problem.n_groups) if g not in S]
        j = max(outside, key=lambda g: gnorms[g])
        beta = restricted_minimiser(problem, S + [j])
        norms = group_norms(problem, beta)
        drop = min(S, key=lambda g: norms[g])
        S = sorted([g for g in S if g != drop] + [j])
        beta = restricted_minimiser(problem, S)
        history.append(problem.loss(beta))
        if history[-1] < best[0]:
            best = (history[-1], tuple(S))
    return OMPRResult(tuple(S), history[-1], best[1], best[0], history)


@_single_threaded_blas
def best_subset(problem: GroupLeastSquares, k: int) -> tuple[tuple[int, ...], float]:
    """The best ``k``-group support by exhaustive search (a reference for :func:`ompr`).

    Defined in book/sapp_theory.md.
    """
    if not (isinstance(k, int) and 0 <= k <= problem.n_groups):
        raise ValueError(f"k: expected an int in [0, {problem.n_groups}], got {k!r}")
    if math.comb(problem.n_groups, k) > 200_000:
        raise ValueError(f"k: C({problem.n_groups}, {k}) supports is too many for an exhaustive search")
    best = ((), math.inf)
    for S in itertools.combinations(range(problem.n_groups), k):
        val = problem.loss(restricted_minimiser(problem, S))
        if val < best[1]:
            best = (S, val)
    return best
