"""Block partition, block norms, block top-k masks and the phase schedules (book/sapp.md)."""
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from pruninglab.masks import apply_masks, check_masks, prunable_parameters, sparsity_report
from pruninglab.pruners.blocks import (
    block_layout, block_magnitude_masks, effective_sparsity, is_block_mask, select_block_layers,
    topk_block_mask,
)
from pruninglab.pruners.schedule import (
    Phase, check_phases, criteo_phases, imagenet_phases, kept_blocks, phase_index, phases_from_fractions,
    sparsity_ramp,
)


# --------------------------------------------------------------------------- layouts and norms


def loop_block_norms(mat, b):
    """Independent reference: Frobenius norm of every tile by explicit slicing (slices crop at the edge)."""
    r, c = mat.shape
    gr, gc = -(-r // b), -(-c // b)
    out = torch.zeros(gr, gc)
    for i in range(gr):
        for j in range(gc):
            out[i, j] = mat[i * b:(i + 1) * b, j * b:(j + 1) * b].double().pow(2).sum().sqrt()
    return out


def test_block_norms_of_hand_made_linear_weight():
    # 4 x 6 weight with 2 x 2 blocks filled with constants: block norm = 2 |c|.
    consts = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]])
    w = consts.repeat_interleave(2, 0).repeat_interleave(2, 1)
    lay = block_layout(w, 2)
    assert lay.grid == (2, 3) and lay.num_blocks == 6 and lay.divisible
    assert torch.allclose(lay.block_norms(w), 2 * consts.abs())


@pytest.mark.parametrize("shape,b", [((5, 7), 2), ((10, 3), 4), ((400, 390), 20), ((1, 1), 3)])
def test_block_norms_padding_rule(shape, b):
    torch.manual_seed(0)
    w = torch.randn(shape)
    lay = block_layout(w, b)
    assert lay.grid == (math.ceil(shape[0] / b), math.ceil(shape[1] / b))
    assert torch.allclose(lay.block_norms(w), loop_block_norms(w, b).float(), atol=1e-5)
    sizes = lay.block_sizes()
    assert int(sizes.sum()) == w.numel()  # partial blocks count only their real entries


def test_conv_matrix_view_is_hw_cin_by_cout():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 2, 5)  # C_out, C_in, H, W
    lay = block_layout(w, 4)
    m = lay.to_matrix(w)
    assert m.shape == (2 * 5 * 3, 6)
    for o in range(6):
        for i in range(3):
            for h in range(2):
                for x in range(5):
                    assert m[(h * 5 + x) * 3 + i, o] == w[o, i, h, x]
    assert torch.equal(lay.from_matrix(m), w)
    assert torch.allclose(lay.block_norms(w), loop_block_norms(m, 4).float(), atol=1e-5)


def test_expand_repeats_each_block_and_crops():
    lay = block_layout((5, 7), 3)
    grid = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    e = lay.expand(grid)
    assert e.shape == (5, 7)
    for r in range(5):
        for c in range(7):
            assert e[r, c] == grid[r // 3, c // 3]
    conv = block_layout((4, 2, 3, 3), 4)  # matrix 18 x 4, grid 5 x 1
    ge = conv.expand(torch.arange(5.0).reshape(5, 1))
    mat = conv.to_matrix(ge)
    assert torch.equal(mat, torch.arange(5.0).repeat_interleave(4)[:18, None].expand(18, 4))


def test_topk_block_mask_ties_and_nesting():
    scores = torch.tensor([[1.0, 3.0, 3.0], [0.5, 3.0, 2.0]])
    m = topk_block_mask(scores, 2)
    assert m.tolist() == [[False, True, True], [False, False, False]]  # ties: earlier index wins
    alive = torch.tensor([[True, False, True], [True, True, True]])
    m2 = topk_block_mask(scores, 3, alive=alive)
    assert m2.tolist() == [[False, False, True], [False, True, True]]
    assert not (m2 & ~alive).any()
    with pytest.raises(ValueError, match="k"):
        topk_block_mask(scores, 7)


def test_topk_block_mask_matches_a_stable_sort():
    # Independent reference: a stable descending argsort (earlier index first among ties).
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randint(0, 5, (n,), generator=g).float()  # many ties
        alive = torch.rand(n, generator=g) > 0.3 if trial % 2 else None
        n_alive = n if alive is None else int(alive.sum())
        k = int(torch.randint(0, n_alive + 1, (1,), generator=g))
        ranked = scores if alive is None else torch.where(alive, scores, torch.tensor(-math.inf))
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.argsort(ranked, descending=True, stable=True)[:k]] = True
        assert torch.equal(topk_block_mask(scores, k, alive=alive), ref)


