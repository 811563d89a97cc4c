"""The SA++ theory helpers against closed forms and independent references (book/sapp_theory.md)."""
import math

import numpy as np
import pytest

from pruninglab.limits import group_lasso as gl


# ---------------------------------------------------------------- mask/penalty identities


def test_reference_values_worked_out_independently():
    # q(1.3) = 0.86498 (Lemma 2.1) and the group-l2/3 term 2.25111 at a = 1.3 (Lemma 2.2).
    assert abs(float(gl.lambert_q(1.3)) - 0.86498) < 5e-6
    assert abs(float(gl.mask_penalty("l1", 1.3)) - 2.25111) < 5e-6
    # by hand: W(2 * 1.3^2) = W(3.38); q = W^2/4 + W/2
    w = 1.1118502184117238  # Lambert W(3.38), checked: w * exp(w) = 3.38
    assert abs(w * math.exp(w) - 3.38) < 1e-12
    assert abs(float(gl.lambert_q(1.3)) - (w * w / 4 + w / 2)) < 1e-12


@pytest.mark.parametrize("kind", ["identity", "exponential", "l1"])
def test_closed_forms_match_1d_minimisation(kind):
    for a in (0.01, 0.3, 1.0, 1.3, 4.0):
        value, w_opt = gl.mask_penalty_by_minimisation(kind, a)
        assert abs(value - float(gl.mask_penalty(kind, a))) < 1e-9 * max(1.0, value)
    # the optimal masks in closed form
    a = 1.3
    assert abs(gl.mask_penalty_by_minimisation("identity", a)[1] - math.sqrt(a)) < 1e-6
    assert abs(gl.mask_penalty_by_minimisation("l1", a)[1] - (2 * a * a) ** (1 / 3)) < 1e-6


def test_lemma_2_1_q_is_not_subadditive_but_sqrt_and_log1p_are():
    assert abs(float(gl.lambert_q(1.0)) - 0.608) < 1e-3 and abs(2 * float(gl.lambert_q(0.5)) - 0.414) < 1e-3
    xs = np.linspace(0, 3, 121)
    assert gl.subadditivity_gap(gl.lambert_q, xs)[0] > 0.1
    assert gl.subadditivity_gap(np.sqrt, xs)[0] <= 1e-12
    assert gl.subadditivity_gap(np.log1p, xs)[0] <= 1e-12


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        gl.mask_penalty("softmax", 1.0)
    with pytest.raises(ValueError, match="a:"):
        gl.mask_penalty("l1", -1.0)
    with pytest.raises(ValueError, match="kind"):
        gl.mask_penalty_by_minimisation("powerprop", 1.0)
    with pytest.raises(ValueError, match="q:"):
        gl.penalty("cube")
    with pytest.raises(ValueError, match="ridge"):
        gl.GroupLeastSquares(np.eye(3), np.ones(3), gl.contiguous_groups([3]), 0.0)
    with pytest.raises(ValueError, match="groups"):
        gl.GroupLeastSquares(np.eye(3), np.ones(3), gl.contiguous_groups([2]), 1e-3)
    with pytest.raises(ValueError, match="dim <= 3"):
        gl.grid_search_penalized(gl.make_group_least_squares(n_groups=2, group_size=2, n_true=1), 1.0, "sqrt", 1.0)


# ---------------------------------------------------------------- group LASSO


def orthogonal_problem(ridge=0.1):
    """X = sqrt(n) I: the group LASSO is group soft-thresholding, in closed form."""
    rng = np.random.default_rng(0)
    n = 12
    X = math.sqrt(n) * np.eye(n)
    y = rng.standard_normal(n) * 2
    return gl.GroupLeastSquares(X, y, gl.contiguous_groups([3, 3, 2, 4]), ridge)


def soft_threshold(problem, lam):
    b = problem.X.T @ problem.y / problem.n
    beta = np.zeros(problem.dim)
    for g in problem.groups:
        nb = np.linalg.norm(b[g])
        beta[g] = max(0.0, 1 - lam / nb) * b[g] / (1 + problem.ridge)
    return beta


def test_group_lasso_solver_and_one_group_solution_match_closed_form():
    P = orthogonal_problem()
    tau, j = gl.group_lasso_tau(P)
    b = P.X.T @ P.y / P.n
    assert abs(tau - max(np.linalg.norm(b[g]) for g in P.groups)) < 1e-12
    solver = gl.GroupLassoSolver(P, solver="CLARABEL")
    for frac in (1.2, 0.9, 0.5, 0.1):
        lam = frac * tau
        got = solver.solve(lam)
        assert solver.last_status == "optimal"
        assert np.abs(got - soft_threshold(P, lam)).max() < 1e-6
    second = sorted(np.linalg.norm(b[g]) for g in P.groups)[-2]
    lam = 0.5 * (second + tau)  # between the two largest group gradients: one group survives
    exact = soft_threshold(P, lam)
    assert gl.support(P, exact) == [j]
    assert np.abs(gl.one_group_solution(P, lam, j) - exact).max() < 1e-12
    kkt = gl.group_lasso_kkt_residual(P, exact, lam)
    assert kkt["active_residual"] < 1e-12 and kkt["zero_margin"] > 0


