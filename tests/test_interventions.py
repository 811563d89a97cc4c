"""Tests of pruninglab.limits.interventions (book/limit_moves.md)."""
import copy

import pytest
import torch
from torch import nn

from pruninglab.limits import interventions as iv
from pruninglab.limits.pruning_limit import actual_pruning_limit
from pruninglab.masks import prunable_parameters


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    config = iv.MovesConfig.small(hidden=(16,), epochs=15, retrain_epochs=3, imp_rounds=2,
                                  imp_rate=0.5, lanczos_steps=16, weight_decays=(0.0, 0.05),
                                  scales=(1.0, 2.0), sparsities=(0.5, 0.9))
    data = config.data(0)
    model = iv.train_network(config, data, l1=config.l1)
    return config, data, model


@pytest.mark.parametrize("overrides, name", [
    (dict(hidden=()), "hidden"),
    (dict(hidden=(0,)), "hidden[0]"),
    (dict(imp_rate=1.0), "imp_rate"),
    (dict(imp_rate=0.0), "imp_rate"),
    (dict(l1=-1.0), "l1"),
    (dict(scales=(0.0,)), "scales[0]"),
    (dict(sparsities=(1.0,)), "sparsities[0]"),
    (dict(seeds=()), "seeds"),
])
def test_config_rejects_bad_values_by_name(overrides, name):
    with pytest.raises(ValueError, match=rf"^{name.replace('[', '.').replace(']', '.')}"):
        iv.MovesConfig.small(**overrides)


def test_full_preset_is_larger_than_small():
    small, full = iv.MovesConfig.small(), iv.MovesConfig.full()
    assert len(full.seeds) >= 3 and full.epochs > small.epochs
    assert max(full.sparsities) > max(small.sparsities)


def test_scale_weights_copies_and_scales_only_weights(tiny):
    _, _, model = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scaled = iv.scale_weights(model, 3.0)
    weights = set(prunable_parameters(model))
    for n, p in scaled.named_parameters():
        factor = 3.0 if n in weights else 1.0
        torch.testing.assert_close(p.detach(), factor * before[n])
    for n, p in model.named_parameters():  # the original is untouched
        torch.testing.assert_close(p.detach(), before[n])
    with pytest.raises(ValueError, match="^factor"):
        iv.scale_weights(model, -1.0)


def test_uniform_scaling_keeps_the_accuracy_curve_of_a_bias_free_relu_net():
    # The lemma of the chapter: masks are the same and the logits scale by c^L.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))
    x, y = torch.randn(200, 8), torch.randint(0, 4, (200,))

    def acc(m):
        return float((m(x).argmax(1) == y).float().mean())

    curve = actual_pruning_limit(net, acc, progress=False).evaluations
    curve3 = actual_pruning_limit(iv.scale_weights(net, 3.0), acc, progress=False).evaluations
    assert curve == curve3


def test_measure_limit_is_consistent(tiny):
    config, data, model = tiny
    row = iv.measure_limit(model, data, config)
    assert 0.0 < row["predicted"] < 1.0 and 0.0 <= row["actual"] < 1.0
    assert row["epsilon"] > 0 and row["already_removed"] == 0.0
    assert row["dense_accuracy"] == data.accuracy(model)


def test_iterative_pruning_prunes_the_scheduled_fractions(tiny):
    config, data, model = tiny
    rows = iv.iterative_pruning_limits(config, data, model=model)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r, target in zip(rows, (0.0, 0.5, 0.75)):
        assert abs(r["already_removed"] - target) < 2e-3
        # the fixed point can never lie below what is already zero
        assert r["predicted"] >= r["already_removed"] - 1e-6
    assert all(bool(p.ne(0).all()) for p in prunable_parameters(model).values())


def test_scaled_limits_magnitude_only_prediction_falls(tiny):
    config, data, model = tiny
    rows = iv.scaled_limits(model, data, config)
    assert [r["scale"] for r in rows] == [1.0, 2.0]
    assert abs(rows[0]["predicted_magnitude_only"] - rows[0]["predicted"]) < 1e-9
    assert rows[1]["predicted_magnitude_only"] < rows[0]["predicted_magnitude_only"]


def test_l2_shrinks_the_weights(tiny):
    config, data, model = tiny
    rows = iv.l2_limits(config, data)
    assert rows[1]["weight_norm"] < rows[0]["weight_norm"]


def test_prune_and_score_leaves_inputs_alone_and_checks_names(tiny):
    config, data, model = tiny
    state = copy.deepcopy(model.state_dict())
    for pruner in iv.PRUNERS:
        acc = iv.prune_and_score(pruner, 0.5, lomp=model, plain=model, data=data, config=config)
        assert 0.0 <= acc <= 1.0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    with pytest.raises(ValueError, match="^pruner"):
        iv.prune_and_score("obd", 0.5, lomp=model, plain=model, data=data, config=config)
    with pytest.raises(ValueError, match="^sparsity"):
        iv.prune_and_score("lomp", 1.0, lomp=model, plain=model, data=data, config=config)


def test_full_preset_is_the_papers_fc5_setting():
    full = iv.MovesConfig.full()
    assert (full.dataset, full.model, full.lr, full.l1, full.epochs, full.batch_size) == (
        "cifar10", "fc5", 0.01, 5e-5, 200, 128)
    assert full.lanczos_steps == 128 and full.hessian_samples is None


def test_run_on_a_generated_cifar_folder(tmp_path):
    # The CIFAR code path end to end, on a tiny generated folder in the real layout.
    from pruninglab.data.cifar import write_cifar

    root = write_cifar(tmp_path, "cifar10", train_per_file=16, num_test=40)
    config = iv.MovesConfig(dataset="cifar10", model="mlp", hidden=(8,), epochs=2, batch_size=16,
                            retrain_epochs=1, imp_rounds=1, lanczos_steps=4, hessian_samples=40,
                            weight_decays=(0.0,), scales=(1.0, 2.0), sparsities=(0.5,))
    out = iv.run(config, data_dir=str(root), device="cpu")
    res = out["seeds"]["0"]
    assert [r["round"] for r in res["imp"]] == [0, 1]
    assert len(res["l2"]) == 1 and len(res["scaling"]) == 2
    assert set(res["pruners"]["accuracy"]) == set(iv.PRUNERS)
    assert out["config"]["dataset"] == "cifar10"


def test_config_rejects_cifar_models_on_digits():
    with pytest.raises(ValueError, match="^model"):
        iv.MovesConfig(model="fc5")
    with pytest.raises(ValueError, match="^dataset"):
        iv.MovesConfig(dataset="mnist")
