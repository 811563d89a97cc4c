"""SA++, ACDC, block magnitude and block PowerProp pruners (book/sapp.md)."""
import copy
import math

import pytest
import torch
from torch import nn

from pruninglab.pruners.acdc import ACDCPruner, BlockMagnitudePruner, PowerPropPruner
from pruninglab.pruners.blocks import block_layout, is_block_mask
from pruninglab.pruners.schedule import Phase, kept_blocks, sparsity_ramp
from pruninglab.pruners.sequential_attention import SequentialAttentionPruner
from pruninglab.runtime import seed_everything
from pruninglab.train import make_loader, train


pytestmark = pytest.mark.usefixtures("one_thread")


# A short schedule with every kind of phase and transition (dense -> sparsify -> sparse -> dense -> ...).
PHASES = (
    Phase("dense", 0, 6), Phase("sparsify", 6, 14), Phase("sparse", 14, 20),
    Phase("dense", 20, 26), Phase("sparsify", 26, 34), Phase("sparse", 34, 40),
)
ACDC_PHASES = (
    Phase("dense", 0, 8), Phase("sparse", 8, 16), Phase("dense", 16, 24), Phase("sparse", 24, 40),
)


def model_and_data(seed=0):
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(12, 18), nn.ReLU(), nn.Linear(18, 20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.randn(96, 12)
    y = (x[:, :3].argmax(1)).long()
    return model, torch.utils.data.TensorDataset(x, y)


def reference_forward_weight(w, logits, mask, b):
    """Independent W * A * M for a Linear weight: softmax by hand, blocks by index arithmetic."""
    n = logits.numel()
    e = torch.exp(logits - logits.max())
    a = n * e / e.sum()
    out = torch.empty_like(w)
    for r in range(w.shape[0]):
        for c in range(w.shape[1]):
            out[r, c] = w[r, c] * a[r // b, c // b] * float(mask[r // b, c // b])
    return out


# --------------------------------------------------------------------------- SA++ forward


def test_forward_is_weight_times_attention_times_mask():
    model, _ = model_and_data()
    w0 = model[2].weight.detach().clone()  # 20 x 18, B = 4: grid 5 x 5 with partial edge blocks
    pr = SequentialAttentionPruner(model, 0.6, 4, PHASES, min_blocks=4, layers=["2"], init_std=0.5)
    p = model[2].parametrizations.weight[0]
    p.mask[1, 2] = False
    p.mask[4, 4] = False
    ref = reference_forward_weight(w0, p.logits.detach(), p.mask, 4)
    assert torch.allclose(model[2].weight, ref, atol=1e-6)
    assert pr.attention()["2.weight"].mean().item() == pytest.approx(1.0, abs=1e-6)  # mean-1 scaling


def test_conv_forward_and_initial_function_preserved():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(5, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    x = torch.randn(2, 5, 6, 6)
    before = conv(x).detach()
    pr = SequentialAttentionPruner(conv, 0.5, 4, PHASES, min_blocks=4)
    assert list(pr.layouts) == ["0.weight", "2.weight"]
    assert pr.layouts["0.weight"].grid == (12, 2)  # (3*3*5 = 45) x 8
    # logits start near 0, so A ~ 1 and the network computes (almost) what it did before
    assert torch.allclose(conv(x), before, atol=1e-3)
    names = [n for n, _ in conv.named_parameters()]
    assert "0.parametrizations.weight.0.logits" in names
    assert "0.parametrizations.weight.0.mask" in conv.state_dict()


def test_masked_blocks_get_no_weight_gradient():
    model, ds = model_and_data()
    pr = SequentialAttentionPruner(model, 0.5, 4, [Phase("sparse", 0, 10)], min_blocks=4, layers=["2"])
    pr.on_step_start(0, model)
    x, y = ds.tensors
    nn.functional.cross_entropy(model(x), y).backward()
    g = model[2].parametrizations.weight.original.grad
    m = pr.masks["2.weight"]
    assert (g[~m] == 0).all() and (g[m] != 0).any()
    assert model[2].parametrizations.weight[0].logits.grad is not None


# --------------------------------------------------------------------------- SA++ schedule


def test_schedule_ramp_nesting_and_exact_final_sparsity():
    model, _ = model_and_data()
    s = 0.7
    pr = SequentialAttentionPruner(model, s, 4, PHASES, min_blocks=4, layers=["0", "2"], init_std=1.0)
    prev = None
    boundaries = []
    for step in range(40):
        if pr.on_step_start(step, model):
            boundaries.append(step)
        phase = PHASES[[i for i, p in enumerate(PHASES) if p.start <= step < p.end][0]]
        bm = pr.block_masks
        for name, lay in pr.layouts.items():
            kept = int(bm[name].sum())
            if phase.kind == "dense":
                assert kept == lay.num_blocks
            elif phase.kind == "sparsify":
                s_t = sparsity_ramp(phase.progress(step), s)
                assert kept == kept_blocks(lay.num_blocks, s_t)
                # no training here, so A is fixed: the removed blocks are the lowest-attention ones
                a = pr.attention()[name]
                if (~bm[name]).any():
                    assert a[bm[name]].min() >= a[~bm[name]].max()
            else:
                assert kept == kept_blocks(lay.num_blocks, s)
            if prev is not None and phase.kind != "dense" and step != phase.start:
                assert not (bm[name] & ~prev[name]).any()  # nested: no block comes back
        prev = {n: m.clone() for n, m in bm.items()}
    assert boundaries == [6, 14, 20, 26, 34]
    for name, m in pr.masks.items():
        lay = pr.layouts[name]
        assert is_block_mask(m, lay)
        assert int((lay.block_norms(m.float()) > 0).sum()) == lay.num_blocks - math.floor(s * lay.num_blocks + 1e-9)


def test_sparsify_removes_lowest_attention_blocks():
    model, _ = model_and_data()
    pr = SequentialAttentionPruner(model, 0.5, 4, [Phase("sparsify", 0, 1), Phase("sparse", 1, 2)],
                                   min_blocks=4, layers=["2"])
    p = model[2].parametrizations.weight[0]
    with torch.no_grad():
        p.logits.copy_(torch.arange(25, dtype=torch.float32).reshape(5, 5).flip(1))  # known order
    pr.on_step_start(0, model)
    kept = p.mask.flatten()
    order = torch.argsort(p.logits.detach().flatten(), descending=True)
    assert kept[order[:13]].all() and not kept[order[13:]].any()  # N - floor(0.5 * 25) = 13 highest


def test_one_shot_sparse_after_dense_uses_attention():
    model, _ = model_and_data()
    pr = SequentialAttentionPruner(model, 0.8, 4, [Phase("dense", 0, 2), Phase("sparse", 2, 4)],
                                   min_blocks=4, layers=["2"], init_std=1.0)
    pr.on_step_start(0, model)
    pr.on_step_start(1, model)
    expected = pr.topk_attention_masks()["2.weight"]
    assert pr.on_step_start(2, model) is True
    assert torch.equal(pr.block_masks["2.weight"], expected)


def test_finalize_folds_and_zeroes():
    model, ds = model_and_data()
    pr = SequentialAttentionPruner(model, 0.75, 4, PHASES, min_blocks=6, init_std=0.3)
    for step in range(40):
        pr.on_step_start(step, model)
    x = ds.tensors[0]
    before = model(x).detach()
    masks = pr.finalize()
    assert torch.allclose(model(x), before, atol=1e-6)
    assert [n for n, _ in model.named_parameters() if "parametrizations" in n] == []
    for name, m in masks.items():
        w = model.get_submodule(name[:-7]).weight
        assert (w[~m] == 0).all()
    assert set(masks) == {"0.weight", "2.weight"}  # the 3 x 20 output layer has 5 < min_blocks blocks
    with pytest.raises(RuntimeError, match="finalized"):
        pr.on_step_start(40, model)


def test_bad_arguments():
    model, _ = model_and_data()
    with pytest.raises(ValueError, match="phases"):
        SequentialAttentionPruner(model, 0.5, 4, (), min_blocks=4)
    with pytest.raises(ValueError, match="ramp_c"):
        SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, ramp_c=-1)
    with pytest.raises(ValueError, match="sparsity"):
        SequentialAttentionPruner(model, 1.2, 4, PHASES, min_blocks=4)
    SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, layers=["2"])
    with pytest.raises(ValueError, match="already parametrised"):
        SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, layers=["2"])
    with pytest.raises(ValueError, match="only dense / sparse"):
        ACDCPruner(model, 0.5, 4, PHASES, min_blocks=4, layers=["0"])
    with pytest.raises(ValueError, match="prunes once"):
        BlockMagnitudePruner(model, 0.5, 4, ACDC_PHASES, min_blocks=4, layers=["0"])


