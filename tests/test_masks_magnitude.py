import copy
import math

import pytest
import torch
from torch import nn

from pruninglab.masks import (
    apply_masks, from_torch_prune, load_masks, save_masks, sparsity_report, to_torch_prune,
)
from pruninglab.pruners.magnitude import (
    global_magnitude_masks, imp_sparsities, layerwise_magnitude_masks, lowest_score_masks, random_masks,
)


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Conv1d(1, 4, 3))


def reference_masks(model, sparsity):
    """Independent reference: sort all magnitudes at once (what torch.nn.utils.prune does)."""
    params = {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}
    flat = torch.cat([p.detach().abs().flatten() for p in params.values()])
    k = math.floor(sparsity * flat.numel())
    order = torch.argsort(flat, stable=True)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:k]] = False
    out, i = {}, 0
    for n, p in params.items():
        out[n + ".weight"] = keep[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return out


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_global_magnitude_matches_full_sort(sparsity):
    model = small_net()
    ours = global_magnitude_masks(model, sparsity, warn_collapse=False)
    ref = reference_masks(model, sparsity)
    assert ours.keys() == ref.keys()
    for n in ours:
        assert torch.equal(ours[n], ref[n]), n


def test_exact_count_with_ties():
    w = {"a": torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0]), "b": torch.tensor([1.0, 1.0, -0.0, 3.0])}
    masks = lowest_score_masks({k: v.abs() for k, v in w.items()}, 4)
    assert sum(int((~m).sum()) for m in masks.values()) == 4
    # zeros go first, then ties in parameter order then index order
    assert masks["a"].tolist() == [False, False, False, True, True]
    assert masks["b"].tolist() == [True, True, False, True]


def test_existing_masks_stay_pruned_and_total_is_target():
    model = small_net()
    m1 = global_magnitude_masks(model, 0.5)
    with torch.no_grad():  # change magnitudes so the second round would revive pruned weights if allowed
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    m2 = global_magnitude_masks(model, 0.8, masks=m1)
    for n in m1:
        assert not (m2[n] & ~m1[n]).any()
    rep = sparsity_report(m2)
    assert rep.kept == rep.numel - math.floor(0.8 * rep.numel)
    with pytest.raises(ValueError, match="sparsity"):
        global_magnitude_masks(model, 0.3, masks=m2)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity"):
        global_magnitude_masks(small_net(), bad)


def test_nan_weights_rejected():
    model = small_net()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        global_magnitude_masks(model, 0.5)


def test_layerwise_and_random():
    model = small_net()
    lw = layerwise_magnitude_masks(model, 0.5)
    for n, m in lw.items():
        assert int((~m).sum()) == math.floor(0.5 * m.numel())
    g = torch.Generator().manual_seed(0)
    r1 = random_masks(model, 0.7, generator=g)
    r2 = random_masks(model, 0.7, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(r1[n], r2[n]) for n in r1)
    assert sparsity_report(r1).kept == sparsity_report(r1).numel - math.floor(0.7 * sparsity_report(r1).numel)


def test_apply_report_save_load_roundtrip(tmp_path):
    model = small_net()
    masks = global_magnitude_masks(model, 0.6)
    apply_masks(model, masks)
    for n, p in model.named_parameters():
        if n in masks:
            assert (p[~masks[n]] == 0).all()
    path = save_masks(masks, tmp_path / "m.pt")
    fresh = small_net(seed=1)
    loaded = load_masks(path, fresh)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks)
    text = str(sparsity_report(masks, 0.6))
    assert "total" in text and "0.6000" in text
    clone = copy.deepcopy(model)
    assert torch.equal(clone[0].weight, model[0].weight)


def test_torch_prune_interop():
    model = small_net()
    masks = global_magnitude_masks(model, 0.4)
    to_torch_prune(model, masks)
    assert hasattr(model[0], "weight_orig") and hasattr(model[0], "weight_mask")
    back = from_torch_prune(model, remove=True)
    assert all(torch.equal(back[n], masks[n]) for n in masks)
    assert not hasattr(model[0], "weight_orig")
    assert (model[0].weight[~masks["0.weight"]] == 0).all()


def test_imp_sparsities():
    assert imp_sparsities(3) == pytest.approx([0.2, 0.36, 0.488])


# ----------------------------------------------------------------------------- pruned means zero


def test_apply_masks_sets_pruned_nan_and_inf_to_exact_zero():
    model = small_net()
    masks = global_magnitude_masks(model, 0.5, warn_collapse=False)
    w = model[0].weight
    pruned = (~masks["0.weight"]).nonzero()[:3]
    with torch.no_grad():
        w[tuple(pruned[0])] = float("nan")
        w[tuple(pruned[1])] = float("inf")
        w[tuple(pruned[2])] = -float("inf")
    apply_masks(model, masks)
    for n, m in masks.items():
        p = dict(model.named_parameters())[n]
        assert bool((p[~m] == 0).all()) and not bool(torch.signbit(p[~m]).any()), n  # exactly +0.0
        assert bool(torch.isfinite(p).all())