# --------------------------------------------------------------------------- layer selection and masks


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 40), nn.ReLU(), nn.Linear(40, 10)
    )


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97])
def test_block_magnitude_masks_exact_per_layer(sparsity):
    model = net()
    b = 4
    masks = block_magnitude_masks(model, sparsity, b, min_blocks=20)
    # conv: (3*3*3=27) x 16 -> 7 x 4 = 28 blocks; fc1: 40 x 576 -> 10 x 144 = 1440; fc2: 3 x 10 = 30 blocks
    assert set(masks) == {"0.weight", "3.weight", "5.weight"}
    for name, m in masks.items():
        mod = model.get_submodule(name[:-7])
        lay = block_layout(mod.weight, b)
        assert is_block_mask(m, lay)
        kept = int(lay.to_matrix(m.float()).sum().item())  # element count
        norms = lay.block_norms(mod.weight)
        block_kept = (lay.block_norms(mod.weight * m) > 0)
        assert int(block_kept.sum()) == lay.num_blocks - math.floor(sparsity * lay.num_blocks + 1e-9)
        # the kept blocks are the largest-norm ones: every kept norm >= every pruned norm
        if (~block_kept).any():
            assert norms[block_kept].min() >= norms[~block_kept].max()
        if lay.divisible:
            assert kept == int(block_kept.sum()) * b * b
    # fc1 is divisible: its element sparsity is exactly the block sparsity
    rep = sparsity_report(masks).as_dict()
    n1 = 10 * 144
    assert rep["3.weight"] == pytest.approx(math.floor(sparsity * n1 + 1e-9) / n1, abs=1e-12)


def test_min_blocks_and_explicit_layers():
    model = net()
    sel = select_block_layers(model, 4, min_blocks=100)
    assert list(sel) == ["3.weight"]  # conv (28 blocks) and fc2 (30 blocks) stay dense
    sel = select_block_layers(model, 4, min_blocks=0, layers=["5", "0.weight"])
    assert list(sel) == ["0.weight", "5.weight"]  # module order
    with pytest.raises(ValueError, match="fewer than min_blocks"):
        select_block_layers(model, 4, min_blocks=100, layers=["5"])
    with pytest.raises(ValueError, match="not a Linear/Conv"):
        select_block_layers(model, 4, layers=["1"])
    with pytest.raises(ValueError, match="list of layer names"):
        select_block_layers(model, 4, layers="3")
    with pytest.raises(ValueError, match="min_blocks"):
        select_block_layers(model, 64, min_blocks=100)
    with pytest.raises(ValueError, match="block_size"):
        block_magnitude_masks(model, 0.5, 0)
    with pytest.raises(ValueError, match="sparsity"):
        block_magnitude_masks(model, 1.0, 4)


def test_masks_apply_and_effective_sparsity():
    model = net()
    masks = block_magnitude_masks(model, 0.9, 4, min_blocks=100)
    apply_masks(model, masks)
    assert (model[3].weight[~masks["3.weight"]] == 0).all()
    total = sum(p.numel() for p in prunable_parameters(model).values())
    assert effective_sparsity(model, masks) == pytest.approx(int((~masks["3.weight"]).sum()) / total)


def test_masks_helpers_understand_parametrised_layers():
    from pruninglab.pruners.schedule import Phase
    from pruninglab.pruners.sequential_attention import SequentialAttentionPruner

    model = net()
    pr = SequentialAttentionPruner(model, 0.5, 4, phases=[Phase("sparse", 0, 10)], min_blocks=100)
    params = prunable_parameters(model)
    assert params["3.weight"] is model[3].parametrizations.weight.original
    pr.on_step_start(0, model)
    masks = pr.masks
    check_masks(model, masks)
    apply_masks(model, masks)
    assert (model[3].parametrizations.weight.original[~masks["3.weight"]] == 0).all()


# --------------------------------------------------------------------------- schedules


def bounds(phases):
    return [(p.kind, p.start, p.end) for p in phases]


