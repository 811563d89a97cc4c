"""Batched interior-point solvers for l1 / group-l1 recovery against cvxpy, and the phase-transition grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pruninglab.limits import phase as ph
from pruninglab.limits.geometry import statistical_dimension_group_l1, statistical_dimension_l1


pytestmark = pytest.mark.usefixtures("one_thread")


def _problems(n, m, d, k, group_size=1, seed=0):
    return ph.sample_recovery_problems(n, m, d, k, group_size=group_size, generator=torch.Generator().manual_seed(seed))


def _group_objective(x: torch.Tensor, b: int) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, b).norm(dim=-1).sum(-1)


@pytest.mark.parametrize("form", ["range", "null"])
def test_l1_recovers_well_above_delta_and_fails_well_below(form):
    d = 100
    s = 5  # delta ~ 20.4
    above = _problems(20, 60, d, s, seed=1)
    sol = ph.solve_l1_batched(above.A, above.b, linear_algebra=form)
    assert bool(sol.converged.all())
    assert bool(ph.recovery_success(sol.x, above.x0).all())
    assert float(ph.relative_error(sol.x, above.x0).max()) < 1e-6
    s = 30  # delta ~ 65
    below = _problems(20, 30, d, s, seed=2)
    sol = ph.solve_l1_batched(below.A, below.b, linear_algebra=form)
    assert bool(sol.converged.all())
    assert not bool(ph.recovery_success(sol.x, below.x0).any())
    # Even when recovery fails the answer is feasible and has a smaller l1 norm than x0.
    assert float((torch.bmm(below.A, sol.x.unsqueeze(-1)).squeeze(-1) - below.b).norm(dim=1).max()) < 1e-7
    assert bool((sol.x.abs().sum(1) <= below.x0.abs().sum(1) + 1e-9).all())


def test_l1_matches_cvxpy_near_the_transition():
    d, m, s = 60, 30, 9  # m close to delta(60, 9) ~ 28: a mix of successes and failures
    prob = _problems(24, m, d, s, seed=3)
    ours = ph.solve_l1_batched(prob.A, prob.b)
    ref, statuses = ph.solve_l1_cvxpy(prob.A, prob.b)
    assert all(st.startswith("optimal") for st in statuses)
    ref = torch.as_tensor(ref)
    # Same optimal value (the LP optimum is unique in value even where the minimiser is not).
    np.testing.assert_allclose(ours.x.abs().sum(1), ref.abs().sum(1), rtol=1e-6)
    ok_ours, ok_ref = ph.recovery_success(ours.x, prob.x0), ph.recovery_success(ref, prob.x0)
    assert bool((ok_ours == ok_ref).all())
    assert 0 < int(ok_ours.sum()) < 24


def test_range_and_null_forms_agree():
    prob = _problems(16, 55, 100, 20, seed=4)
    a = ph.solve_l1_batched(prob.A, prob.b, linear_algebra="range")
    b = ph.solve_l1_batched(prob.A, prob.b, linear_algebra="null")
    np.testing.assert_allclose(a.x.abs().sum(1), b.x.abs().sum(1), rtol=1e-7)


def test_null_form_falls_back_when_leading_block_is_singular():
    prob = _problems(6, 70, 100, 10, seed=5)
    A = prob.A.clone()
    A[2, :, 5] = A[2, :, 3]  # two equal columns inside the leading 70 x 70 block: it is singular
    b = torch.bmm(A, prob.x0.unsqueeze(-1)).squeeze(-1)
    sol = ph.solve_l1_batched(A, b, linear_algebra="null")
    ref = ph.solve_l1_batched(A, b, linear_algebra="range")
    assert bool(sol.converged.all())
    np.testing.assert_allclose(sol.x.abs().sum(1), ref.x.abs().sum(1), rtol=1e-7)


def test_square_system_and_single_problem():
    prob = _problems(3, 20, 20, 4, seed=6)
    sol = ph.solve_l1_batched(prob.A, prob.b)
    assert bool(ph.recovery_success(sol.x, prob.x0, 1e-9).all()) and int(sol.iterations.max()) == 0
    one = _problems(1, 30, 60, 3, seed=7)
    single = ph.solve_l1_batched(one.A[0], one.b[0])
    assert single.x.shape == (60,) and bool(single.converged)
    assert float(ph.relative_error(single.x, one.x0[0])) < 1e-6


def test_group_solver_with_group_size_one_solves_l1():
    prob = _problems(12, 35, 80, 12, seed=8)
    lp = ph.solve_l1_batched(prob.A, prob.b)
    socp = ph.solve_group_l1_batched(prob.A, prob.b, 1)
    assert bool(socp.converged.all())
    np.testing.assert_allclose(socp.x.abs().sum(1), lp.x.abs().sum(1), rtol=1e-7)


def test_group_solver_matches_cvxpy():
    b = 4
    prob = _problems(16, 36, 80, 6, group_size=b, seed=9)  # delta_group(20, 6, 4) ~ 38: mixed outcomes
    ours = ph.solve_group_l1_batched(prob.A, prob.b, b)
    ref, statuses = ph.solve_group_l1_cvxpy(prob.A, prob.b, b)
    ref = torch.as_tensor(ref)
    assert bool(ours.converged.all())
    np.testing.assert_allclose(_group_objective(ours.x, b), _group_objective(ref, b), rtol=1e-6)
    assert bool((ph.recovery_success(ours.x, prob.x0) == ph.recovery_success(ref, prob.x0)).all())


def test_group_recovers_above_and_fails_below():
    b, G = 4, 25
    k = 3  # delta ~ 28
    above = _problems(16, 60, G * b, k, group_size=b, seed=10)
    sol = ph.solve_group_l1_batched(above.A, above.b, b)
    assert bool(ph.recovery_success(sol.x, above.x0).all())
    below = _problems(16, 20, G * b, k, group_size=b, seed=11)
    sol = ph.solve_group_l1_batched(below.A, below.b, b)
    assert bool(sol.converged.all()) and not bool(ph.recovery_success(sol.x, below.x0).any())


def test_grid_shapes_transition_and_cvxpy_agreement():
    d, ms, ks, trials = 40, [8, 16, 24, 32], [2, 6, 10], 4
    grid = ph.phase_transition_grid(d, ms, ks, trials, seed=12)
    assert grid.success.shape == (3, 4) and grid.converged.min() == 1.0
    # More measurements help, more nonzeros hurt (in expectation; these cells are far apart).
    assert grid.success[0, -1] == 1.0 and grid.success[-1, 0] == 0.0
    ref = ph.phase_transition_grid(d, ms, ks, trials, seed=12, solver="cvxpy")
    np.testing.assert_array_equal(grid.success, ref.success)
    again = ph.PhaseGrid.from_dict(grid.to_dict())
    np.testing.assert_array_equal(again.success, grid.success)


def test_transition_points_interpolate():
    grid = ph.PhaseGrid(d=10, group_size=1, ms=[2, 4, 6, 8], ks=[1, 2, 3], trials=4,
                        success=np.array([[0.0, 0.25, 0.75, 1.0], [0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.25]]),
                        converged=np.ones((3, 4)), mean_iterations=np.zeros((3, 4)), success_tol=1e-4, solver="torch")
    pts = ph.transition_points(grid)
    assert pts[0] == pytest.approx(5.0) and pts[1] == pytest.approx(6.0) and np.isnan(pts[2])
    pred = ph.predicted_transition(100, [10, 20])
    assert pred[0] == statistical_dimension_l1(100, 10) and pred[1] == statistical_dimension_l1(100, 20)
    assert ph.predicted_transition(100, [5], group_size=4)[0] == statistical_dimension_group_l1(25, 5, 4)


@pytest.mark.parametrize("call,name", [
    (lambda: ph.sample_recovery_problems(2, 11, 10, 2), "m"),
    (lambda: ph.sample_recovery_problems(2, 5, 10, 11), "k"),
    (lambda: ph.sample_recovery_problems(2, 5, 10, 2, group_size=3), "group_size"),
    (lambda: ph.sample_recovery_problems(0, 5, 10, 2), "num_problems"),
    (lambda: ph.sample_recovery_problems(2, 5, 10, [1, 2, 3]), "k"),
    (lambda: ph.solve_l1_batched(torch.randn(2, 12, 10), torch.randn(2, 12)), "A"),
    (lambda: ph.solve_l1_batched(torch.randn(2, 5, 10), torch.randn(3, 5)), "b"),
    (lambda: ph.solve_l1_batched(torch.randn(2, 5, 10), torch.randn(2, 5), linear_algebra="qr"), "linear_algebra"),
    (lambda: ph.solve_group_l1_batched(torch.randn(2, 5, 10), torch.randn(2, 5), 3), "group_size"),
    (lambda: ph.phase_transition_grid(10, [11], [1], 2), "ms"),
    (lambda: ph.phase_transition_grid(10, [5], [1], 2, solver="scs"), "solver"),
    (lambda: ph.recovery_success(torch.zeros(2, 3), torch.zeros(2, 3), tol=0.0), "tol"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    prob = _problems(32, 40, 100, 12, seed=13)
    cpu = ph.solve_l1_batched(prob.A, prob.b)
    gpu = ph.solve_l1_batched(prob.A.cuda(), prob.b.cuda())
    np.testing.assert_allclose(gpu.x.cpu().abs().sum(1), cpu.x.abs().sum(1), rtol=1e-7)
    grp = ph.solve_group_l1_batched(prob.A.cuda(), prob.b.cuda(), 4)
    assert bool(grp.converged.all())
