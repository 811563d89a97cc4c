"""BSR conversion of block-pruned Linear layers (book/block_sparse_speed.md)."""
import copy
import io

import pytest
import torch
from torch import nn

import pruninglab as pl
from pruninglab.sparse.bsr import (
    BlockSparseLinear,
    block_structure,
    break_even_sparsity,
    infer_block_size,
    random_block_mask,
    storage_bytes,
    time_dense_vs_bsr,
    to_block_sparse,
    triton_bsr_eligible,
)


def masked_reference(model, masks):
    ref = copy.deepcopy(model)
    pl.apply_masks(ref, masks)
    return ref


def block_mask_by_hand(rows, cols, b, kept):
    """A mask whose kept blocks are listed explicitly (independent of random_block_mask)."""
    m = torch.zeros(rows, cols, dtype=torch.bool)
    for i, j in kept:
        m[i * b:(i + 1) * b, j * b:(j + 1) * b] = True
    return m


@pytest.mark.parametrize("block", [4, 16, (8, 4)])
def test_outputs_equal_dense_masked_model(block):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32, bias=False), nn.Tanh(), nn.Linear(32, 5))
    gen = torch.Generator().manual_seed(1)
    masks = {"0.weight": random_block_mask(48, 64, block, 0.7, generator=gen),
             "2.weight": random_block_mask(32, 48, block, 0.5, generator=gen)}
    bsr = to_block_sparse(model, masks, block)
    ref = masked_reference(model, masks)
    x = torch.randn(3, 7, 64)  # leading batch dims are kept
    with torch.no_grad():
        torch.testing.assert_close(bsr(x), ref(x), rtol=1e-5, atol=1e-6)
    assert isinstance(bsr[0], BlockSparseLinear) and isinstance(bsr[2], BlockSparseLinear)
    assert isinstance(bsr[4], nn.Linear) and bsr[2].bias is None
    if block == (8, 4):  # stored as square 4 x 4 blocks, twice as many as the 8 x 4 ones kept
        assert bsr[0].block_size == (4, 4)
        assert bsr[0].kept_blocks == 2 * int(block_structure(masks["0.weight"], (8, 4)).sum())
    # the original model is untouched (a deep copy was converted)
    assert isinstance(model[0], nn.Linear) and bool((model[0].weight != 0).all())


def test_padding_for_sides_the_block_does_not_divide():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(390, 400))
    # blocks of 20 over 400 x 390: a 20 x 20 grid whose last column is 10 wide
    mask = block_mask_by_hand(400, 400, 20, [(0, 19), (3, 0), (19, 19), (7, 5)])[:, :390]
    bsr = to_block_sparse(model, {"0.weight": mask}, 20)
    layer = bsr[0]
    assert layer.padded_shape == (400, 400) and layer.kept_blocks == 4 and layer.n_blocks == 400
    x = torch.randn(9, 390)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), masked_reference(model, {"0.weight": mask})(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.dense_weight(), model[0].weight.detach() * mask)


def test_block_structure_and_kept_zero_blocks():
    mask = block_mask_by_hand(8, 12, 4, [(0, 0), (1, 2)])
    grid = block_structure(mask, 4)
    assert grid.tolist() == [[True, False, False], [False, False, True]]
    # a kept block whose weights happen to be zero stays a stored block: structure = the mask's
    lin = nn.Linear(12, 8)
    with torch.no_grad():
        lin.weight[:4, :4] = 0
    layer = BlockSparseLinear.from_linear(lin, mask, 4)
    assert layer.kept_blocks == 2
    assert layer.weight.layout == torch.sparse_bsr
    assert layer.crow_indices.tolist() == [0, 1, 2] and layer.col_indices.tolist() == [0, 2]


def test_non_block_mask_rejected():
    model = nn.Sequential(nn.Linear(32, 32))
    mask = block_mask_by_hand(32, 32, 8, [(0, 0), (2, 3)])
    mask[5, 30] = True  # one stray entry breaks the structure
    with pytest.raises(ValueError, match=r"not block-structured for block size 8x8: block \(0, 3\)"):
        to_block_sparse(model, {"0.weight": mask}, 8)
    with pytest.raises(ValueError, match="not block-structured for any square block"):
        to_block_sparse(model, {"0.weight": torch.rand(32, 32) > 0.5})


def test_infer_block_size():
    mask = block_mask_by_hand(64, 64, 16, [(0, 1), (1, 0), (3, 3), (2, 1)])
    assert infer_block_size(mask) == 16
    model = nn.Sequential(nn.Linear(64, 64))
    bsr = to_block_sparse(model, {"0.weight": mask})
    assert bsr[0].block_size == (16, 16)
    assert infer_block_size(torch.eye(6, dtype=torch.bool)) is None