# --------------------------------------------------------------------------- ACDC, magnitude, PowerProp


def test_acdc_support_is_block_norm_topk_and_zeroed():
    model, ds = model_and_data()
    pr = ACDCPruner(model, 0.6, 4, ACDC_PHASES, min_blocks=4, layers=["2"])
    lay = block_layout(model[2].weight, 4)
    for step in range(8):
        pr.on_step_start(step, model)
    norms = lay.block_norms(model[2].weight)
    assert pr.on_step_start(8, model) is True
    bm = pr.block_masks["2.weight"]
    assert int(bm.sum()) == kept_blocks(25, 0.6)
    assert norms[bm].min() >= norms[~bm].max()
    w = model[2].weight
    assert (w[~pr.masks["2.weight"]] == 0).all()
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step would do this; on_step_end re-applies the mask
    pr.on_step_end(8, model)
    assert (w[~pr.masks["2.weight"]] == 0).all()
    for step in range(9, 17):
        pr.on_step_start(step, model)
    assert pr.masks["2.weight"].all()  # dense again


def test_acdc_keep_values_restores_pruned_weights():
    model, _ = model_and_data()
    w0 = model[2].weight.detach().clone()
    pr = ACDCPruner(model, 0.6, 4, ACDC_PHASES, min_blocks=4, layers=["2"], keep_values=True)
    for step in range(17):
        pr.on_step_start(step, model)
        pr.on_step_end(step, model)
    assert torch.equal(model[2].weight, w0)  # nothing trained, so restoring gives the original back


