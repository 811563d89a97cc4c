import csv

import pytest
import torch
from torch import nn

from pruninglab.masks import FixedMasks
from pruninglab.pruners.magnitude import global_magnitude_masks
from pruninglab.runtime import seed_everything
from pruninglab.train import CheckpointError, l1_penalty, make_loader, train


def setup(seed=0):
    seed_everything(seed)
    x = torch.randn(256, 8)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)
    loader = make_loader(ds, 32, seed=seed)
    masks = global_magnitude_masks(model, 0.5)
    return model, opt, sched, loader, [FixedMasks(masks), l1_penalty(1e-4)], masks


def evaluate_fn(model):
    return {"w0": float(model[0].weight.sum())}


def run(tmp, stop_after=None, resume=False, config=None):
    model, opt, sched, loader, hooks, masks = setup()
    res = train(model, nn.functional.cross_entropy, loader, opt, steps=30, scheduler=sched, hooks=hooks,
                evaluate=evaluate_fn, eval_every=5, out_dir=tmp, checkpoint_every=4, resume=resume,
                stop_after=stop_after, config=config or {"lr": 0.1})
    return model, res, masks


def test_resume_is_identical(tmp_path):
    ref_model, ref, masks = run(tmp_path / "ref")
    run(tmp_path / "cut", stop_after=13)  # "killed" after 13 steps; last checkpoint at 12
    model, res, _ = run(tmp_path / "cut", resume=True)
    assert res.resumed_from == 12
    for (n, a), (_, b) in zip(ref_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    assert (model[0].weight[~masks["0.weight"]] == 0).all()
    rows_ref = list(csv.DictReader(open(ref.log_path)))
    rows = list(csv.DictReader(open(res.log_path)))
    assert [r["step"] for r in rows] == [r["step"] for r in rows_ref]
    assert [r["w0"] for r in rows] == [r["w0"] for r in rows_ref]


def test_resume_refuses_other_config_and_truncated(tmp_path):
    run(tmp_path, stop_after=8)
    with pytest.raises(CheckpointError, match="different config"):
        run(tmp_path, resume=True, config={"lr": 0.2})
    ck = tmp_path / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        run(tmp_path, resume=True)
    assert ck.read_bytes() == data[: len(data) // 2]  # the refused checkpoint is left as it was


def test_bad_arguments():
    model, opt, sched, loader, hooks, _ = setup()
    with pytest.raises(ValueError, match="steps"):
        train(model, nn.functional.cross_entropy, loader, opt, steps=-1)
    with pytest.raises(ValueError, match="resume"):
        train(model, nn.functional.cross_entropy, loader, opt, steps=1, resume=True)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(torch.utils.data.TensorDataset(torch.zeros(4, 1)), 8)
