"""SIREN, functional MAML, Meta-SparseINR rounds, test-time fitting and the inr experiment's resume."""
import copy
import dataclasses
import json
import math

import pytest
import torch

from pruninglab.inr.meta import (
    KeepMasked,
    MetaObjective,
    adapt,
    looped_meta_loss,
    meta_loss,
)
from pruninglab.inr.comparison import (
    DenseNarrowComparison,
    dense_narrow_comparison,
    summarise_comparison,
)
from pruninglab.inr.metasparse import (
    EVAL_MODES,
    fit_signals,
    meta_sparse_rounds,
    round_optimizer,
    imp_schedule,
    mean_psnr,
    meta_train,
    oneshot_schedule,
    prune_round,
    psnr,
)
from pruninglab.inr.siren import (
    Siren,
    coordinate_grid,
    narrow_width,
    pruned_counts,
    siren,
    siren_weight_count,
)
from pruninglab.data.images import TensorSignals
from pruninglab.masks import count_kept, ones_masks, prunable_parameters
from pruninglab.pruners.magnitude import global_magnitude_masks


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- parameter counts


def test_paper_parameter_counts():
    net = Siren(2, 256, 4, 3, 200.0)
    weights = prunable_parameters(net)
    assert list(weights) == [f"layers.{i}.weight" for i in range(5)]
    assert sum(p.numel() for p in weights.values()) == 197_888 == siren_weight_count() == net.num_weights()
    biases = sum(p.numel() for n, p in net.named_parameters() if n.endswith("bias"))
    assert biases == 1_027
    # Expected kept counts per round (every printed count), recomputed with the floor.
    table = {0: 197_888, 4: 81_056, 6: 51_876, 8: 33_201, 9: 26_561, 10: 21_249, 11: 17_000, 12: 13_600,
             13: 10_880, 14: 8_704, 15: 6_964, 17: 4_458, 19: 2_854, 20: 2_284}
    counts = pruned_counts(197_888, 20)
    assert len(counts) == 21
    for r, n in table.items():
        assert counts[r] == n, (r, counts[r], n)
    # Rounding instead of the floor would give 8,702 at r = 14: the floor matters.
    n = 197_888
    for _ in range(14):
        n -= round(0.2 * n)
    assert n == 8_702


def test_dense_narrow_counts_and_width_solver():
    for w, n in {164: 81_508, 94: 26_978, 76: 17_708, 68: 14_212, 60: 11_100, 48: 7_152, 28: 2_492}.items():
        assert siren_weight_count(2, w, 4, 3) == 3 * w * w + 5 * w == n
    # The reference CPU run's networks (grey, 1 output): 3w^2 + 3w.
    assert siren_weight_count(2, 64, 4, 1) == 12_480 and siren_weight_count(2, 23, 4, 1) == 1_656
    for n in pruned_counts(197_888, 20)[1:] + [1, 5, 1000]:
        w = narrow_width(n)
        err = abs(siren_weight_count(2, w, 4, 3) - n)
        for other in (w - 1, w + 1):
            if other >= 1:
                assert err <= abs(siren_weight_count(2, other, 4, 3) - n)
    with pytest.raises(ValueError, match="num_weights"):
        narrow_width(0)
    with pytest.raises(ValueError, match="rate"):
        pruned_counts(100, 3, rate=1.5)


def test_paper_count_reached_by_fourteen_magnitude_rounds():
    net = siren(seed=0)
    obj = MetaObjective(net, coordinate_grid(4), ones_masks(net))
    for _ in range(14):
        prune_round(obj, "magnitude", 0.2)
    assert count_kept(obj.masks) == 8_704
    # The scale argument: first-layer weights (~0.5) are ~650x larger, never pruned.
    assert bool(obj.masks["layers.0.weight"].all())
    named = dict(net.named_parameters())
    assert all(int((named[n] != 0).sum()) == int(m.sum()) for n, m in obj.masks.items())


def test_init_ranges_and_grid():
    net = siren(2, 256, 4, 3, 200.0, seed=1)
    for i, layer in enumerate(net.layers):
        bound = 1 / 2 if i == 0 else math.sqrt(6 / layer.in_features) / 200
        for p in (layer.weight.detach(), layer.bias.detach()):
            assert float(p.abs().max()) <= bound
            if p.numel() >= 200:  # uniform over the whole range, biases included
                assert float(p.abs().max()) > 0.95 * bound
                assert abs(float(p.std()) - bound / math.sqrt(3)) < 0.1 * bound
    g = coordinate_grid(3, 4)
    assert g.shape == (12, 2)
    assert torch.allclose(g[0], torch.tensor([-1.0, -1.0])) and torch.allclose(g[-1], torch.tensor([1.0, 1.0]))
    assert torch.allclose(g[1], torch.tensor([-1.0, -1 / 3]))  # row-major: second entry moves along x
    with pytest.raises(ValueError, match="width"):
        Siren(width=0)
    with pytest.raises(ValueError, match="omega0"):
        Siren(omega0=-1.0)