def test_one_group_solution_agrees_with_cvxpy_on_a_correlated_problem():
    P = gl.make_group_least_squares(n_samples=30, n_groups=6, group_size=3, seed=4)
    tau, j = gl.group_lasso_tau(P)
    lam = 0.97 * tau
    ours = gl.one_group_solution(P, lam, j)
    cvx = gl.GroupLassoSolver(P).solve(lam)
    assert gl.support(P, cvx) == [j]
    assert np.abs(ours - cvx).max() < 1e-5
    assert gl.group_lasso_kkt_residual(P, ours, lam)["zero_margin"] > 0
    assert not gl.one_group_solution(P, 1.01 * tau, j).any()


# ---------------------------------------------------------------- theorem 1.1


@pytest.mark.parametrize("q", ["sqrt", "log1p"])
def test_lemmas_2_4_and_2_5(q):
    P = gl.make_group_least_squares(n_groups=5, group_size=2, seed=1)
    rng = np.random.default_rng(0)
    for k in range(6):
        beta = np.zeros(P.dim)
        for g in rng.choice(5, size=k, replace=False):
            beta[P.groups[g]] = rng.standard_normal(2)
        d = gl.penalized_objective(P, beta, 0.7, q) - gl.group_lasso_objective(P, beta, 0.7)
        if k <= 1:
            assert abs(d) < 1e-12
        else:
            assert d > 0


def test_penalties_by_hand():
    P = gl.make_group_least_squares(n_groups=2, group_size=1, n_true=1, seed=0)
    beta = np.array([4.0, 9.0])
    loss = P.loss(beta)
    assert abs(gl.penalized_objective(P, beta, 1.0, "sqrt") - (loss + (2 + 3) ** 2)) < 1e-9
    assert abs(gl.penalized_objective(P, beta, 1.0, "log1p") - (loss + 5 * 10 - 1)) < 1e-9
    assert abs(gl.penalized_objective(P, beta, 1.0, "identity") - gl.group_lasso_objective(P, beta, 1.0)) < 1e-12


def test_exhaustive_grid_finds_the_predicted_one_group_minimiser():
    P = gl.make_group_least_squares(n_samples=20, n_groups=3, group_size=1, n_true=2, seed=1)
    tau, j = gl.group_lasso_tau(P)
    lam = 0.95 * tau
    pred = gl.one_group_solution(P, lam, j)
    beta, val = gl.grid_search_penalized(P, lam, "sqrt", radius=3.0, points=61)
    assert gl.support(P, beta) == [j]
    assert abs(val - gl.penalized_objective(P, pred, lam, "sqrt")) < 1e-9


def test_local_and_support_search_do_not_beat_the_theorem():
    P = gl.make_group_least_squares(n_samples=40, n_groups=8, group_size=3, seed=2)
    tau, j = gl.group_lasso_tau(P)
    lam = 0.95 * tau
    f_star = gl.penalized_objective(P, gl.one_group_solution(P, lam, j), lam, "log1p")
    best, vals = gl.random_start_search(P, lam, "log1p", n_starts=3, seed=0)
    assert min(vals) >= f_star - 1e-8
    by_size = gl.support_search(P, lam, "log1p", max_groups=2, starts_per_support=1)
    assert by_size[1][1] == (j,) and abs(by_size[1][0] - f_star) < 1e-9
    assert by_size[2][0] >= f_star - 1e-8


def test_powerprop_reaches_the_group_lasso_optimum():
    P = gl.make_group_least_squares(n_samples=40, n_groups=8, group_size=3, seed=5)
    tau, _ = gl.group_lasso_tau(P)
    lam = 0.3 * tau
    cvx = gl.GroupLassoSolver(P).solve(lam)
    u = gl.powerprop_solve(P, lam, np.random.default_rng(0).standard_normal(P.dim))
    obj = gl.group_lasso_objective(P, cvx, lam)
    assert abs(gl.group_lasso_objective(P, u, lam) - obj) < 1e-6 * obj


# ---------------------------------------------------------------- OMPR


def test_best_subset_and_ompr():
    P = gl.make_group_least_squares(n_samples=50, n_groups=8, group_size=2, n_true=2, noise=0.01, seed=7)
    S, loss = gl.best_subset(P, 2)
    # the exhaustive search is a minimum over all supports of size 2
    for a in range(8):
        for b in range(a + 1, 8):
            assert P.loss(gl.restricted_minimiser(P, (a, b))) >= loss - 1e-12
    res = gl.ompr(P, 2, rounds=6, seed=0)
    assert len(res.support) == 2 and res.best_loss >= loss - 1e-12
    assert res.history[0] >= res.best_loss
    with pytest.raises(ValueError, match="start"):
        gl.ompr(P, 2, rounds=1, start=[0, 0])
