"""The block analogue of the pruning limit: R_B, the fixed point p*_B = G(R_B(p*_B)), the measured block limit."""
import math

import pytest
import torch
from torch import nn

from pruninglab.limits.block_limit import (
    BlockRadius,
    actual_block_limit,
    block_squared_norms,
    predicted_block_limit,
)
from pruninglab.limits.pruning_limit import MagnitudeRadius, predicted_pruning_limit
from pruninglab.pruners.blocks import block_magnitude_masks


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(12, 16, generator=g), "b.weight": torch.randn(10, 12, generator=g) * 0.3}


FRACTIONS = [0.0, 0.013, 0.1, 0.25, 0.5, 0.77, 0.9, 0.999, 1.0]


def test_block_size_one_is_the_magnitude_radius():
    w = _weights()
    r1, r = BlockRadius(w, 1), MagnitudeRadius(w)
    for p in FRACTIONS:
        assert r1(p) == pytest.approx(r(p), rel=1e-6, abs=1e-9)
        assert r1.removed_fraction(p) == pytest.approx(r.num_removed(p) / r.num_weights)


@pytest.mark.parametrize("block", [2, 3, 4, 5])
@pytest.mark.parametrize("allocation", ["global", "layerwise"])
def test_block_radius_is_at_least_the_magnitude_radius(block, allocation):
    # At the number of weights the blocks really remove, magnitude pruning is the closest point.
    w = _weights(1)
    rb, r = BlockRadius(w, block, allocation=allocation), MagnitudeRadius(w)
    for p in FRACTIONS:
        removed = rb.removed_fraction(p)
        assert rb(p) >= r(removed) - 1e-6
        if allocation == "global":
            assert removed >= p - 1e-12
            assert rb(p) >= r(p) - 1e-6


def test_known_small_case():
    # One 4 x 4 matrix, 2 x 2 blocks with squared norms 4, 1, 9, 16 (top-left, top-right, ...).
    w = torch.zeros(4, 4)
    w[:2, :2] = 1.0          # 4 entries of 1: squared norm 4
    w[0, 2] = 1.0            # squared norm 1
    w[2:, :2] = 1.5          # 4 * 2.25 = 9
    w[2:, 2:] = 2.0          # 16
    sq, size = block_squared_norms(w, 2)
    assert sq.tolist() == [[4.0, 1.0], [9.0, 16.0]]
    assert size.tolist() == [[4, 4], [4, 4]]
    rb = BlockRadius(w, 2)
    # p = 0.25 removes one block (4 weights): the smallest, squared norm 1.
    assert rb(0.25) == pytest.approx(1.0)
    # p = 0.3 needs 5 weights: two whole blocks (1 + 4), half of the matrix.
    assert rb(0.3) == pytest.approx(math.sqrt(5.0))
    assert rb.removed_fraction(0.3) == 0.5
    assert rb(0.75) == pytest.approx(math.sqrt(14.0))
    assert rb(1.0) == pytest.approx(math.sqrt(30.0))
    kept = rb.masks(0.3)["weights"]  # a single tensor is named "weights"
    assert kept.tolist() == [[False, False, False, False], [False, False, False, False],
                             [True, True, True, True], [True, True, True, True]]
    # unstructured pruning removes the 3 zeros and two ones: a smaller distance
    assert MagnitudeRadius(w)(0.3) == pytest.approx(math.sqrt(2.0))


def test_partial_blocks_and_layerwise_counts():
    w = {"x": torch.arange(1.0, 31.0).reshape(5, 6)}  # B = 4: a 2 x 2 grid, 3 partial blocks
    sq, size = block_squared_norms(w["x"], 4)
    assert size.tolist() == [[16, 8], [4, 2]]
    assert float(sq.sum()) == pytest.approx(float(w["x"].double().square().sum()))
    rb = BlockRadius(w, 4, allocation="layerwise")
    # layerwise: floor(p N) of the N = 4 blocks, as the block pruners count
    assert [rb.removed_blocks(p) for p in (0.2, 0.25, 0.5, 0.99)] == [0, 1, 2, 3]


