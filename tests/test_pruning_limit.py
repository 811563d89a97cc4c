"""Tests of the pruning-limit solver (Zhang et al. 2024), the actual-limit search, l1 training and the paper's models."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from pruninglab.limits.pruning_limit import (
    MagnitudeRadius,
    actual_pruning_limit,
    kinematic_band,
    kinematic_margin,
    loss_noise_epsilon,
    normalized_squared_width,
    predicted_pruning_limit,
    train_with_l1,
    width_curve,
    width_spectrum,
)
from pruninglab.masks import prunable_parameters
from pruninglab.runtime import seed_everything


pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed=0):
    seed_everything(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


# --------------------------------------------------------------------------- R(p)


def test_radius_matches_numpy_sort_and_select():
    net = small_net()
    w = np.concatenate([p.detach().numpy().ravel() for p in prunable_parameters(net).values()])
    sq = np.sort(w.astype(np.float64) ** 2)
    r_sort = MagnitudeRadius(net, method="sort")
    r_sel = MagnitudeRadius(net, method="select")
    assert r_sort.num_weights == w.size == 45
    for p in [0.0, 0.01, 0.1, 1 / 3, 0.5, 0.77, 0.999, 1.0]:
        k = math.ceil(p * w.size - 1e-9)
        ref = math.sqrt(sq[:k].sum())
        assert r_sort(p) == pytest.approx(ref, rel=1e-6, abs=1e-12)
        assert r_sel(p) == pytest.approx(ref, rel=1e-6, abs=1e-12)


def test_radius_accepts_tensor_dict_and_params():
    t = torch.tensor([3.0, -1.0, 2.0, 0.5])
    r = MagnitudeRadius(t)
    assert r(0.5) == pytest.approx(math.sqrt(0.25 + 1.0))
    net = small_net()
    only_first = MagnitudeRadius(net, params=["0.weight"])
    assert only_first.num_weights == 30
    assert MagnitudeRadius({"a": t})(1.0) == pytest.approx(math.sqrt(9 + 1 + 4 + 0.25))
    with pytest.raises(ValueError, match="params"):
        MagnitudeRadius(net, params=["nope"])
    with pytest.raises(ValueError, match="p"):
        r(1.5)
    with pytest.raises(ValueError, match="NaN"):
        MagnitudeRadius(torch.tensor([1.0, float("nan")]))


# --------------------------------------------------------------------------- G(R)


def test_width_formula_zero_and_negative_eigenvalues():
    eig = torch.tensor([4.0, 1.0, 0.0, -2.0])
    eps = 0.3
    for r in [0.0, 0.5, 2.0]:
        ref = np.mean([2 * eps / (2 * eps + abs(l) * r * r) for l in eig.tolist()])
        assert float(normalized_squared_width(r, eig, eps)) == pytest.approx(ref, rel=1e-12)
    # The zero eigenvalue contributes exactly 1/D at any radius, so G never falls below 1/4 here.
    assert float(normalized_squared_width(1e6, eig, eps)) == pytest.approx(0.25, abs=1e-9)
    # |lambda|: a negative eigenvalue counts like the positive one of the same size.
    assert float(normalized_squared_width(1.0, torch.tensor([-2.0]), eps)) == pytest.approx(
        float(normalized_squared_width(1.0, torch.tensor([2.0]), eps)))
    # Vectorised over radii.
    g = normalized_squared_width(torch.tensor([0.0, 1.0, 3.0]), eig, eps)
    assert g.shape == (3,) and float(g[0]) == 1.0 and bool((g[1:] < g[:-1]).all())


def test_slq_pair_with_uniform_weights_equals_eigenvalues():
    eig = torch.linspace(-0.5, 3.0, 11)
    pair = (eig, torch.full((11,), 1 / 11))
    for r in [0.3, 1.7]:
        assert float(normalized_squared_width(r, pair, 0.1)) == pytest.approx(
            float(normalized_squared_width(r, eig, 0.1)), rel=1e-12)
    # zero_mass adds a share of flat directions.
    g = float(normalized_squared_width(2.0, pair, 0.1, zero_mass=0.25))
    assert g == pytest.approx(0.25 + 0.75 * float(normalized_squared_width(2.0, eig, 0.1)), rel=1e-12)


def test_spectrum_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        width_spectrum((torch.ones(3), torch.ones(3)))
    with pytest.raises(ValueError, match="tail"):
        width_spectrum(torch.ones(3), hessian_dim=10)
    with pytest.raises(ValueError, match="hessian_dim"):
        width_spectrum(torch.ones(3), hessian_dim=2)
    with pytest.raises(ValueError, match="epsilon"):
        normalized_squared_width(1.0, torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="zero_mass"):
        width_spectrum(torch.ones(3), zero_mass=1.0)
    with pytest.raises(ValueError, match="spectrum"):
        width_spectrum(torch.tensor([]))


# --------------------------------------------------------------------------- the fixed point


def test_fixed_point_matches_closed_form():
    # All weights of magnitude a and all eigenvalues lambda: R(p)^2 = ceil(p D) a^2 ~ p D a^2, so
    # p = 2e / (2e + lambda D a^2 p)  =>  c p^2 + 2e p - 2e = 0 with c = lambda D a^2.
    d, a, lam, eps = 20000, 0.01, 3.0, 0.05
    w = torch.full((d,), a)
    c = lam * d * a * a
    ref = (-2 * eps + math.sqrt(4 * eps * eps + 8 * eps * c)) / (2 * c)
    res = predicted_pruning_limit(w, torch.full((50,), lam), eps)
    assert res.removed == pytest.approx(ref, abs=2 / d)
    assert float(res) == res.removed and res.kept == pytest.approx(1 - ref, abs=2 / d)
    assert res.num_weights == d and res.hessian_dim == 50


def test_fixed_point_matches_brute_force_scan():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3000, generator=gen) * torch.rand(3000, generator=gen)
    eig = torch.randn(800, generator=gen).abs() ** 3 * 5 - 0.2
    eps = 0.02
    res = predicted_pruning_limit(w, eig, eps)
    # Independent reference: scan every k = number removed; the limit is the largest k/D with G(R(k)) >= k/D.
    sq = np.sort(w.numpy().astype(np.float64) ** 2)
    cum = np.concatenate([[0.0], np.cumsum(sq)])
    lam = np.abs(eig.numpy().astype(np.float64))
    ks = np.arange(0, w.numel() + 1)
    g = np.array([np.mean(2 * eps / (2 * eps + lam * cum[k])) for k in ks])
    feasible = ks[g >= ks / w.numel()]
    ref = feasible.max() / w.numel()
    assert abs(res.removed - ref) <= 1.5 / w.numel()
    assert res.width >= res.removed - 1e-6
    assert float(normalized_squared_width(MagnitudeRadius(w)(ref + 2 / w.numel()), eig, eps)) < ref + 2 / w.numel()


def test_limit_moves_with_sharpness_and_magnitude():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5000, generator=gen) * 0.1
    eig = torch.rand(400, generator=gen) ** 4 * 10
    base = predicted_pruning_limit(w, eig, 0.01).removed
    sharper = predicted_pruning_limit(w, eig * 4, 0.01).removed
    bigger = predicted_pruning_limit(w * 2, eig, 0.01).removed
    noisier = predicted_pruning_limit(w, eig, 0.04).removed
    assert sharper < base and bigger < base and noisier > base
    # G depends on |lambda| R^2 / epsilon only: x4 sharpness == x2 magnitudes == epsilon / 4.
    assert sharper == pytest.approx(bigger, abs=1e-6)
    assert predicted_pruning_limit(w, eig, 0.0025).removed == pytest.approx(sharper, abs=1e-6)


def test_top_k_tail_brackets_the_full_spectrum():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2000, generator=gen)
    eig = (torch.rand(300, generator=gen) ** 3 * 20).sort(descending=True).values
    full = predicted_pruning_limit(w, eig, 0.05).removed
    top = eig[:40]
    upper = predicted_pruning_limit(w, top, 0.05, hessian_dim=300, tail="zero").removed
    lower = predicted_pruning_limit(w, top, 0.05, hessian_dim=300, tail="last").removed
    assert lower <= full <= upper
    assert lower < upper


def test_all_flat_spectrum_allows_everything_and_trace_bound_is_conservative():
    w = torch.randn(1000)
    assert predicted_pruning_limit(w, torch.zeros(10), 0.1).removed == 1.0
    eig = torch.rand(200) * 3
    exact = predicted_pruning_limit(w, eig, 0.1).removed
    # Jensen: G(R) >= 1 / (1 + R^2 Tr|H| / (2 eps D)): one node at the mean |lambda| gives a lower bound.
    jensen = predicted_pruning_limit(w, (eig.abs().mean().reshape(1), torch.ones(1)), 0.1).removed
    assert jensen <= exact + 1e-6


def test_width_curve_and_kinematic_band():
    w = torch.randn(4000)
    eig = torch.rand(500)
    ps = [0.0, 0.2, 0.5, 0.9]
    curve = width_curve(w, eig, 0.05, ps)
    assert float(curve[0]) == pytest.approx(1.0, abs=1e-12) and bool((curve[1:] <= curve[:-1]).all())
    lower, upper = kinematic_band(w, eig, 0.05, eta=0.05)
    mid = predicted_pruning_limit(w, eig, 0.05)
    assert lower.removed < mid.removed < upper.removed
    assert kinematic_margin(500, 0.05) == pytest.approx(math.sqrt(8 * math.log(80)) / math.sqrt(500))
    # The offset really shifts the fixed point: p = G(R(p)) - margin at the lower end.
    g_low = float(normalized_squared_width(lower.radius, eig, 0.05))
    assert g_low - kinematic_margin(500) == pytest.approx(lower.removed, abs=2e-3)


def test_predicted_limit_bad_input():
    w = torch.randn(10)
    with pytest.raises(ValueError, match="epsilon"):
        predicted_pruning_limit(w, torch.ones(3), -1.0)
    with pytest.raises(ValueError, match="tol"):
        predicted_pruning_limit(w, torch.ones(3), 0.1, tol=0)
    with pytest.raises(ValueError, match="weights"):
        predicted_pruning_limit("weights", torch.ones(3), 0.1)


# --------------------------------------------------------------------------- epsilon


def test_loss_noise_epsilon_is_std_of_batch_losses():
    net = small_net()
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(5)]
    with torch.no_grad():
        losses = np.array([float(nn.functional.cross_entropy(net(x), y)) for x, y in batches])
    eps = loss_noise_epsilon(net, nn.functional.cross_entropy, batches)
    assert eps == pytest.approx(losses.std(), rel=1e-6)
    assert loss_noise_epsilon(net, nn.functional.cross_entropy, batches, correction=1) == pytest.approx(
        losses.std(ddof=1), rel=1e-6)
    assert net.training  # mode restored
    with pytest.raises(ValueError, match="at least 2"):
        loss_noise_epsilon(net, nn.functional.cross_entropy, batches[:1])


# --------------------------------------------------------------------------- actual limit


def _sparsity(model):
    ws = list(prunable_parameters(model).values())
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def test_actual_limit_finds_a_threshold_and_restores_weights():
    net = small_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cliff = 0.437
    res = actual_pruning_limit(net, lambda m: 1.0 if _sparsity(m) <= cliff else 0.0, rule="at_least_bisect",
                               grid=10, resolution=1e-3)
    # Whole weights are removed (45 here): 19/45 = 0.422 is good, 20/45 = 0.444 is bad.
    assert res.removed == pytest.approx(19 / 45)
    assert res.bracket == pytest.approx((19 / 45, 20 / 45))
    assert res.dense_score == 1.0 and res.score == 1.0
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n])
    # Evaluations: the dense model, the grid (9 interior points + top), then the bisection.
    assert res.evaluations[0] == (0.0, 1.0) and len(res.evaluations) > 11


def test_actual_limit_takes_the_largest_good_grid_point_and_rules():
    net = small_net()
    # Non-monotone: bad in (0.3, 0.5], good again up to 0.7.
    def score(m):
        s = _sparsity(m)
        return 1.0 if s <= 0.3 or 0.5 < s <= 0.7 else 0.0

    res = actual_pruning_limit(net, score, rule="at_least_bisect", grid=10, resolution=1e-3)
    assert res.removed == pytest.approx(31 / 45)
    assert actual_pruning_limit(net, score, rule=">=", grid=10).removed == res.removed  # the older name  # 31/45 = 0.689 <= 0.7 < 32/45
    # Strict rule with zero tolerance: equal-to-dense is not good, so nothing is removable here...
    strict = actual_pruning_limit(net, score, rule=">", grid=10)
    assert strict.removed == 0.0
    # ... but with a tolerance the strict rule accepts scores above dense - tolerance.
    tol = actual_pruning_limit(net, lambda m: 1.0 - _sparsity(m), rule=">", tolerance=0.25, grid=10)
    assert tol.removed == pytest.approx(11 / 45)  # 1 - 11/45 > 0.75 >= 1 - 12/45
    # A loss (lower is better).
    loss = actual_pruning_limit(net, lambda m: _sparsity(m), rule=">=", higher_is_better=False, tolerance=0.5,
                                grid=10)
    assert loss.removed == pytest.approx(22 / 45)  # 22/45 <= 0.5 < 23/45


def test_strict_rule_scans_the_whole_grid_and_needs_a_score_above_dense():
    net = small_net()  # 45 prunable weights
    # Above dense in a window far to the right that a coarse grid plus bisection would skip:
    # bad on (0.1, 0.8], above dense (1.5 > 1.0) on (0.8, 0.85], bad after.
    def score(m):
        s = _sparsity(m)
        return 1.0 if s == 0 else (1.5 if 0.8 < s <= 0.85 else (1.0 if s <= 0.1 else 0.0))

    res = actual_pruning_limit(net, score, rule="strict", grid_step=0.001)
    assert res.rule == "strict" and res.grid_step == 0.001
    assert res.removed == pytest.approx(38 / 45)  # 38/45 = 0.844 <= 0.85 < 39/45
    assert res.bracket == pytest.approx((38 / 45, 39 / 45))
    assert res.score == 1.5
    # The 999 grid points collapse to the 45 distinct weight counts (+ the dense evaluation).
    assert len(res.evaluations) == 46
    # Equal to dense is not good under the strict rule: a flat score gives 0.
    assert actual_pruning_limit(net, lambda m: 1.0, grid_step=0.01).removed == 0.0
    # The bisection rule stops at the first bad point after its last good grid point: it misses the window.
    assert actual_pruning_limit(net, score, rule="at_least_bisect", grid=10).removed < 0.2
    # Explicit fractions and an evaluation budget.
    few = actual_pruning_limit(net, score, fractions=[0.2, 0.5, 0.84, 0.9])
    assert few.removed == pytest.approx(38 / 45) and len(few.evaluations) == 5
    capped = actual_pruning_limit(net, score, grid_step=0.001, max_evaluations=19)
    assert capped.grid_step == pytest.approx(0.05) and len(capped.evaluations) <= 20
    # The thinned grid (step 0.05) lands on 36/45 = 0.8 and 39/45 = 0.867, both outside the window.
    assert capped.removed == 0.0


def test_actual_limit_bad_input():
    net = small_net()
    with pytest.raises(ValueError, match="rule"):
        actual_pruning_limit(net, lambda m: 1.0, rule="=")
    with pytest.raises(ValueError, match="grid_step"):
        actual_pruning_limit(net, lambda m: 1.0, grid_step=0)
    with pytest.raises(ValueError, match="fractions"):
        actual_pruning_limit(net, lambda m: 1.0, fractions=[0.5, 1.5])
    with pytest.raises(ValueError, match="max_evaluations"):
        actual_pruning_limit(net, lambda m: 1.0, max_evaluations=1)
    with pytest.raises(ValueError, match="grid"):
        actual_pruning_limit(net, lambda m: 1.0, grid=1)
    with pytest.raises(ValueError, match="resolution"):
        actual_pruning_limit(net, lambda m: 1.0, resolution=0)
    with pytest.raises(ValueError, match="tolerance"):
        actual_pruning_limit(net, lambda m: 1.0, tolerance=-1)
    with pytest.raises(ValueError, match="evaluate"):
        actual_pruning_limit(net, lambda m: float("nan"))


# --------------------------------------------------------------------------- l1 training


def test_train_with_l1_shrinks_weights_through_the_train_loop(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    norms = {}
    for strength in (0.0, 3e-2):
        net = small_net()
        res = train_with_l1(net, batches, strength=strength, steps=80, lr=0.05, out_dir=tmp_path / f"l1_{strength}",
                            progress=False)
        assert res.step == 80 and (tmp_path / f"l1_{strength}" / "checkpoint.pt").exists()
        norms[strength] = sum(float(p.detach().abs().sum()) for p in net.parameters())
    assert norms[3e-2] < 0.8 * norms[0.0]
    with pytest.raises(ValueError, match="strength"):
        train_with_l1(small_net(), batches, strength=-1.0, steps=1)


# --------------------------------------------------------------------------- the paper's models


def test_paper_models_have_the_papers_weight_counts():
    from pruninglab import models

    counts = {
        "fc5": (models.fc5(10), 3_883_000),
        "fc12": (models.fc12(10), 7_263_000),
        "vgg16": (models.vgg16_bn_cifar(10), 14_715_584),
        "resnet18": (models.resnet18_cifar(100), 11_210_432),
    }
    for name, (m, n) in counts.items():
        assert sum(p.numel() for p in prunable_parameters(m).values()) == n, name
    x = torch.randn(2, 3, 32, 32)
    assert counts["fc5"][0](x).shape == (2, 10)
    assert counts["vgg16"][0].eval()(x).shape == (2, 10)
    assert counts["resnet18"][0].eval()(x).shape == (2, 100)
    assert models.mlp([4, 3, 2])(torch.randn(1, 4)).shape == (1, 2)  # the shared mlp still works


@pytest.mark.slow
def test_big_paper_models_weight_counts():
    from pruninglab import models

    alex = models.AlexNetCifar(10)
    # 46.8 M in the paper: 5 conv (96-256-384-384-256) + FC 6400-4096-4096-10.
    assert sum(p.numel() for p in prunable_parameters(alex).values()) == 46_778_400
    assert alex.features(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 5, 5)
    r50 = models.resnet50_cifar(100)
    assert sum(p.numel() for p in prunable_parameters(r50).values()) == 23_652_032


def test_zero_mass_counts_exactly_zero_hessian_rows():
    from pruninglab.experiments.limit import _zero_mass
    from pruninglab.sharpness import hessian_parameters

    seed_everything(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].bias[0] = -100.0  # unit 0 never fires: its 4 input and 2 output weights have zero Hessian rows
    x = torch.randn(32, 4)
    y = torch.randint(0, 2, (32,))
    params = hessian_parameters(net)
    assert params == ["0.weight", "0.bias", "2.weight", "2.bias"]
    share = _zero_mass(net, nn.functional.cross_entropy, [(x, y)], params, rows=18)  # each of the 18 weights once
    assert share == pytest.approx(6 / 18)
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    assert hessian_parameters(bn) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # no normalisation parameters