def test_apply_masks_allow_nonfinite_keeps_a_kept_nan():
    model = small_net()
    masks = {"0.weight": torch.ones(30, 20, dtype=torch.bool)}
    masks["0.weight"][0, 1] = False
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[0].weight[0, 1] = float("nan")
    apply_masks(model, masks, allow_nonfinite=True)
    assert torch.isnan(model[0].weight[0, 0]) and model[0].weight[0, 1] == 0


# ----------------------------------------------------------------------------- float64 precision


def test_float64_weights_ranked_at_float64_precision():
    # These differ below float32 resolution: float32 keys would tie them and prune by index.
    w = {"a": torch.tensor([1.0 + 3e-12, 1.0 + 1e-12, 1.0 + 2e-12, 1.0], dtype=torch.float64)}
    assert global_magnitude_masks(w, 0.5)["a"].tolist() == [True, False, True, False]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.93])
def test_float64_radix_select_matches_full_sort(sparsity):
    gen = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(37, 11, generator=gen, dtype=torch.float64) * 1e-3,
              "b": torch.randn(200, generator=gen, dtype=torch.float64),
              "c": (1 + torch.rand(64, generator=gen, dtype=torch.float64) * 1e-10)}  # ties in float32
    flat = torch.cat([p.abs().flatten() for p in params.values()])
    k = math.floor(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    ours = torch.cat([m.flatten() for m in global_magnitude_masks(params, sparsity, warn_collapse=False).values()])
    assert torch.equal(ours, keep)


def test_mixed_float32_and_float64_layers():
    params = {"f32": torch.tensor([0.5, 2.0], dtype=torch.float32),
              "f64": torch.tensor([1.0 + 1e-12, 1.0], dtype=torch.float64)}
    masks = global_magnitude_masks(params, 0.5)
    assert masks["f32"].tolist() == [False, True] and masks["f64"].tolist() == [True, False]


# ----------------------------------------------------------------------------- tied weights


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50)
        self.head.weight = self.emb.weight

    def forward(self, tokens):
        return self.head(torch.relu(self.body(self.emb(tokens))))


def test_readme_example_on_a_tied_model():
    import pruninglab as pl

    model = TiedLM()
    masks = pl.global_magnitude_masks(model, sparsity=0.5, warn_collapse=False)
    pl.apply_masks(model, masks)
    report = pl.sparsity_report(masks)
    assert sorted(masks) == ["body.weight", "head.weight"]  # the shared tensor once
    assert report.numel == 16 * 16 + 50 * 16 and report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(model.emb.weight == 0, ~masks["head.weight"])  # applied to the one tensor


def test_tied_mask_applies_under_either_name():
    model = TiedLM()
    mask = torch.rand(50, 16, generator=torch.Generator().manual_seed(0)) > 0.5
    apply_masks(model, {"emb.weight": mask})
    assert torch.equal(model.head.weight != 0, mask)
    ones = TiedLM()
    apply_masks(ones, {"head.weight": mask, "emb.weight": mask.clone()})  # both names, same mask: fine
    assert torch.equal(ones.emb.weight != 0, mask)


def test_tied_tensor_counted_once_when_both_layers_are_prunable():
    model = TiedLM()
    masks = global_magnitude_masks(model, 0.5, params=["emb.weight", "head.weight", "body.weight"],
                                   warn_collapse=False)
    assert sorted(masks) == ["body.weight", "emb.weight"]
    assert sum(int((~m).sum()) for m in masks.values()) == math.floor(0.5 * (800 + 256))


# ----------------------------------------------------------------------------- layer collapse


def test_readme_example_on_resnet50_warns_about_fc():
    torchvision = pytest.importorskip("torchvision")
    import pruninglab as pl
    from pruninglab.masks import SparsityWarning

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    with pytest.warns(SparsityWarning, match=r"masks\['fc.weight'\]: layer collapse: keeps 0 of 2048000"):
        masks = pl.global_magnitude_masks(model, sparsity=0.9)
    report = pl.sparsity_report(masks)
    assert report.collapsed == ["fc.weight"]
    assert [ln for ln in str(report).splitlines() if ln.startswith("fc.weight")][0].endswith("COLLAPSED")
    kept = pl.global_magnitude_masks(model, sparsity=0.9, min_kept_per_layer=1000)
    assert int(kept["fc.weight"].sum()) == 1000
