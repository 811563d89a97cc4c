"""Bad input to the pruners and masks: a clear error naming the input, or a warning naming the layer,
never a silently wrong result. Each case asserts the error type and that the message names the input.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pruninglab.masks import SparsityWarning, apply_masks, save_masks, sparsity_report
from pruninglab.pruners.magnitude import (
    global_magnitude_masks, layerwise_magnitude_masks, lowest_score_masks, one_shot_magnitude_prune, random_masks,
)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


class Tied(nn.Module):
    """A language-model head whose output layer shares the embedding's weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight


# ----------------------------------------------------------------------------- dtypes, NaN, complex


@pytest.mark.parametrize("prune", [
    lambda p: global_magnitude_masks(p, 0.5),
    lambda p: layerwise_magnitude_masks(p, 0.5),
    lambda p: random_masks(p, 0.5),
])
@pytest.mark.parametrize("bad, pattern", [
    (torch.randn(4, 4, dtype=torch.complex64), r"params\['w'\]: is complex"),
    (torch.arange(16).reshape(4, 4), r"params\['w'\]: has dtype torch.int64"),
    (torch.ones(4, 4, dtype=torch.bool), r"params\['w'\]: has dtype torch.bool"),
])
def test_every_pruner_refuses_non_real_weights(prune, bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        prune({"v": torch.randn(3, 3), "w": bad})


@pytest.mark.parametrize("prune", [
    lambda p: global_magnitude_masks(p, 0.5),
    lambda p: layerwise_magnitude_masks(p, 0.5),
    lambda p: random_masks(p, 0.5),
    lambda p: global_magnitude_masks(p, 0.5, min_kept_per_layer=2),
])
def test_every_pruner_refuses_nan_weights(prune):
    w = torch.randn(4, 4, dtype=torch.float64)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"params\['w'\]: contains NaN or Inf"):
        prune({"v": torch.randn(3, 3), "w": w})


@pytest.mark.parametrize("scores, pattern", [
    ({"a": torch.tensor([1, 2, 3])}, r"scores\['a'\]: has dtype torch.int64"),
    ({"a": torch.tensor([1.0, -2.0, 3.0])}, r"scores\['a'\]: scores must be non-negative"),
    ({"a": torch.tensor([1.0, float("inf")])}, r"scores\['a'\]: contains NaN or Inf"),
])
def test_lowest_score_masks_checks_scores(scores, pattern):
    with pytest.raises(ValueError, match=pattern):
        lowest_score_masks(scores, 1)


# ----------------------------------------------------------------------------- params by name


def test_params_string_is_one_name_not_characters():
    masks = global_magnitude_masks(net(), 0.5, params="2.weight")
    assert list(masks) == ["2.weight"]


def test_params_unknown_string_names_it():
    with pytest.raises(ValueError, match=r"params: \['fc.weight'\] are not parameters of the model"):
        global_magnitude_masks(net(), 0.5, params="fc.weight")


def test_params_not_strings():
    with pytest.raises(ValueError, match=r"params: expected parameter names \(strings\), got \[3\]"):
        global_magnitude_masks(net(), 0.5, params=["0.weight", 3])


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_min_kept_per_layer_must_be_a_count(value):
    with pytest.raises(ValueError, match="min_kept_per_layer: expected a non-negative integer"):
        global_magnitude_masks(net(), 0.5, min_kept_per_layer=value)


def test_min_kept_per_layer_leaving_too_little_to_prune():
    # 48 + 24 weights; keeping 40 per layer leaves 8 + 0 prunable, far below 50 %.
    with pytest.raises(ValueError, match=r"sparsity: 0.5 prunes 36 more weights, but min_kept_per_layer=40"):
        global_magnitude_masks(net(), 0.5, min_kept_per_layer=40)


# ----------------------------------------------------------------------------- masks: bool only, pruned = 0


@pytest.mark.parametrize("mask", [torch.ones(8, 6), torch.ones(8, 6, dtype=torch.int64), torch.ones(8, 6) * 0.5])
def test_sparsity_report_refuses_non_bool_masks(mask):
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: expected a bool tensor"):
        sparsity_report({"0.weight": mask})


def test_save_masks_refuses_float_masks_and_writes_nothing(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"previous masks")
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: expected a bool tensor"):
        save_masks({"0.weight": torch.rand(8, 6)}, path)
    assert path.read_bytes() == b"previous masks"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_apply_masks_refuses_nonfinite_kept_weight_and_changes_nothing(bad):
    model = net()
    with torch.no_grad():
        model[0].weight[0, 0] = bad
    masks = {"0.weight": torch.ones(8, 6, dtype=torch.bool)}
    masks["0.weight"][1, 1] = False
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"params\['0.weight'\]: has NaN or Inf values among its kept"):
        apply_masks(model, masks)
    assert torch.equal(model[0].weight.detach().nan_to_num(), before.nan_to_num())  # untouched


def test_tied_names_with_different_masks_are_refused():
    model = Tied()
    a = torch.ones(40, 16, dtype=torch.bool)
    b = a.clone()
    b[0, 0] = False
    with pytest.raises(ValueError, match=r"masks\['head.weight'\]: 'head.weight' and 'emb.weight' are the same"):
        apply_masks(model, {"emb.weight": a, "head.weight": b})