# --------------------------------------------------------------------------- MAML gradients


def _tiny(seed=0, dtype=torch.float32, width=16, res=6, batch=3, omega0=30.0):
    torch.manual_seed(seed)
    net = siren(2, width, 3, 1, omega0, seed=seed).to(dtype)
    coords = coordinate_grid(res).to(dtype)
    signals = torch.rand(batch, res * res, 1, dtype=dtype)
    return net, coords, signals


def _grads(fn, net, coords, signals, masks=None, **kw):
    net.zero_grad()
    params = dict(net.named_parameters())
    loss = fn(net, params, coords, signals, masks, **kw)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in params.items()}


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_meta_gradient_equals_looped(first_order):
    net, coords, signals = _tiny()
    masks = global_magnitude_masks(dict(prunable_parameters(net)), 0.5)
    la, ga = _grads(meta_loss, net, coords, signals, masks, first_order=first_order)
    lb, gb = _grads(looped_meta_loss, net, coords, signals, masks, first_order=first_order)
    assert abs(la - lb) <= 1e-6 * abs(lb)
    for n in ga:
        scale = float(gb[n].abs().max())
        assert float((ga[n] - gb[n]).abs().max()) <= 1e-5 * max(scale, 1e-12), n


def test_second_order_meta_gradient_matches_finite_differences():
    # float64: the central difference of the meta-loss along a random direction is the reference.
    net, coords, signals = _tiny(dtype=torch.float64, width=8, res=5, batch=2)
    _, g = _grads(meta_loss, net, coords, signals, steps=2, lr=1e-2)
    _, g_fo = _grads(meta_loss, net, coords, signals, steps=2, lr=1e-2, first_order=True)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(3)
    direction = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items()}
    eps = 1e-6

    def value(sign):
        shifted = {n: params[n] + sign * eps * direction[n] for n in params}
        return float(meta_loss(net, shifted, coords, signals, steps=2, lr=1e-2))

    fd = (value(1) - value(-1)) / (2 * eps)
    exact = sum(float((g[n] * direction[n]).sum()) for n in g)
    first = sum(float((g_fo[n] * direction[n]).sum()) for n in g)
    assert abs(exact - fd) <= 1e-6 * abs(fd)
    assert abs(first - fd) > 1e3 * abs(exact - fd)  # first-order MAML is a different (approximate) gradient


def test_pruned_weights_stay_exactly_zero_through_inner_and_outer_updates():
    net, coords, signals = _tiny(width=12)
    obj = MetaObjective(net, coords, ones_masks(net), inner_steps=2, inner_lr=1e-2)
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    data = TensorSignals(signals.reshape(3, 6, 6, 1))
    meta_train(obj, opt, data, 5, meta_batch=3, progress=False)  # dense steps: Adam moments everywhere
    kept = prune_round(obj, "magnitude", 0.5)
    masks = obj.masks
    named = dict(net.named_parameters())
    assert all(bool((named[n][~m] == 0).all()) for n, m in masks.items())
    # Inner loop: the adapted parameters keep the zeros (their inner gradient is masked).
    phi = adapt(net, named, coords, signals[0], masks, steps=2, lr=1e-2)
    assert all(bool((phi[n][~m] == 0).all()) for n, m in masks.items())
    # Meta-gradient of a pruned entry is exactly zero, although Adam's moments there are not.
    net.zero_grad()
    meta_loss(net, named, coords, signals, masks).backward()
    assert all(bool((named[n].grad[~m] == 0).all()) for n, m in masks.items())
    assert any(bool((opt.state[named[n]]["exp_avg"][~m] != 0).any()) for n, m in masks.items())
    meta_train(obj, opt, data, 5, meta_batch=3, progress=False)  # outer Adam steps with old moments
    assert all(bool((named[n][~m] == 0).all()) for n, m in masks.items())
    assert count_kept(obj.masks) == kept == sum(int((named[n] != 0).sum()) for n in masks)
    # Without KeepMasked, the pre-pruning moments would have moved the raw pruned entries.
    raw = copy.deepcopy(obj)
    opt2 = torch.optim.Adam(raw.parameters(), lr=1e-3)
    opt2.load_state_dict(opt.state_dict())
    loss = torch.mean((raw(signals) - signals) ** 2)
    loss.backward()
    opt2.step()
    moved = sum(int((p[~raw.masks[n]] != 0).sum()) for n, p in raw.inr.named_parameters() if n in raw.masks)
    assert moved > 0
    KeepMasked().on_step_end(0, raw)
    assert all(bool((p[~raw.masks[n]] == 0).all()) for n, p in raw.inr.named_parameters() if n in raw.masks)