def test_min_sparsity_and_all_kept_layers_stay_dense():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))
    masks = {"0.weight": torch.ones(32, 32, dtype=torch.bool),
             "1.weight": block_mask_by_hand(32, 32, 8, [(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (1, 0)])}
    out = to_block_sparse(model, masks, 8, min_sparsity=0.7)  # layer 1 is 62.5% sparse
    assert type(out[0]) is nn.Linear and type(out[1]) is nn.Linear
    out = to_block_sparse(model, masks, 8)
    assert type(out[0]) is nn.Linear and isinstance(out[1], BlockSparseLinear)


def test_deepcopy_state_dict_and_storage():
    model = nn.Sequential(nn.Linear(64, 64))
    mask = block_mask_by_hand(64, 64, 16, [(0, 0), (3, 2)])
    bsr = to_block_sparse(model, {"0.weight": mask}, 16)
    clone = copy.deepcopy(bsr)
    buf = io.BytesIO()
    torch.save(bsr.state_dict(), buf)
    buf.seek(0)
    other = to_block_sparse(nn.Sequential(nn.Linear(64, 64)), {"0.weight": mask}, 16)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), bsr(x))
        torch.testing.assert_close(other(x), bsr(x))
    # values 2 blocks of 16x16 fp32, crow 5 + col 2 int64, bias 64 fp32
    assert storage_bytes(bsr) == 2 * 16 * 16 * 4 + (5 + 2) * 8 + 64 * 4
    assert storage_bytes(model) == 64 * 64 * 4 + 64 * 4


def test_bad_inputs():
    model = nn.Sequential(nn.Linear(16, 16))
    mask = torch.ones(16, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(model, {"0.weight": mask}, 0)
    with pytest.raises(ValueError, match="cuda_fallback"):
        to_block_sparse(model, {"0.weight": mask}, 4, cuda_fallback="cpu")
    with pytest.raises(ValueError, match="masks"):
        to_block_sparse(model, {"9.weight": mask}, 4)
    with pytest.raises(ValueError, match="x: last dimension"):
        to_block_sparse(model, {"0.weight": block_mask_by_hand(16, 16, 4, [(0, 0)])}, 4)(torch.randn(2, 15))
    with pytest.raises(ValueError, match="sparsity"):
        random_block_mask(16, 16, 4, 1.0)
    from torch.nn.utils import parametrize

    class Scale(nn.Module):
        def forward(self, w):
            return 2 * w

    param_model = nn.Sequential(nn.Linear(16, 16))
    parametrize.register_parametrization(param_model[0], "weight", Scale())
    with pytest.raises(ValueError, match="parametrised"):
        to_block_sparse(param_model, {"0.weight": mask}, 4)


def test_triton_eligibility_rule():
    assert triton_bsr_eligible(16) and triton_bsr_eligible(64, torch.bfloat16) and triton_bsr_eligible((16, 32))
    assert not triton_bsr_eligible(8) and not triton_bsr_eligible(20) and not triton_bsr_eligible(24)
    assert not triton_bsr_eligible(32, torch.float64)


def test_random_block_mask_keeps_exact_block_count():
    m = random_block_mask(100, 64, 10, 0.9, generator=torch.Generator().manual_seed(0))
    grid = block_structure(m, 10)  # 10 x 7 blocks, last column 4 wide
    assert grid.shape == (10, 7) and int(grid.sum()) == 7  # ceil(0.1 * 70)


def test_break_even_sparsity():
    assert abs(break_even_sparsity([0.5, 0.8, 0.9], [0.5, 1.0, 2.0]) - 0.8) < 1e-12
    assert break_even_sparsity([0.5, 0.9], [0.5, 0.9]) is None
    assert break_even_sparsity([0.5, 0.9], [1.5, 2.0]) == 0.5
    # log-linear interpolation between 0.5 (x0.5) and 0.9 (x2): the midpoint in log is 0.7
    assert abs(break_even_sparsity([0.9, 0.5], [2.0, 0.5]) - 0.7) < 1e-12


def test_timing_returns_interleaved_repetitions():
    r = time_dense_vs_bsr(64, 64, 8, 16, 0.75, reps=3, min_block_s=0.001, threads=1)
    assert len(r.dense_s) == 3 and len(r.bsr_s) == 3 and r.speedup > 0
    assert r.block_size == (16, 16) and abs(r.sparsity - 0.75) < 1e-12
    d = r.as_dict()
    assert d["threads"] == 1 and d["dtype"] == "float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs_and_ineligible_blocks():
    model = nn.Sequential(nn.Linear(64, 64)).cuda()
    mask = block_mask_by_hand(64, 64, 16, [(0, 0), (3, 2), (1, 1)]).cuda()
    bsr = to_block_sparse(model, {"0.weight": mask}, 16)
    x = torch.randn(5, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(bsr(x), masked_reference(model, {"0.weight": mask})(x), rtol=1e-4, atol=1e-5)
    mask8 = block_mask_by_hand(64, 64, 8, [(0, 0)]).cuda()
    with pytest.raises(ValueError, match="CUDA"):
        to_block_sparse(model, {"0.weight": mask8}, 8)
    with pytest.warns(UserWarning, match="stays dense"):
        kept = to_block_sparse(model, {"0.weight": mask8}, 8, cuda_fallback="dense")
    assert type(kept[0]) is nn.Linear