# ----------------------------------------------------------------------------- layer collapse


def test_collapse_warns_naming_the_layer():
    # The second layer's weights are 1000x smaller: a global threshold removes all of them.
    params = {"big": torch.randn(50, 50), "small": torch.randn(10, 10) * 1e-3}
    with pytest.warns(SparsityWarning, match=r"masks\['small'\]: layer collapse: keeps 0 of 100"):
        masks = global_magnitude_masks(params, 0.5)
    assert sparsity_report(masks).collapsed == ["small"]
    assert "COLLAPSED" in str(sparsity_report(masks))


def test_collapse_of_all_but_a_handful_warns():
    torch.manual_seed(0)
    small = torch.randn(40, 40) * 1e-3
    small[0, :3] = 10.0  # three large weights survive, 1597 go
    with pytest.warns(SparsityWarning, match=r"masks\['small'\]: layer collapse: keeps 3 of 1600"):
        global_magnitude_masks({"big": torch.randn(60, 60), "small": small}, 0.6)


def test_min_kept_per_layer_prevents_collapse():
    params = {"big": torch.randn(50, 50), "small": torch.randn(10, 10) * 1e-3}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparsityWarning)
        masks = global_magnitude_masks(params, 0.5, min_kept_per_layer=10)
    assert int(masks["small"].sum()) == 10
    assert sum(int((~m).sum()) for m in masks.values()) == int(0.5 * 2600)  # still exactly the target


# ----------------------------------------------------------------------------- block pruners


def test_block_magnitude_refuses_nan_weight_naming_the_layer():
    from pruninglab.pruners.blocks import block_magnitude_masks

    model = nn.Sequential(nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"params\['0.weight'\]: contains NaN or Inf"):
        block_magnitude_masks(model, 0.5, 8, min_blocks=1)


def test_block_magnitude_refuses_half_precision_complex():
    from pruninglab.pruners.blocks import block_magnitude_masks

    model = nn.Sequential(nn.Linear(32, 32))
    model[0].weight = nn.Parameter(torch.randn(32, 32, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"params\['0.weight'\]: is complex"):
        block_magnitude_masks(model, 0.5, 8, min_blocks=1)


def test_sapp_block_larger_than_the_layer_is_an_error():
    from pruninglab.pruners.schedule import imagenet_phases
    from pruninglab.pruners.sequential_attention import SequentialAttentionPruner

    with pytest.raises(ValueError, match=r"block_size: at sparsity 0.9 no managed layer would lose a block.*0.weight"):
        SequentialAttentionPruner(nn.Sequential(nn.Linear(64, 64)), sparsity=0.9, block_size=128,
                                  phases=imagenet_phases(100, "sapp"), min_blocks=1)


def test_sapp_layer_with_too_few_blocks_warns_naming_it():
    from pruninglab.pruners.schedule import imagenet_phases
    from pruninglab.pruners.sequential_attention import SequentialAttentionPruner

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 16))  # 4 blocks of 32x32 (exact at 75 %), and 2
    with pytest.warns(SparsityWarning, match=r"layers: '1.weight' has 2 block\(s\) of 32x32, so its sparsity is 0.5000"):
        SequentialAttentionPruner(model, sparsity=0.75, block_size=32, phases=imagenet_phases(100, "sapp"),
                                  min_blocks=1)


def test_acdc_refuses_nan_weight():
    from pruninglab.pruners.acdc import ACDCPruner
    from pruninglab.pruners.schedule import imagenet_phases

    model = nn.Sequential(nn.Linear(32, 32))
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"params\['0.weight'\]: contains NaN or Inf"):
        ACDCPruner(model, 0.5, 8, phases=imagenet_phases(100, "acdc"), min_blocks=1)


def test_one_shot_on_tied_model_prunes_once():
    model = Tied()
    masks = one_shot_magnitude_prune(model, 0.5, warn_collapse=False)
    assert sorted(masks) == ["body.weight", "head.weight"]  # the tied tensor once
    assert sparsity_report(masks).numel == 16 * 16 + 40 * 16


@pytest.mark.parametrize("kind", ["sapp", "powerprop", "acdc"])
def test_block_pruners_leave_exact_zeros_where_a_pruned_weight_was_nan(kind):
    from pruninglab.pruners.acdc import ACDCPruner, PowerPropPruner
    from pruninglab.pruners.schedule import Phase
    from pruninglab.pruners.sequential_attention import SequentialAttentionPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    cls = {"sapp": SequentialAttentionPruner, "powerprop": PowerPropPruner, "acdc": ACDCPruner}[kind]
    pr = cls(model, 0.5, 4, [Phase("sparse", 0, 4)], min_blocks=1)
    pr.on_step_start(0, model)
    pruned_block = (~pr.block_masks["0.weight"]).nonzero()[0]
    with torch.no_grad():  # a pruned entry of the stored tensor turns NaN (e.g. a diverged optimizer state)
        pr.weight("0.weight")[pruned_block[0] * 4, pruned_block[1] * 4] = float("nan")
    masks = pr.finalize()
    w = model[0].weight
    assert bool((w[~masks["0.weight"]] == 0).all()) and bool(torch.isfinite(w).all())