def test_random_and_magnitude_rounds_prune_exact_counts():
    net, coords, _ = _tiny(width=20)
    obj = MetaObjective(net, coords, ones_masks(net))
    n = net.num_weights()
    gen = torch.Generator().manual_seed(0)
    for expected in pruned_counts(n, 5)[1:]:
        assert prune_round(obj, "random", 0.2, gen) == expected == count_kept(obj.masks)
    with pytest.raises(ValueError, match="method"):
        prune_round(obj, "l2")


def test_meta_objective_state_dict_carries_masks():
    net, coords, _ = _tiny(width=10)
    obj = MetaObjective(net, coords, ones_masks(net))
    prune_round(obj, "magnitude", 0.3)
    other = MetaObjective(siren(2, 10, 3, 1, 30.0, seed=5), coords, ones_masks(net))
    other.load_state_dict(obj.state_dict())
    assert all(torch.equal(obj.masks[n], other.masks[n]) for n in obj.masks)


# --------------------------------------------------------------------------- test-time fitting and PSNR


def test_fit_signals_is_torch_adam_per_signal():
    net, coords, signals = _tiny(width=12, batch=3)
    masks = global_magnitude_masks(dict(prunable_parameters(net)), 0.4)
    res = fit_signals(net, dict(net.named_parameters()), coords, signals, masks, steps=15, lr=1e-3,
                      keep_predictions=True)
    for b in range(3):
        ref = copy.deepcopy(net)
        with torch.no_grad():
            for n, p in ref.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
        named = dict(ref.named_parameters())
        for _ in range(15):
            eff = {n: (p * masks[n] if n in masks else p) for n, p in named.items()}
            loss = torch.mean((torch.func.functional_call(ref, eff, (coords,)) - signals[b]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            for n, p in named.items():
                if n in masks:
                    p.mul_(masks[n])
            pred = ref(coords)
        assert torch.allclose(pred, res.predictions[b], atol=1e-5)
        assert abs(float(torch.mean((pred - signals[b]) ** 2)) - float(res.mse[b])) < 1e-6
    assert res.kept == [count_kept(masks)] * 3
    assert all(torch.equal(res.masks[n][b], masks[n]) for n in masks for b in range(3))


def test_sgd2_eval_mode_is_the_maml_inner_loop():
    net, coords, signals = _tiny(width=12, batch=3)
    masks = global_magnitude_masks(dict(prunable_parameters(net)), 0.4)
    params = dict(net.named_parameters())
    res = fit_signals(net, params, coords, signals, masks, eval_mode="sgd2", keep_predictions=True)
    assert EVAL_MODES["sgd2"] == ("sgd", 2, 1e-2)
    for b in range(3):
        phi = adapt(net, {n: p.detach() for n, p in params.items()}, coords, signals[b], masks,
                    steps=2, lr=1e-2)
        eff = {n: (t * masks[n] if n in masks else t) for n, t in phi.items()}
        pred = torch.func.functional_call(net, eff, (coords,))
        assert torch.allclose(pred, res.predictions[b], atol=1e-6)
    # The default mode is still the paper's 100 Adam steps at 1e-4; explicit steps/lr override.
    adam = fit_signals(net, params, coords, signals, masks, steps=3)
    sgd_many = fit_signals(net, params, coords, signals, masks, eval_mode="sgd2", steps=3)
    assert not torch.allclose(adam.mse, sgd_many.mse)
    with pytest.raises(ValueError, match="eval_mode"):
        fit_signals(net, params, coords, signals, masks, eval_mode="sgd")


def _objective(width=10, res=5, seed=0):
    net = siren(2, width, 3, 1, 30.0, seed=seed)
    return MetaObjective(net, coordinate_grid(res), ones_masks(net))


def test_round_optimizer_fresh_or_carried():
    obj = _objective()
    opt = torch.optim.Adam(obj.parameters(), lr=3e-4, betas=(0.8, 0.9))
    obj(torch.rand(3, 25, 1)).pow(2).mean().backward()
    opt.step()
    fresh = round_optimizer(obj, opt)
    assert fresh is not opt and not fresh.state
    assert fresh.defaults["lr"] == 3e-4 and fresh.defaults["betas"] == (0.8, 0.9)
    assert round_optimizer(obj, opt, fresh_optimizer_each_round=False) is opt
    with pytest.raises(ValueError, match="fresh_optimizer_each_round"):
        round_optimizer(obj, opt, fresh_optimizer_each_round="yes")


@pytest.mark.parametrize("fresh", [True, False])
def test_meta_sparse_rounds_counts_and_optimizer_state(fresh):
    obj = _objective()
    data = TensorSignals(torch.rand(6, 5, 5))
    opt = torch.optim.Adam(obj.parameters(), lr=1e-4)
    meta_train(obj, opt, data, 2, progress=False)
    seen = []
    last = meta_sparse_rounds(obj, opt, data, rounds=3, round_steps=2, fresh_optimizer_each_round=fresh,
                              on_round=lambda r, n, o: seen.append((r, n, count_kept(o.masks))))
    counts = pruned_counts(obj.inr.num_weights(), 3)
    assert seen == [(r, counts[r], counts[r]) for r in (1, 2, 3)]
    steps = {int(st["step"]) for st in last.state.values()}
    assert steps == ({2} if fresh else {8})  # fresh: this round's 2 steps; carried: 2 + 3 * 2
    assert (last is opt) == (not fresh)


def test_dense_narrow_comparison_budgets_and_summary():
    cfg = DenseNarrowComparison(width=10, dense_steps=2, round_steps=1, rounds=(1, 3), seeds=(0, 1),
                                num_train=6, num_test=2)
    rec = dense_narrow_comparison(cfg)
    counts = pruned_counts(rec["dense_weights"], 3)
    assert rec["counts"] == {1: counts[1], 3: counts[3]}
    dn = [r for r in rec["runs"] if r["method"] == "dense-narrow"]
    assert len(dn) == 2 * 2 * 2  # seeds x rounds x budgets
    for r in dn:
        assert r["meta_steps"] == (2 if r["budget"] == "paper" else 2 + r["round"] * 1)
        assert r["weights"] == siren_weight_count(2, rec["widths"][r["round"]], 4, 1)
    ms = [r for r in rec["runs"] if r["method"] == "meta-sparse"]
    assert {(r["round"], r["weights"], r["meta_steps"]) for r in ms} == {(1, counts[1], 3), (3, counts[3], 5)}
    assert {r["method"] for r in rec["runs"]} == {"dense", "meta-sparse", "random", "dense-narrow"}
    rows = summarise_comparison(rec)
    assert [r["round"] for r in rows] == [1, 3] and all(r["seeds"] == 2 for r in rows)
    for row in rows:
        ms_by_seed = {r["seed"]: r["eval"]["adam"]["psnr"] for r in ms if r["round"] == row["round"]}
        dn_by_seed = {r["seed"]: r["eval"]["adam"]["psnr"] for r in dn
                      if r["round"] == row["round"] and r["budget"] == "matched"}
        gaps = [ms_by_seed[s] - dn_by_seed[s] for s in (0, 1)]
        assert row["gap-matched"][0] == pytest.approx(sum(gaps) / 2)
        assert row["wins-matched"] == sum(g > 0 for g in gaps)
    assert summarise_comparison(json.loads(json.dumps(rec)), "sgd2")[0]["round"] == 1  # JSON keys
    # The seeds in separate processes give the same record.
    assert dense_narrow_comparison(cfg, jobs=2)["runs"] == rec["runs"]


def test_dense_narrow_comparison_rejects_bad_settings():
    with pytest.raises(ValueError, match="rounds"):
        DenseNarrowComparison(rounds=(3, 2))
    with pytest.raises(ValueError, match="eval_modes"):
        DenseNarrowComparison(eval_modes=("adam", "lbfgs"))
    with pytest.raises(ValueError, match="data"):
        DenseNarrowComparison(data="celeba")


def test_oneshot_and_imp_schedules_reach_the_round_counts():
    n0 = 197_888
    assert oneshot_schedule(n0, 8_704) == {50: 8_704}
    sched = imp_schedule(n0, 14)
    assert list(sched) == [math.floor(100 * k / 15) for k in range(1, 15)]
    assert list(sched.values())[-1] == 8_704
    net, coords, signals = _tiny(width=12, batch=2)
    n = net.num_weights()
    for schedule in (oneshot_schedule(n, pruned_counts(n, 3)[3], 10), imp_schedule(n, 3, 10)):
        res = fit_signals(net, dict(net.named_parameters()), coords, signals, steps=10, lr=1e-3, prune_at=schedule)
        assert res.kept == [pruned_counts(n, 3)[3]] * 2
        # Per-signal masks: each signal pruned its own weights.
        assert not all(torch.equal(res.masks[k][0], res.masks[k][1]) for k in res.masks)
    with pytest.raises(ValueError, match="prune_at"):
        fit_signals(net, dict(net.named_parameters()), coords, signals, steps=10, prune_at={11: 5})


def test_psnr_is_mean_of_per_signal_psnrs():
    assert float(psnr(0.01)) == pytest.approx(20.0)
    mse = torch.tensor([1e-2, 1e-4])
    assert mean_psnr(mse) == pytest.approx(30.0)
    assert float(psnr(mse.mean())) == pytest.approx(-10 * math.log10(0.00505))  # not what the paper reports


# --------------------------------------------------------------------------- the experiment: resume, CLI


def _tiny_config(**kw):
    from pruninglab.experiments.inr import INRConfig

    base = INRConfig.small("faces", width=8, dense_steps=6, rounds=2, round_steps=5, narrow_rounds=(2,),
                           narrow_steps=4, baseline_rounds=(1, 2), test_steps=6, num_test=2, num_examples=1,
                           checkpoint_every=2)
    return dataclasses.replace(base, **kw)


def test_interrupted_run_resumes_to_identical_psnrs(tmp_path):
    from pruninglab.experiments.inr import RunInterrupted, run

    cfg = _tiny_config()
    ref = run(cfg, out_dir=tmp_path / "ref", progress=False, device="cpu")
    counts = pruned_counts(siren_weight_count(2, 8, 4, 1), 2)
    assert [r["weights"] for r in ref.rows("meta-sparse")] == counts
    assert [r["weights"] for r in ref.rows("random")] == counts
    assert [r["weights"] for r in ref.rows("imp")] == [r["weights"] for r in ref.rows("oneshot")] == counts[1:]
    for stop in (3, 9, 24):  # in the dense phase, mid-round 1 of magnitude, round 2 of random pruning
        out = tmp_path / f"cut{stop}"
        with pytest.raises(RunInterrupted):
            run(cfg, out_dir=out, stop_after=stop, progress=False, device="cpu")
        again = run(cfg, out_dir=out, resume=True, progress=False, device="cpu")
        for method, rows in ref.metrics["methods"].items():
            got = again.metrics["methods"][method]
            assert [r["psnr_per_signal"] for r in got] == [r["psnr_per_signal"] for r in rows], (stop, method)
            assert [r["psnr"] for r in got] == [r["psnr"] for r in rows], (stop, method)
    with pytest.raises(ValueError, match="different config"):
        run(dataclasses.replace(cfg, outer_lr=1e-3), out_dir=tmp_path / "ref", resume=True, progress=False)


def test_cli_writes_psnr_per_method(tmp_path, monkeypatch):
    from pruninglab.experiments import inr

    monkeypatch.setenv("PRUNINGLAB_CACHE", str(tmp_path / "cache"))
    tiny = _tiny_config()
    monkeypatch.setattr(inr.INRConfig, "small",
                        classmethod(lambda cls, data="faces", **kw: dataclasses.replace(tiny, data=data, **kw)))
    rc = inr.main(["--data", "faces", "--scale", "small", "--out", str(tmp_path / "runs"), "--no-progress",
                   "--device", "cpu"])
    assert rc == 0
    (run_dir,) = (tmp_path / "runs" / "inr").iterdir()
    assert run_dir.name.startswith("inr-") and run_dir.name.endswith("-s0")
    rec = json.loads((tmp_path / "cache" / "results" / "inr" / run_dir.name / "result.json").read_text())
    assert rec["scale"] == "small" and rec["config"]["config"]["width"] == 8
    methods = rec["metrics"]["methods"]
    assert set(methods) == {"meta-sparse", "random", "dense-narrow", "oneshot", "imp", "scratch"}
    assert all(isinstance(r["psnr"], float) and r["weights"] > 0 for rows in methods.values() for r in rows)
    assert (run_dir / "result.json").exists() and (run_dir / "config.json").exists()
    assert (run_dir / "magnitude" / "round_02" / "checkpoint.pt").exists()
    with pytest.raises(FileNotFoundError, match="neither"):
        inr.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs2")])
