"""Checks of pruninglab.sharpness against independent references.

References: closed-form Hessians (a quadratic with a chosen spectrum; least squares, H = 2XᵀX/N),
``torch.autograd.functional.hessian`` (a code path other than ours), ``numpy.linalg.eigvalsh``,
and the exactness of Gauss quadrature for low-degree polynomials.
"""
import math

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from pruninglab.sharpness import (
    exact_hessian,
    exact_hessian_eigenvalues,
    hessian_eigenvalues,
    hessian_spectrum,
    hessian_trace,
    hvp_operator,
    lanczos,
    layerwise_sharpness,
    power_iteration,
    spectral_average,
    spectral_density,
)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Hessian-vector products of tiny models are many tiny ops: on a shared 2-core machine a second
    intra-op thread mostly spin-waits (10-100x slower under load). Restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Quadratic(nn.Module):
    """``model(x) = w``; with :func:`quad_loss` the loss is ``½ wᵀAw`` and its Hessian is exactly ``A``."""

    def __init__(self, dim, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.w


def quad_loss(a):
    return lambda out, target: 0.5 * out @ a @ out


def matrix_with_spectrum(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ q.T


DUMMY = [(torch.zeros(1, 1), torch.zeros(1))]


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def tiny_data(n=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def autograd_reference_hessian(model, x, y):
    """Dense Hessian by torch.autograd.functional.hessian over the flattened parameters (float64)."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().double().reshape(-1) for _, p in model.named_parameters()])

    def f(v):
        ps = {n: c.view(s) for n, c, s in zip(names, v.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, ps, (x.double(),)), y)

    return torch.autograd.functional.hessian(f, flat)


# --------------------------------------------------------------------------- HVP and exact Hessian


def test_hvp_of_quadratic_is_matrix_product():
    a = matrix_with_spectrum(np.linspace(-2, 5, 12))
    model = Quadratic(12)
    op = hvp_operator(model, quad_loss(a), DUMMY)
    v = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(op(v), a @ v)
    assert op.num_hvp == 1


def test_exact_hessian_matches_autograd_reference_and_least_squares():
    model = tiny_mlp()
    x, y = tiny_data()
    ours = exact_hessian(model, F.cross_entropy, [(x, y)])
    ref = autograd_reference_hessian(model, x, y)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)

    # Least squares: L = mean((Xw - t)^2) has H = 2 XᵀX / N, whatever w is.
    g = torch.Generator().manual_seed(1)
    xs, ts = torch.randn(40, 6, generator=g), torch.randn(40, 1, generator=g)
    lin = nn.Linear(6, 1, bias=False)
    h = exact_hessian(lin, F.mse_loss, [(xs, ts)])
    torch.testing.assert_close(h, 2 * xs.double().T @ xs.double() / 40, rtol=1e-10, atol=1e-12)


def test_batches_are_weighted_by_size_and_caching_does_not_change_the_product():
    model = tiny_mlp()
    x, y = tiny_data(23)
    whole = [(x, y)]
    uneven = [(x[:4], y[:4]), (x[4:19], y[4:19]), (x[19:], y[19:])]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    h_whole = exact_hessian(model, F.cross_entropy, whole)
    torch.testing.assert_close(exact_hessian(model, F.cross_entropy, uneven), h_whole, rtol=1e-9, atol=1e-12)
    v = torch.randn(h_whole.shape[0])
    ref = (h_whole @ v.double()).float()
    for data in (whole, uneven, loader, (x, y)):
        for cache in (False, True):
            op = hvp_operator(model, F.cross_entropy, data, cache_graphs=cache)
            torch.testing.assert_close(op(v), ref, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(op(v), ref, rtol=1e-4, atol=1e-5)  # second call reuses the cache


def test_parameter_subset_is_the_diagonal_block():
    model = tiny_mlp()
    x, y = tiny_data()
    full = exact_hessian(model, F.cross_entropy, [(x, y)])
    # parameter order: 0.weight (35), 0.bias (7), 2.weight (21), 2.bias (3)
    block = exact_hessian(model, F.cross_entropy, [(x, y)], params=["2.weight"])
    torch.testing.assert_close(block, full[42:63, 42:63])
    two = exact_hessian(model, F.cross_entropy, [(x, y)], params=["2.bias", "0.bias"])
    idx = torch.cat([torch.arange(63, 66), torch.arange(35, 42)])
    torch.testing.assert_close(two, full[idx][:, idx])
    top = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=2, params=["2.weight"])
    exact = torch.linalg.eigvalsh(full[42:63, 42:63]).flip(0)[:2]
    assert torch.allclose(top, exact, rtol=1e-4)


def test_grads_untouched_and_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    x, y = tiny_data()
    op = hvp_operator(model, F.cross_entropy, [(x, y)])
    v = torch.randn(op.dim)
    a, b = op(v), op(v)
    torch.testing.assert_close(a, b)  # eval mode inside: dropout is off, the product is deterministic
    hessian_trace(model, F.cross_entropy, [(x, y)], num_samples=3)
    assert model.training and model[1].training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_known_spectrum(method):
    eigs = [9.0, 7.0, 4.0] + list(np.linspace(-1.5, 1.5, 37))
    a = matrix_with_spectrum(eigs, seed=3)
    vals = hessian_eigenvalues(Quadratic(40), quad_loss(a), DUMMY, k=3, method=method, max_iter=400,
                               tol=1e-8, generator=torch.Generator().manual_seed(0))
    assert vals.dtype == torch.float64 and vals.shape == (3,)
    np.testing.assert_allclose(vals.numpy(), [9.0, 7.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_largest_algebraic_not_largest_magnitude(method):
    # The dominant eigenvalue is negative; the largest algebraic one is 3.
    a = matrix_with_spectrum([-10.0, 3.0, 2.0, 1.0, 0.5, -0.5, 0.2, 0.1], seed=4)
    vals = hessian_eigenvalues(Quadratic(8), quad_loss(a), DUMMY, k=2, method=method, max_iter=500,
                               tol=1e-9, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(vals.numpy(), [3.0, 2.0], rtol=1e-6)


def test_lanczos_restarts_on_repeated_eigenvalues():
    # Only 3 distinct eigenvalues: the Krylov space of one start vector is 3-dimensional, so finding
    # the second copy of 5 needs the restart after breakdown.
    eigs = [5.0, 5.0, 3.0, 3.0] + [1.0] * 26
    a = matrix_with_spectrum(eigs, seed=5)
    op = hvp_operator(Quadratic(30), quad_loss(a), DUMMY)
    res = lanczos(op, 4, num_steps=30, tol=1e-10, generator=torch.Generator().manual_seed(1),
                  return_eigenvectors=True)
    np.testing.assert_allclose(res.ritz_values[:4].numpy(), [5.0, 5.0, 3.0, 3.0], rtol=1e-8)
    y = res.eigenvectors
    assert y.shape == (4, 30)
    resid = (y @ a - res.ritz_values[:4, None] * y).norm(dim=1)
    assert float(resid.max()) < 1e-6
    torch.testing.assert_close(y @ y.T, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)


def test_lanczos_matches_exact_on_small_mlp_top3():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, 8, generator=g), torch.randint(0, 4, (200,), generator=g)
    exact = exact_hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=3)
    ref = np.linalg.eigvalsh(autograd_reference_hessian(model, x, y).numpy())[::-1][:3]
    np.testing.assert_allclose(exact.numpy(), ref, rtol=1e-9)
    ours = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=3, generator=torch.Generator().manual_seed(0))
    rel = (ours - exact).abs() / exact.abs()
    assert float(rel.max()) <= 1e-4, rel


def test_not_converged_warns():
    a = matrix_with_spectrum(np.linspace(1, 1.01, 50))  # clustered: power iteration cannot separate
    with pytest.warns(RuntimeWarning, match="did not reach"):
        hessian_eigenvalues(Quadratic(50), quad_loss(a), DUMMY, method="power", max_iter=3, tol=1e-12)


def test_power_iteration_on_plain_callable():
    a = matrix_with_spectrum([4.0, 1.0, 0.5, 0.1])
    vals, vecs, n, ok = power_iteration(lambda v: a @ v, 1, max_iter=500, tol=1e-10, dim=4)
    assert ok and n <= 500
    assert abs(float(vals[0]) - 4.0) < 1e-8


# --------------------------------------------------------------------------- trace and spectrum


def test_hutchinson_exact_for_diagonal_and_unbiased_in_general():
    d = torch.linspace(-1, 3, 30, dtype=torch.float64)
    est = hessian_trace(Quadratic(30), quad_loss(torch.diag(d)), DUMMY, num_samples=5)
    # vᵀ diag(d) v = Σ d_i for every ±1 vector: zero variance
    assert abs(est.trace - float(d.sum())) < 1e-10 and est.stderr < 1e-10
    trace, stderr = est  # unpacks as (trace, stderr)
    a = matrix_with_spectrum(np.linspace(-1, 4, 30), seed=7)
    est = hessian_trace(Quadratic(30), quad_loss(a), DUMMY, num_samples=400,
                        generator=torch.Generator().manual_seed(0))
    assert est.num_samples == 400 and est.samples.shape == (400,)
    assert abs(est.trace - float(torch.trace(a))) < 4 * est.stderr


def test_slq_is_gauss_quadrature():
    # For a diagonal H and a Rademacher probe, vᵀH^p v / ‖v‖² = tr(H^p)/D exactly, and m Lanczos steps
    # integrate polynomials of degree ≤ 2m − 1 exactly.
    d = torch.linspace(0.1, 2.0, 50, dtype=torch.float64) ** 2
    nodes, weights = hessian_spectrum(Quadratic(50), quad_loss(torch.diag(d)), DUMMY, num_steps=4, num_probes=2,
                                      generator=torch.Generator().manual_seed(0))
    assert nodes.shape == weights.shape == (8,)
    assert abs(float(weights.sum()) - 1.0) < 1e-12
    assert bool((nodes[1:] >= nodes[:-1]).all())
    for p in range(1, 8):
        np.testing.assert_allclose(spectral_average(nodes, weights, lambda x: x**p), float((d**p).mean()), rtol=1e-9)
    # Not exact beyond degree 2m − 1 = 7.
    assert abs(spectral_average(nodes, weights, lambda x: x**12) - float((d**12).mean())) > 1e-6


def test_slq_stops_at_invariant_subspace_and_density_integrates_to_one():
    eigs = [2.0] * 10 + [-1.0] * 10
    a = matrix_with_spectrum(eigs, seed=8)
    nodes, weights = hessian_spectrum(Quadratic(20), quad_loss(a), DUMMY, num_steps=15, num_probes=3,
                                      generator=torch.Generator().manual_seed(0))
    assert nodes.numel() == 6  # 2 distinct eigenvalues -> 2 Lanczos steps per probe
    np.testing.assert_allclose(sorted(set(np.round(nodes.numpy(), 8))), [-1.0, 2.0])
    assert abs(float(weights.sum()) - 1.0) < 1e-12
    grid, dens = spectral_density(nodes, weights, 2000, sigma=0.05)
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) < 1e-3


def test_layerwise_sharpness_rows():
    model = tiny_mlp()
    x, y = tiny_data()
    rows = layerwise_sharpness(model, F.cross_entropy, [(x, y)], num_trace_samples=200,
                               generator=torch.Generator().manual_seed(0))
    assert [r.name for r in rows] == ["0.weight", "2.weight"]
    full = exact_hessian(model, F.cross_entropy, [(x, y)])
    for r, sl in zip(rows, [slice(0, 35), slice(42, 63)]):
        blk = full[sl, sl]
        assert r.numel == blk.shape[0]
        assert abs(r.top_eigenvalue - float(torch.linalg.eigvalsh(blk)[-1])) <= 1e-4 * abs(r.top_eigenvalue)
        assert abs(r.trace - float(blk.trace())) < 5 * r.trace_stderr + 1e-9


# --------------------------------------------------------------------------- input checks


def test_bad_inputs_raise_value_errors():
    model = tiny_mlp()
    x, y = tiny_data()
    data = [(x, y)]
    with pytest.raises(ValueError, match="method"):
        hessian_eigenvalues(model, F.cross_entropy, data, method="arnoldi")
    with pytest.raises(ValueError, match="k"):
        hessian_eigenvalues(model, F.cross_entropy, data, k=0)
    with pytest.raises(ValueError, match="k"):
        hessian_eigenvalues(model, F.cross_entropy, data, k=10_000)
    with pytest.raises(ValueError, match="tol"):
        hessian_eigenvalues(model, F.cross_entropy, data, tol=-1.0)
    with pytest.raises(ValueError, match="params"):
        hessian_eigenvalues(model, F.cross_entropy, data, params=["nope.weight"])
    with pytest.raises(ValueError, match="data"):
        hessian_trace(model, F.cross_entropy, iter(data))
    with pytest.raises(ValueError, match="data"):
        hessian_trace(model, F.cross_entropy, x)
    with pytest.raises(ValueError, match="loss_fn"):
        hessian_trace(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), data, num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        hessian_trace(model, F.cross_entropy, data, num_samples=0)
    with pytest.raises(ValueError, match="max_dim"):
        exact_hessian(model, F.cross_entropy, data, max_dim=10)
    with pytest.raises(ValueError, match="nodes"):
        spectral_density(torch.zeros(3), torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = tiny_mlp()
    x, y = tiny_data()
    cpu = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=2)
    gpu = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=2, device="cuda")
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put
    torch.testing.assert_close(cpu, gpu, rtol=1e-4, atol=1e-6)
    h = exact_hessian(model.cuda(), F.cross_entropy, [(x, y)])
    assert h.device.type == "cuda"
    assert math.isfinite(hessian_trace(model, F.cross_entropy, [(x, y)], num_samples=4).trace)


# --------------------------------------------------------------------------- one operator, several estimators


def test_one_operator_answers_every_question_on_one_cached_graph():
    from pruninglab.sharpness import HessianOperator

    model = tiny_mlp()
    x, y = tiny_data()
    full = exact_hessian(model, F.cross_entropy, [(x, y)])
    exact = torch.linalg.eigvalsh(full).flip(0)
    with HessianOperator(model, F.cross_entropy, (x, y)) as op:
        assert op.cache_graphs
        top = op.eigenvalues(k=2, generator=torch.Generator().manual_seed(0))
        graph = op._cache
        tr = op.trace(300, generator=torch.Generator().manual_seed(1))
        nodes, weights = op.spectrum(num_steps=op.dim)
        rows = op.layerwise(num_trace_samples=50, generator=torch.Generator().manual_seed(2))
        assert op._cache is graph  # built once, reused by every estimator
        assert op.num_hvp > 300
    torch.testing.assert_close(top, exact[:2], rtol=1e-4, atol=1e-8)
    assert abs(tr.trace - float(full.trace())) < 5 * tr.stderr
    # Per-parameter traces from the same probes add up to the full estimate.
    assert sum(t for t, _ in tr.per_parameter.values()) == pytest.approx(tr.trace, rel=1e-9, abs=1e-9)
    # A full-length quadrature puts its nodes on eigenvalues: its largest node is the top eigenvalue.
    assert float(nodes.max()) == pytest.approx(float(exact[0]), rel=1e-4)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert [r.name for r in rows] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # The module functions are the same computation.
    same = hessian_eigenvalues(model, F.cross_entropy, [(x, y)], k=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, top)


def test_block_is_the_diagonal_block_of_the_full_operator():
    from pruninglab.sharpness import HessianOperator

    model = tiny_mlp()
    x, y = tiny_data()
    full = exact_hessian(model, F.cross_entropy, [(x, y)])
    with HessianOperator(model, F.cross_entropy, [(x, y)]) as op:
        blk = op.block(["2.weight", "2.bias"])
        v = torch.randn(blk.dim, generator=torch.Generator().manual_seed(0))
        sl = slice(42, 66)
        torch.testing.assert_close(blk(v).double(), full[sl, sl] @ v.double(), rtol=1e-4, atol=1e-6)
        top = blk.eigenvalues(k=1)
        with pytest.raises(ValueError, match="names"):
            op.block(["nope"])
    assert float(top[0]) == pytest.approx(float(torch.linalg.eigvalsh(full[sl, sl])[-1]), rel=1e-4)


def test_hessian_parameters_leave_out_normalisation_layers():
    from pruninglab.sharpness import hessian_parameters

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 2))
    assert hessian_parameters(net) == ["0.weight", "0.bias", "4.weight", "4.bias"]