def test_layerwise_masks_match_block_magnitude_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 40))
    names = ["0.weight", "2.weight"]
    rb = BlockRadius(model, 4, allocation="layerwise", params=names)
    for s in (0.5, 0.9):
        want = block_magnitude_masks(model, s, 4, min_blocks=1)
        got = rb.masks(s)
        for n in names:
            assert torch.equal(got[n], want[n])
        r2 = sum(float(dict(model.named_parameters())[n].detach().double()[~got[n]].square().sum())
                 for n in names)
        assert rb.squared(s) == pytest.approx(r2)


def test_global_masks_are_the_closest_block_support():
    w = _weights(2)
    rb = BlockRadius(w, 2)
    p = 0.6
    masks = rb.masks(p)
    removed = sum(float(t.double()[~masks[n]].square().sum()) for n, t in w.items())
    assert rb.squared(p) == pytest.approx(removed)
    assert sum(int((~m).sum()) for m in masks.values()) / rb.num_weights == rb.removed_fraction(p)
    # every removed block is no larger than every kept block
    sq = {n: block_squared_norms(t, 2)[0].reshape(-1) for n, t in w.items()}
    kept_min = min(float(sq[n][m[::2, ::2].reshape(-1)].min()) for n, m in masks.items() if m.any())
    gone_max = max(float(sq[n][~m[::2, ::2].reshape(-1)].max()) for n, m in masks.items()
                   if (~m).any())
    assert gone_max <= kept_min


def test_block_fixed_point_is_below_the_unstructured_one_and_is_a_fixed_point():
    w = _weights(3)
    eig = torch.logspace(-3, 1, 300)
    eps = 0.05
    p1 = predicted_pruning_limit(w, eig, eps).removed
    pb1 = predicted_block_limit(w, eig, eps, 1).removed
    assert pb1 == pytest.approx(p1, abs=1e-6)
    last = p1
    for b in (2, 4):
        pred = predicted_block_limit(w, eig, eps, b)
        assert pred.removed <= last + 1e-9
        last = pred.removed
        # a fixed point of a step function: G(R_B) >= p just left of it and < p just right of it
        rb = BlockRadius(w, b)
        from pruninglab.limits.pruning_limit import normalized_squared_width as G
        assert float(G(rb(pred.removed - 1e-4), eig, eps)) >= pred.removed - 1e-4
        assert float(G(rb(min(1.0, pred.removed + 1e-4)), eig, eps)) < pred.removed + 1e-4
    # a flat spectrum keeps everything removable
    assert predicted_block_limit(w, torch.zeros(10), eps, 4).removed == 1.0


def test_actual_block_limit_scans_the_whole_grid_and_restores_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False))
    before = [p.detach().clone() for p in model.parameters()]
    # A score that is bad in the middle of the grid and good again later: the scan finds the later one.
    rb = BlockRadius(model, 2)

    def evaluate(m):
        kept = sum(int((p != 0).sum()) for p in m.parameters()) / rb.num_weights
        removed = 1 - kept
        return 1.0 if removed < 0.3 or 0.6 <= removed < 0.7 else 0.0

    res = actual_block_limit(model, evaluate, 2, rule=">=", grid=100)
    assert 0.6 <= rb.removed_fraction(res.removed) < 0.7
    assert res.bracket[1] > res.removed
    strict = actual_block_limit(model, evaluate, 2, rule=">", grid=100)
    assert strict.removed == 0.0  # nothing is strictly above dense
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)


def test_bad_input():
    w = _weights()
    with pytest.raises(ValueError, match="block_size"):
        BlockRadius(w, 0)
    with pytest.raises(ValueError, match="allocation"):
        BlockRadius(w, 2, allocation="per-layer")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        BlockRadius({"bias": torch.ones(3)}, 2)
    with pytest.raises(ValueError, match="p:"):
        BlockRadius(w, 2)(1.5)
    with pytest.raises(ValueError, match="block_size"):
        predicted_block_limit(w, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="block_size"):
        predicted_block_limit(BlockRadius(w, 2), torch.ones(3), 0.1, 4)
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="rule"):
        actual_block_limit(model, lambda m: 1.0, 2, rule="=>")
    with pytest.raises(ValueError, match="grid"):
        actual_block_limit(model, lambda m: 1.0, 2, grid=1)
