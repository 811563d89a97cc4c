"""Statistical dimension: closed forms vs independent quadrature, Monte-Carlo vs closed forms, projections vs cvxpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from pruninglab.limits import geometry as geo


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- closed forms


def _tau_formula_by_quadrature(num_groups: int, active: int, b: int) -> float:
    """The tau-formula with E(chi_b - tau)_+^2 by numerical integration (independent of chi_tail_moments)."""

    def tail(tau):
        val, _ = integrate.quad(lambda r: (r - tau) ** 2 * stats.chi.pdf(r, b), tau, np.inf, epsabs=1e-12)
        return val

    res = optimize.minimize_scalar(lambda t: active * (b + t * t) + (num_groups - active) * tail(t),
                                   bounds=(0.0, 10.0), method="bounded", options={"xatol": 1e-10})
    return float(res.fun)


@pytest.mark.parametrize("d,s", [(100, 5), (100, 10), (100, 20), (100, 50), (400, 10), (37, 3)])
def test_group_size_one_is_l1(d, s):
    assert geo.statistical_dimension_group_l1(d, s, 1) == geo.statistical_dimension_l1(d, s)


def test_l1_values_match_recorded_table():
    # Values of d * psi(s/d) computed independently of this library, to four significant digits.
    table = {(100, 5): (20.39, 1.398), (100, 10): (32.88, 1.140), (100, 20): (51.11, 0.862),
             (100, 50): (83.13, 0.436), (400, 10): (49.25, 1.642)}
    for (d, s), (delta, tau) in table.items():
        assert abs(geo.statistical_dimension_l1(d, s) - delta) < 0.006
        assert abs(geo.optimal_tau_l1(d, s) - tau) < 6e-4


@pytest.mark.parametrize("G,k,b", [(100, 10, 1), (25, 3, 4), (25, 12, 4), (50, 5, 2), (16, 1, 9)])
def test_tau_formula_matches_quadrature(G, k, b):
    assert geo.statistical_dimension_group_l1(G, k, b) == pytest.approx(_tau_formula_by_quadrature(G, k, b), rel=1e-7)


def test_l1_optimal_tau_solves_stationarity():
    for d, s in [(100, 10), (1000, 37), (50, 40)]:
        tau = geo.optimal_tau_l1(d, s)
        rho = s / d
        rhs = math.sqrt(2 / math.pi) * math.exp(-tau * tau / 2) / tau - special.erfc(tau / math.sqrt(2))
        assert rho / (1 - rho) == pytest.approx(rhs, rel=1e-9)


def test_chi_tail_moments_dof1_closed_form():
    for tau in (0.0, 0.3, 1.1, 2.5, 6.0):
        first, second = geo.chi_tail_moments(tau, 1)
        bracket = (1 + tau * tau) * special.erfc(tau / math.sqrt(2)) - tau * math.sqrt(2 / math.pi) * math.exp(-tau * tau / 2)
        assert second == pytest.approx(bracket, rel=1e-10, abs=1e-15)
        assert first == pytest.approx(math.sqrt(2 / math.pi) * math.exp(-tau * tau / 2) - tau * special.erfc(tau / math.sqrt(2)),
                                      rel=1e-10, abs=1e-15)


def test_edge_cases_and_monotonicity():
    assert geo.statistical_dimension_l1(50, 0) == 0.0
    assert geo.statistical_dimension_l1(50, 50) == pytest.approx(50.0)
    values = [geo.statistical_dimension_l1(200, s) for s in range(0, 201, 10)]
    assert all(b > a for a, b in zip(values, values[1:]))
    # Block structure is a stronger prior: fewer measurements than unstructured sparsity with as many nonzeros.
    assert geo.statistical_dimension_group_l1(25, 5, 4) < geo.statistical_dimension_l1(100, 20)
    assert geo.statistical_dimension_subspace(10, 4) == 4.0
    assert geo.statistical_dimension_orthant(7) == 3.5
    assert geo.l1_error_bound(100, 25) == pytest.approx(4.0)


@pytest.mark.parametrize("call,name", [
    (lambda: geo.statistical_dimension_l1(10, 11), "s"),
    (lambda: geo.statistical_dimension_l1(10, -1), "s"),
    (lambda: geo.statistical_dimension_l1(0, 0), "d"),
    (lambda: geo.statistical_dimension_l1(10.0, 2), "d"),
    (lambda: geo.statistical_dimension_l1(10, 2.5), "s"),
    (lambda: geo.statistical_dimension_l1(10, True), "s"),
    (lambda: geo.statistical_dimension_group_l1(10, 3, 0), "group_size"),
    (lambda: geo.statistical_dimension_group_l1(10, 11, 2), "active_groups"),
    (lambda: geo.statistical_dimension_group_l1(0, 0, 2), "num_groups"),
    (lambda: geo.statistical_dimension_group_l1(10, -2, 2), "active_groups"),
    (lambda: geo.statistical_dimension_subspace(5, 6), "k"),
    (lambda: geo.statistical_dimension_orthant(-3), "d"),
    (lambda: geo.chi_tail_moments(-1.0, 2), "tau"),
    (lambda: geo.statistical_dimension_l1_mc(10, 3, 0), "num_samples"),
    (lambda: geo.project_group_l1_descent_cone(torch.zeros(2, 10), torch.ones(10), 3), "group_size"),
    (lambda: geo.project_l1_descent_cone(torch.zeros(2, 10), torch.zeros(10)), "x"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------- projections


def _project_cvxpy(g: np.ndarray, x: np.ndarray, b: int) -> np.ndarray:
    import cvxpy as cp

    d = len(g)
    h = cp.Variable(d)
    # The descent cone of f = sum ||x_k|| at x: directional derivative f'(x; h) <= 0.
    terms = []
    for k in range(d // b):
        sl = slice(k * b, (k + 1) * b)
        nk = np.linalg.norm(x[sl])
        terms.append(x[sl] @ h[sl] / nk if nk > 0 else cp.norm(h[sl], 2))
    cp.Problem(cp.Minimize(cp.sum_squares(h - g)), [sum(terms) <= 0]).solve(
        solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return h.value


@pytest.mark.parametrize("b", [1, 3])
def test_projection_matches_cvxpy(b):
    rng = np.random.default_rng(b)
    G = 7
    for trial in range(4):
        x = np.zeros(G * b)
        x[: (trial + 1) * b] = rng.normal(size=(trial + 1) * b)
        g = rng.normal(size=G * b)
        ours = geo.project_group_l1_descent_cone(torch.tensor(g), torch.tensor(x), b).numpy()
        assert np.abs(ours - _project_cvxpy(g, x, b)).max() < 1e-5


def test_projection_moreau_properties():
    gen = torch.Generator().manual_seed(0)
    d, b = 60, 3
    x = torch.zeros(d, dtype=torch.float64)
    x[:9] = torch.randn(9, generator=gen, dtype=torch.float64)
    g = torch.randn(500, d, generator=gen, dtype=torch.float64)
    p = geo.project_group_l1_descent_cone(g, x, b)
    polar = g - p
    # Moreau: the two parts are orthogonal, and the projection lies in the cone (f'(x; p) <= 0).
    assert (p * polar).sum(1).abs().max() < 1e-9
    xg, pg = x.view(-1, b), p.view(500, -1, b)
    active = xg.norm(dim=1) > 0
    u = xg[active] / xg[active].norm(dim=1, keepdim=True)
    dir_deriv = (pg[:, active] * u).sum((1, 2)) + pg[:, ~active].norm(dim=2).sum(1)
    assert dir_deriv.max() < 1e-9
    # Idempotent.
    assert (geo.project_group_l1_descent_cone(p, x, b) - p).abs().max() < 1e-9


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("d,s", [(200, 20), (400, 40)])
def test_l1_monte_carlo_within_two_percent(d, s):
    mc = geo.statistical_dimension_l1_mc(d, s, 4000, generator=torch.Generator().manual_seed(1))
    formula = geo.statistical_dimension_l1(d, s)
    assert abs(mc.mean - formula) <= 0.02 * formula
    # The formula is an upper bound, tight to ALMT's 2 sqrt(d/s).
    assert formula - geo.l1_error_bound(d, s) - 3 * mc.stderr <= mc.mean <= formula + 3 * mc.stderr


@pytest.mark.parametrize("G,k,b", [(50, 5, 4), (100, 20, 2)])
def test_group_monte_carlo_within_two_percent(G, k, b):
    mc = geo.statistical_dimension_group_l1_mc(G, k, b, 4000, generator=torch.Generator().manual_seed(2))
    formula = geo.statistical_dimension_group_l1(G, k, b)
    assert abs(mc.mean - formula) <= 0.02 * formula
    assert mc.mean <= formula + 3 * mc.stderr


def test_exact_dimensions_of_subspace_and_orthant():
    gen = torch.Generator().manual_seed(3)
    sub = geo.statistical_dimension_subspace_mc(40, 13, 4000, generator=gen)
    assert abs(sub.mean - 13) < 4 * sub.stderr and abs(sub.mean - 13) < 0.02 * 13
    orth = geo.statistical_dimension_orthant_mc(40, 4000, generator=gen)
    assert abs(orth.mean - 20) < 4 * orth.stderr and abs(orth.mean - 20) < 0.02 * 20
    # A subspace projection is exact for vectors inside it.
    basis = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    inside = (basis @ torch.randn(5, 3, generator=gen, dtype=torch.float64)).T
    assert (geo.project_subspace(inside, basis) - inside).abs().max() < 1e-10


def test_gaussian_width_sandwich():
    x = torch.zeros(80, dtype=torch.float64)
    x[:8] = 1.0
    proj = lambda g: geo.project_l1_descent_cone(g, x)  # noqa: E731
    width = geo.gaussian_width_mc(proj, 80, 8000, generator=torch.Generator().manual_seed(4))
    delta = geo.statistical_dimension_mc(proj, 80, 8000, generator=torch.Generator().manual_seed(4))
    # Same draws: delta - w^2 is exactly the sample variance of ||Pi_C g||, which lies in [0, 1].
    gap = delta.mean - width.mean ** 2
    assert 0.0 <= gap <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_monte_carlo_on_cuda_matches_cpu():
    cpu = geo.statistical_dimension_l1_mc(100, 10, 2000, generator=torch.Generator().manual_seed(5))
    gpu = geo.statistical_dimension_l1_mc(100, 10, 2000, generator=torch.Generator().manual_seed(5), device="cuda")
    assert gpu.mean == pytest.approx(cpu.mean, rel=1e-9)