def test_powerprop_reparametrisation():
    model, ds = model_and_data()
    x = ds.tensors[0]
    before = model(x).detach()
    pr = PowerPropPruner(model, 0.5, 4, [Phase("dense", 0, 3), Phase("sparse", 3, 6)], min_blocks=4, layers=["2"])
    assert torch.allclose(model(x), before, atol=1e-5)  # right_inverse keeps the function
    beta = model[2].parametrizations.weight.original
    lay = pr.layouts["2.weight"]
    assert torch.allclose(model[2].weight, beta * lay.expand(lay.block_norms(beta)), atol=1e-6)
    for step in range(4):
        pr.on_step_start(step, model)
    bn = lay.block_norms(beta)
    bm = pr.block_masks["2.weight"]
    assert int(bm.sum()) == kept_blocks(25, 0.5) and bn[bm].min() >= bn[~bm].max()
    nn.functional.cross_entropy(model(x), ds.tensors[1]).backward()
    assert torch.isfinite(beta.grad).all()
    masks = pr.finalize()
    assert (model[2].weight[~masks["2.weight"]] == 0).all()


# --------------------------------------------------------------------------- training loop and checkpoints


def run(tmp, kind, stop_after=None, resume=False, checkpoint_every=5):
    model, ds = model_and_data()
    if kind == "sapp":
        pr = SequentialAttentionPruner(model, 0.7, 4, PHASES, min_blocks=4, init_std=0.1)
    elif kind == "acdc":
        pr = ACDCPruner(model, 0.7, 4, ACDC_PHASES, min_blocks=4)
    elif kind == "acdc-keep":
        pr = ACDCPruner(model, 0.7, 4, ACDC_PHASES, min_blocks=4, keep_values=True)
    else:
        pr = PowerPropPruner(model, 0.7, 4, ACDC_PHASES[:2] + (Phase("sparse", 16, 40),), min_blocks=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    train(model, nn.functional.cross_entropy, make_loader(ds, 16), opt, steps=40, hooks=[pr],
          out_dir=tmp, checkpoint_every=checkpoint_every, stop_after=stop_after, resume=resume,
          config={"kind": kind})
    return model, pr


@pytest.mark.parametrize("kind", ["sapp", "acdc", "acdc-keep", "powerprop"])
@pytest.mark.parametrize("stop_after,every", [(17, 5), (16, 1000)])
def test_resume_is_exact(tmp_path, kind, stop_after, every):
    # (17, 5): last checkpoint at step 15 (mid-phase); (16, 1000): at the phase boundary 14/16,
    # where the loop calls on_step_start again for the step it resumes at.
    ref_model, ref_pr = run(tmp_path / "ref", kind, checkpoint_every=every)
    run(tmp_path / "cut", kind, stop_after=stop_after, checkpoint_every=every)
    model, pr = run(tmp_path / "cut", kind, resume=True, checkpoint_every=every)
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    for n in ref_pr.masks:
        assert torch.equal(ref_pr.masks[n], pr.masks[n])
    state = pr.state_dict()
    fresh_model, _ = model_and_data()
    fresh = type(pr)(fresh_model, 0.7, 4, pr.phases, min_blocks=4)
    fresh.load_state_dict(state)
    assert fresh._phase == pr._phase and all(torch.equal(fresh.masks[n], pr.masks[n]) for n in pr.masks)


def test_boundaries_reset_the_optimizer_and_sparsity_is_reached(tmp_path):
    model, pr = run(tmp_path, "sapp")
    for name, m in pr.masks.items():
        lay = pr.layouts[name]
        assert int((lay.block_norms(m.float()) > 0).sum()) == kept_blocks(lay.num_blocks, 0.7)
    clone = copy.deepcopy(model)  # a parametrised, pruned model survives deepcopy
    x = torch.randn(4, 12)
    assert torch.equal(clone(x), model(x))
    pr.finalize()  # finalizing the original must not break its copy (torch's removal would)
    assert torch.allclose(clone(x), model(x), atol=1e-6)
    assert type(model[0]) is nn.Linear and type(clone[0]).__name__ == "ParametrizedLinear"
    from pruninglab.pruners.blocks import fold_parametrization

    fold_parametrization(clone[0])
    assert type(clone[0]) is nn.Linear and torch.allclose(clone(x), model(x), atol=1e-6)


def test_state_dict_rejects_other_pruner_state():
    model, _ = model_and_data()
    pr = ACDCPruner(model, 0.7, 4, ACDC_PHASES, min_blocks=4)
    state = pr.state_dict()
    model2, _ = model_and_data()
    other = ACDCPruner(model2, 0.5, 4, ACDC_PHASES, min_blocks=4)
    with pytest.raises(ValueError, match="sparsity"):
        other.load_state_dict(state)
    model3, _ = model_and_data()
    other = ACDCPruner(model3, 0.7, 4, ACDC_PHASES[:1] + (Phase("sparse", 8, 40),), min_blocks=4)
    with pytest.raises(ValueError, match="phase schedule"):
        other.load_state_dict(state)


def test_schedules_cover_every_run_length_exactly():
    # Short runs used to get phases ending after total_steps (rounding pushed the last boundary out).
    from pruninglab.pruners.schedule import criteo_phases, imagenet_phases

    for builder in (imagenet_phases, criteo_phases):
        for method in ("sapp", "acdc", "magnitude"):
            for total in range(1, 120):
                try:
                    phases = builder(total, method)
                except ValueError:
                    assert total < 21  # only runs shorter than the number of phases (at most 21) are refused
                    continue
                assert phases[0].start == 0 and phases[-1].end == total
                assert all(a.end == b.start for a, b in zip(phases, phases[1:]))
                assert all(p.end > p.start for p in phases)


# --------------------------------------------------------------------------- SA++ logit options (App. C.1)


def _sapp_run(seed=0, steps=12, lr=0.5, **options):
    model, ds = model_and_data(seed)
    pr = SequentialAttentionPruner(model, 0.75, 4, PHASES, min_blocks=4, layers=["0", "2"], init_std=1.0,
                                   **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train(model, nn.functional.cross_entropy, make_loader(ds, 16, seed=seed), optimizer, steps=steps,
          hooks=[pr])
    return model, pr


def test_logit_clip_bounds_logits_and_attention():
    _, free = _sapp_run(logit_clip=None)
    c_free = max(float(p.detach().abs().max()) for p in free.attention_parameters())
    assert c_free > 0.9  # init_std=1: unclipped logits reach well past the bound below
    _, pr = _sapp_run(logit_clip=0.3)
    assert pr.logit_clip == 0.3
    assert all(float(p.detach().abs().max()) <= 0.3 + 1e-7 for p in pr.attention_parameters())
    _, pr = _sapp_run(logit_clip="density")
    c = 0.5 * math.log(1 / 0.25)
    assert pr.logit_clip == pytest.approx(c)
    assert all(float(p.detach().abs().max()) <= c + 1e-7 for p in pr.attention_parameters())
    # the bound on the logits keeps A in [density, 1 / density] = [0.25, 4]
    for a in pr.attention().values():
        assert float(a.min()) >= 0.25 - 1e-6 and float(a.max()) <= 4 + 1e-6


def test_logit_weight_decay_is_an_l2_penalty_on_the_logits():
    model, _ = model_and_data()
    pr = SequentialAttentionPruner(model, 0.75, 4, PHASES, min_blocks=4, layers=["2"], init_std=1.0,
                                   logit_weight_decay=0.1)
    logits = pr.attention_parameters()[0]
    assert float(pr.loss_penalty(model).detach()) == pytest.approx(0.05 * float(logits.detach().square().sum()))
    off = SequentialAttentionPruner(model_and_data()[0], 0.75, 4, PHASES, min_blocks=4, layers=["2"])
    assert off.loss_penalty() is None
    # One plain SGD step: the decayed logits differ from the undecayed ones by -lr * wd * L.
    lr, wd = 0.5, 0.2
    m0, p0 = _sapp_run(steps=1, lr=lr)
    m1, p1 = _sapp_run(steps=1, lr=lr, logit_weight_decay=wd)
    _, start = _sapp_run(steps=0, lr=lr)
    for l0, l1, ls in zip(p0.attention_parameters(), p1.attention_parameters(), start.attention_parameters()):
        assert torch.allclose(l1 - l0, -lr * wd * ls.detach(), atol=1e-6)
    # the network weights are not decayed by it
    for (n, a), b in zip(m0.named_parameters(), m1.parameters()):
        if "logits" not in n:
            assert torch.allclose(a, b, atol=1e-6), n


def test_logit_option_bad_input():
    model, _ = model_and_data()
    with pytest.raises(ValueError, match="logit_clip"):
        SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, logit_clip=0)
    with pytest.raises(ValueError, match="logit_clip"):
        SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, logit_clip="sparsity")
    with pytest.raises(ValueError, match="logit_weight_decay"):
        SequentialAttentionPruner(model, 0.5, 4, PHASES, min_blocks=4, logit_weight_decay=-1e-4)