def test_imagenet_schedules():
    acdc = imagenet_phases(1000, "acdc")
    # ACDC's 100-epoch recipe scaled: prune at 10, 20, ..., 70, restore at 15, ..., 75, final prune at 85.
    prune_at = [p.start for p in acdc if p.kind == "sparse"]
    restore_at = [p.start for p in acdc if p.kind == "dense" and p.start > 0]
    assert prune_at == [100, 200, 300, 400, 500, 600, 700, 850]
    assert restore_at == [150, 250, 350, 450, 550, 650, 750]
    sapp = imagenet_phases(900, "sapp")
    assert sapp[0] == Phase("dense", 0, 90)
    cycles = sapp[1:19]
    assert [p.kind for p in cycles] == ["sparsify", "sparse", "dense"] * 6
    assert all(p.length == 30 for p in cycles)  # equal thirds of 10%
    assert bounds(sapp[19:]) == [("sparsify", 630, 765), ("sparse", 765, 900)]
    assert bounds(imagenet_phases(1000, "magnitude")) == [("dense", 0, 850), ("sparse", 850, 1000)]


def test_criteo_schedules():
    acdc = criteo_phases(1000, "acdc")
    assert acdc[0] == Phase("dense", 0, 200) and acdc[-1] == Phase("sparse", 800, 1000)
    middle = acdc[1:-1]
    assert [p.kind for p in middle] == ["sparse", "dense"] * 5 and all(p.length == 60 for p in middle)
    sapp = criteo_phases(1000, "sapp")
    assert sapp[0] == Phase("dense", 0, 200)
    assert [p.kind for p in sapp[1:13]] == ["sparsify", "sparse", "dense"] * 4
    assert bounds(sapp[13:]) == [("sparsify", 680, 800), ("sparse", 800, 1000)]
    assert bounds(criteo_phases(1000, "magnitude")) == [("dense", 0, 800), ("sparse", 800, 1000)]


@pytest.mark.parametrize("total", [22, 97, 301, 12345])
@pytest.mark.parametrize("builder", [imagenet_phases, criteo_phases])
@pytest.mark.parametrize("method", ["sapp", "acdc", "magnitude"])
def test_schedules_tile_the_run(total, builder, method):
    ph = check_phases(builder(total, method))
    assert ph[0].start == 0 and ph[-1].end == total
    assert ph[-1].kind == "sparse"
    assert all(p.length >= 1 for p in ph)


def test_ramp_values_and_kept_blocks():
    # Values worked out by hand from the ramp formula for s = 0.9, c = 4.
    got = [round(sparsity_ramp(t, 0.9), 3) for t in (0.1, 0.25, 0.5, 0.75)]
    assert got == [0.302, 0.580, 0.793, 0.871]
    assert sparsity_ramp(1.0, 0.9) == pytest.approx(0.9) and sparsity_ramp(0.0, 0.9) == 0.0
    assert sparsity_ramp(0.5, 0.8, c=0) == pytest.approx(0.4)
    assert kept_blocks(100, 0.29) == 71 and kept_blocks(10, 0.7) == 3 and kept_blocks(6240, 0.99) == 63
    assert kept_blocks(5, 0.99) == 1


def test_phase_helpers_and_bad_input():
    ph = phases_from_fractions(10, [("dense", Fraction(1, 3)), ("sparse", Fraction(2, 3))])
    assert bounds(ph) == [("dense", 0, 3), ("sparse", 3, 10)]
    assert phase_index(ph, 0) == 0 and phase_index(ph, 3) == 1 and phase_index(ph, 99) == 1
    assert ph[1].progress(9) == 1.0
    with pytest.raises(ValueError, match="kind"):
        Phase("pruned", 0, 3)
    with pytest.raises(ValueError, match="end"):
        Phase("dense", 3, 3)
    with pytest.raises(ValueError, match="contiguous"):
        check_phases([Phase("dense", 0, 3), Phase("sparse", 4, 6)])
    with pytest.raises(ValueError, match="start at step 0"):
        check_phases([Phase("dense", 1, 3)])
    with pytest.raises(ValueError, match="method"):
        imagenet_phases(100, "obd")
    with pytest.raises(ValueError, match="total_steps"):
        criteo_phases(5, "acdc")
    with pytest.raises(ValueError, match="t:"):
        sparsity_ramp(1.5, 0.9)
