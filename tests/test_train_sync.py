"""The hot path does not synchronise the host between logging intervals; a non-finite loss is still
reported with the steps between which it appeared."""
import importlib

import pytest
import torch
from torch import nn

from pruninglab.masks import MaskHook, apply_masks
from pruninglab.pruners.magnitude import global_magnitude_masks
from pruninglab.runtime import seed_everything
from pruninglab.train import l1_penalty, make_loader, train

# The module, not the function `pruninglab.train` that the package re-exports under the same name.
train_mod = importlib.import_module("pruninglab.train")

# Every way Python code reads a tensor's value on the host.
READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def problem(dev="cpu"):
    seed_everything(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)
    masks = {n: m.to(dev) for n, m in global_magnitude_masks(model, 0.5).items()}
    apply_masks(model, masks)
    return model, opt, sched, make_loader(torch.utils.data.TensorDataset(x, y), 16, seed=1), masks


@pytest.fixture
def host_reads(monkeypatch):
    """Counts host reads of tensor values while ``counter["on"]``."""
    counter = {"on": False, "n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if counter["on"]:
                counter["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counter


def test_no_host_sync_between_logging_intervals(host_reads, monkeypatch, tmp_path):
    seen = []

    def counting(method, label, on=True):
        def wrapper(self, *args, **kwargs):
            before_on, before_n = host_reads["on"], host_reads["n"]
            host_reads["on"] = on
            try:
                return method(self, *args, **kwargs)
            finally:
                host_reads["on"] = before_on
                if on:
                    seen.append((label, self.state.step, host_reads["n"] - before_n))
        return wrapper

    monkeypatch.setattr(train_mod._Loop, "train_step", counting(train_mod._Loop.train_step, "step"))
    monkeypatch.setattr(train_mod._Loop, "after_step", counting(train_mod._Loop.after_step, "after"))
    # The data loader's sampler draws its epoch order with .tolist() on the host: that is input, not the step.
    next_batch = train_mod.BatchStream.next

    def fetch(self):
        was, host_reads["on"] = host_reads["on"], False
        try:
            return next_batch(self)
        finally:
            host_reads["on"] = was

    monkeypatch.setattr(train_mod.BatchStream, "next", fetch)
    model, opt, sched, loader, masks = problem()
    train(model, nn.functional.cross_entropy, loader, opt, steps=30, scheduler=sched, accumulate=2,
          hooks=[MaskHook(masks), l1_penalty(1e-4)], grad_clip=1.0, log_every=10, out_dir=tmp_path)
    steps = [(s, n) for label, s, n in seen if label == "step"]
    after = {s: n for label, s, n in seen if label == "after"}
    assert len(steps) == 30 and all(n == 0 for _, n in steps), steps
    assert {s for s, n in after.items() if n} == {10, 20, 30}  # the loss is read at the logging steps only
    assert all(after[s] >= 1 for s in (10, 20, 30))  # and the counter does see those reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_cuda_sync_in_the_step(monkeypatch):
    model, opt, sched, loader, masks = problem("cuda")
    step = train_mod._Loop.train_step

    def strict(self):
        # Input batches come from the CPU loader; the step itself must not wait for the GPU.
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(train_mod._Loop, "train_step", strict)
    res = train(model, nn.functional.cross_entropy, loader, opt, steps=20, scheduler=sched,
                hooks=[MaskHook(masks), l1_penalty(1e-4)], grad_clip=1.0, log_every=10, amp=False)
    assert res.step == 20


def test_non_finite_loss_names_the_steps():
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("nan") if calls["n"] == 23 else loss

    model, opt, sched, loader, masks = problem()
    with pytest.raises(FloatingPointError, match="non-finite .* between steps 21 and 30"):
        train(model, loss_fn, loader, opt, steps=40, log_every=10)
    calls["n"] = 0
    model, opt, sched, loader, masks = problem()
    with pytest.raises(FloatingPointError, match=r"non-finite \(nan\) at step 23 "):
        train(model, loss_fn, loader, opt, steps=40, log_every=1)


def test_checkpoint_is_not_written_over_with_non_finite_weights(tmp_path):
    calls = {"n": 0}

    def loss_fn(out, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, y)
        return loss * float("inf") if calls["n"] == 13 else loss

    model, opt, sched, loader, masks = problem()
    with pytest.raises(FloatingPointError, match="between steps 11 and 15"):
        train(model, loss_fn, loader, opt, steps=40, log_every=50, checkpoint_every=5, out_dir=tmp_path)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 10 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_compile_option_trains_the_same_weights(tmp_path):
    """``compile`` wraps only the forward: hooks and checkpoints see the bare module (the eager backend
    keeps this test fast; inductor is what ``compile=True`` uses on a GPU)."""
    finals = []
    for option, out in ((False, tmp_path / "eager"), ({"backend": "eager"}, tmp_path / "compiled")):
        model, opt, sched, loader, masks = problem()
        train(model, nn.functional.cross_entropy, loader, opt, steps=8, scheduler=sched, hooks=[MaskHook(masks)],
              compile=option, out_dir=out)
        finals.append(model.state_dict())
        assert set(torch.load(out / "checkpoint.pt", weights_only=True)["model"]) == set(model.state_dict())
    for k in finals[0]:
        assert torch.allclose(finals[0][k], finals[1][k], atol=1e-6), k
