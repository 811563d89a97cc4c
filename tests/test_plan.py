"""The run plan: FLOP counts against known values, memory and time arithmetic, every experiment's builder."""
import json

import pytest
import torch
from torch import nn

from pruninglab.plan import BUILDERS, GPU_PEAK_BF16, _count_flops, _saved_bytes, format_plan, plan_for


def test_resnet50_forward_is_4_1_giga_multiply_adds():
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    flops = _count_flops(lambda: net(torch.zeros(1, 3, 224, 224)))
    assert abs(flops / 2 - 4.09e9) / 4.09e9 < 0.01  # 4.1 G MACs = 8.2 GFLOPs


def test_saved_bytes_are_activations_not_parameters():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))

    def loss(b):
        return lambda: nn.functional.cross_entropy(net(torch.randn(b, 10)), torch.zeros(b, dtype=torch.long))

    per_sample = (_saved_bytes(loss(16), net) - _saved_bytes(loss(8), net)) / 8
    # Input (10), ReLU output (20), log-softmax output (5) floats per sample, give or take a few.
    assert 30 * 4 <= per_sample <= 60 * 4
    assert _saved_bytes(loss(8), net) < 8 * 60 * 4 + 512  # the weights (1.1k floats) are not counted


def small_configs():
    from pruninglab.experiments.inr import INRConfig
    from pruninglab.experiments.limit import LimitConfig
    from pruninglab.experiments.phase import PhaseConfig
    from pruninglab.experiments.sapp_criteo import CriteoConfig
    from pruninglab.experiments.sapp_imagenet import ImagenetConfig

    return {"sapp-imagenet": ImagenetConfig.small(), "sapp-criteo": CriteoConfig.small(),
            "limit": LimitConfig.small(), "inr": INRConfig.small(), "phase": PhaseConfig.small()}


@pytest.mark.parametrize("name", ["sapp-imagenet", "sapp-criteo", "limit", "inr", "phase"])
def test_plans_of_small_configs(name):
    assert set(BUILDERS) == {"sapp-imagenet", "sapp-criteo", "limit", "inr", "phase"}
    config = small_configs()[name]
    plan = plan_for(name, config, gpu="a100", num_gpus=2)
    text = format_plan(plan)
    assert json.loads(text.splitlines()[-1]) == {k: v for k, v in plan.items() if k != "notes"}
    if name == "phase":
        assert plan["params"] == 0 and plan["projected_hours"] is None
        return
    model_params = plan["params"]
    assert model_params > 0 and plan["forward_flops_per_sample"] > 0 and plan["steps"] >= 1
    if name != "inr":
        assert plan["train_flops_per_step"] == pytest.approx(3 * plan["forward_flops_per_sample"] * plan["batch_size"])
    else:  # a second-order meta-step: more than forward + backward of every point of every signal
        points = (config.resolution or 32) ** 2
        assert plan["train_flops_per_step"] > 3 * plan["forward_flops_per_sample"] * points * config.meta_batch
    hours = plan["total_flops"] / (2 * GPU_PEAK_BF16["a100"] * plan["utilisation"]) / 3600
    assert plan["projected_hours_compute"] == pytest.approx(hours, abs=0.006)
    assert plan["projected_hours"] == max(plan["projected_hours_compute"], plan["projected_hours_input"])
    assert plan["input_samples_per_s_per_worker"] > 0
    assert (plan["peak_memory_gib_per_gpu"] + 1e-4) * 2**30 >= model_params * 4 * 3  # weights, grads, state
    assert plan["checkpoint_disk_gib"] > 0 and plan["gpu"] == "a100" and plan["num_gpus"] == 2
    assert "parameters" in text and "projected time" in text


def test_criteo_plan_counts_the_dense_layers():
    from pruninglab.experiments.sapp_criteo import CriteoConfig

    plan = plan_for("sapp-criteo", CriteoConfig.small())
    # 390 -> 400 -> 400 -> 400 -> 1 multiply-adds, plus the 13 x 10 integer embedding products.
    macs = 390 * 400 + 400 * 400 * 2 + 400
    assert macs * 2 <= plan["forward_flops_per_sample"] <= macs * 2 * 1.01
    assert plan["params"] == 26 * 1000 * 10 + 2 * 13 * 10 + 390 * 400 + 400 + 2 * (400 * 400 + 400) + 401


def test_bad_arguments():
    from pruninglab.experiments.sapp_criteo import CriteoConfig

    with pytest.raises(ValueError, match="experiment_name: expected one of"):
        plan_for("mnist", CriteoConfig.small())
    with pytest.raises(ValueError, match="gpu: expected one of"):
        plan_for("sapp-criteo", CriteoConfig.small(), gpu="tpu")
    with pytest.raises(ValueError, match="num_gpus"):
        plan_for("sapp-criteo", CriteoConfig.small(), num_gpus=0)
