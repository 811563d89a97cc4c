"""``limit_report`` on a small CNN on the digits (a network the book does not use elsewhere).

The reference for the top eigenvalue is the dense Hessian from ``torch.func`` (forward-over-reverse,
float64) on the same data, a code path independent of the Lanczos/HVP one.
"""
import json
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruninglab as pl
from pruninglab.data.digits import accuracy, digits_split
from pruninglab.sharpness import exact_hessian_eigenvalues, hessian_parameters


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained():
    data = digits_split(flatten=False)
    torch.manual_seed(0)
    net = digits_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(perm), 100):
            idx = perm[i:i + 100]
            opt.zero_grad()
            F.cross_entropy(net(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    return net, data


@pytest.fixture(scope="module")
def report(trained):
    net, data = trained
    hdata = (data.x_train[:256], data.y_train[:256])
    return pl.limit_report(net, F.cross_entropy, (data.x_train, data.y_train),
                           lambda m: accuracy(m, data.x_test, data.y_test), hessian_data=hdata,
                           rule="at_least_bisect", spectrum_steps=64, trace_samples=20, layer_max_iter=30)


def test_report_matches_the_exact_hessian_and_the_weights(trained, report):
    net, data = trained
    assert accuracy(net, data.x_test, data.y_test) > 0.9
    hdata = [(data.x_train[:256], data.y_train[:256])]
    exact = exact_hessian_eigenvalues(net, F.cross_entropy, hdata, hessian_parameters(net))
    assert report.hessian_dim == exact.numel() == sum(p.numel() for p in net.parameters())
    for got, want in zip(report.top_eigenvalues, exact[:3].tolist()):
        assert abs(got - want) <= 1e-4 * abs(exact[0]), (got, want)
    # Hutchinson's trace is within 4 standard errors of the exact one.
    assert abs(report.trace - float(exact.sum())) < 4 * report.trace_stderr
    # The per-layer block traces add up to at most the full trace's estimate (biases are left out).
    assert 0 < report.predicted < 1 and 0 < report.actual < 1
    prunable = pl.prunable_parameters(net)
    assert sum(r["numel"] for r in report.layers) == sum(p.numel() for p in prunable.values()) == report.num_weights
    assert [r["name"] for r in report.layers] == list(prunable)
    # Kept fractions at p*: the layers' kept counts add up to the kept share of the whole.
    kept = sum(r["kept_at_predicted"] * r["numel"] for r in report.layers) / report.num_weights
    assert kept == pytest.approx(1 - report.predicted, abs=1.5 / report.num_weights)
    for r in report.layers:
        assert r["top_eigenvalue"] is not None and r["top_eigenvalue"] <= exact[0] + 1e-6
    # The curve: sparsity increasing, the dense model first, the actual limit on it.
    ps = [p for p, _ in report.curve]
    assert ps == sorted(ps) and ps[0] == 0.0 and report.curve[0][1] == report.dense_score
    assert dict(report.curve)[report.actual] >= report.dense_score
    assert report.epsilon > 0 and report.rule == "at_least_bisect"
    # The model is unchanged.
    assert accuracy(net, data.x_test, data.y_test) == report.dense_score


def test_json_markdown_and_plot(report):
    doc = json.loads(report.to_json())
    assert doc["predicted"] == report.predicted and len(doc["layers"]) == len(report.layers)
    assert doc["curve"][0] == [0.0, report.dense_score]
    md = report.to_markdown()
    assert "predicted limit" in md and report.layers[0]["name"] in md
    fig = report.plot()
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    assert len(fig.axes[1].patches) == 2 * len(report.layers)


def test_strict_rule_budget_and_sparsities(trained):
    net, data = trained
    evaluate = lambda m: accuracy(m, data.x_test, data.y_test)  # noqa: E731
    small = (data.x_train[:128], data.y_train[:128])
    rep = pl.limit_report(net, F.cross_entropy, small, evaluate, max_hvp=12, max_evaluations=30,
                          layer_max_iter=5)
    assert rep.rule == "strict" and rep.grid_step == pytest.approx(1 / 31)
    assert rep.num_hvp <= 12 and rep.num_evaluations <= 31
    assert any("budget" in w for w in rep.warnings)
    grid = [0.1, 0.2, 0.3, 0.4]
    rep2 = pl.limit_report(net, F.cross_entropy, small, evaluate, sparsities=grid, max_hvp=20)
    assert [round(p, 2) for p, _ in rep2.curve] == [0.0, *grid]
    assert rep2.actual in [p for p, _ in rep2.curve]
    # Strict: the reported fraction is above dense (or 0 with a warning that says why).
    if rep2.actual > 0:
        assert dict(rep2.curve)[rep2.actual] > rep2.dense_score
    else:
        assert any("strictly above" in w for w in rep2.warnings)


def test_layer_collapse_and_negative_curvature_are_warned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        net[2].weight.mul_(1e-4)  # the last layer is tiny: magnitude pruning removes it first
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    rep = pl.limit_report(net, F.cross_entropy, (x, y), lambda m: 1.0 - 0.0 * float(m[0].weight.sum()),
                          rule="at_least_bisect", spectrum_steps=20, trace_samples=4)
    assert any("layer collapse" in w and "2.weight" in w for w in rep.warnings)


@pytest.mark.slow
def test_resnet_from_torchvision_by_the_same_code():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,))

    def evaluate(m):
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    rep = pl.limit_report(net, F.cross_entropy, (x, y), evaluate, max_hvp=6, max_evaluations=4,
                          layer_eigenvalues=False)
    assert rep.hessian_dim == sum(p.numel() for n, p in net.named_parameters() if "bn" not in n
                                  and "downsample.1" not in n)
    assert sum(r["numel"] for r in rep.layers) == rep.num_weights == sum(
        p.numel() for p in pl.prunable_parameters(net).values())
    assert math.isfinite(rep.top_eigenvalues[0]) and rep.num_hvp <= 6
    json.loads(rep.to_json())


def test_bad_inputs():
    net = digits_cnn()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    ok = lambda m: 1.0  # noqa: E731
    with pytest.raises(ValueError, match="model"):
        pl.limit_report("net", F.cross_entropy, (x, y), ok)
    with pytest.raises(ValueError, match="evaluate"):
        pl.limit_report(net, F.cross_entropy, (x, y), 1.0)
    with pytest.raises(ValueError, match="rule"):
        pl.limit_report(net, F.cross_entropy, (x, y), ok, rule=">>")
    with pytest.raises(ValueError, match="max_hvp"):
        pl.limit_report(net, F.cross_entropy, (x, y), ok, max_hvp=0)
    with pytest.raises(ValueError, match="train_data"):
        pl.limit_report(net, F.cross_entropy, None, ok)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(trained):
    net, data = trained
    small = (data.x_train[:256], data.y_train[:256])
    kw = dict(rule="at_least_bisect", spectrum_steps=32, trace_samples=8, layer_max_iter=10)
    cpu = pl.limit_report(net, F.cross_entropy, small, lambda m: accuracy(m, data.x_test, data.y_test), **kw)
    gpu = pl.limit_report(net, F.cross_entropy, small, lambda m: accuracy(m, data.x_test, data.y_test),
                          device="cuda", **kw)
    assert gpu.device.startswith("cuda") and next(net.parameters()).device.type == "cpu"
    assert gpu.top_eigenvalues[0] == pytest.approx(cpu.top_eigenvalues[0], rel=1e-4)
    assert gpu.predicted == pytest.approx(cpu.predicted, abs=2e-3)
