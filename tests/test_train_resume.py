"""Run-folder semantics of the loop: no silent fresh start, no overwrite, finished runs left alone, config
differences named, paths compared resolved, atomic checkpoints; and the metrics.csv columns."""
import csv
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from pruninglab.checkpoint import (
    config_differences,
    remove_orphan_temporaries,
    save_checkpoint,
)
from pruninglab.masks import MaskHook, apply_masks
from pruninglab.pruners.magnitude import global_magnitude_masks
from pruninglab.runtime import seed_everything
from pruninglab.train import CheckpointError, RunExistsError, make_loader, train


def run(out, *, steps=12, resume=False, config=None, stop_after=None, evaluate=True):
    seed_everything(0)
    x = torch.randn(128, 6)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)
    masks = global_magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    res = train(model, nn.functional.cross_entropy, make_loader(torch.utils.data.TensorDataset(x, y), 16),
                opt, steps=steps, scheduler=sched, hooks=[MaskHook(masks)], log_every=3, checkpoint_every=5,
                evaluate=(lambda m: {"w0": float(m[0].weight.sum())}) if evaluate else None,
                eval_every=3 if evaluate else None, out_dir=out, resume=resume,
                config=config if config is not None else {"lr": 0.2}, stop_after=stop_after)
    return model, res


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_resume_without_checkpoint_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"no checkpoint in {tmp_path}"):
        run(tmp_path, resume=True)
    assert list(tmp_path.iterdir()) == []


def test_fresh_start_refuses_a_folder_with_a_run(tmp_path):
    run(tmp_path, stop_after=7)  # checkpoint at step 5, rows at 3 and 6
    before = snapshot(tmp_path)
    with pytest.raises(RunExistsError, match=f"{tmp_path} already holds a run .*resume=True"):
        run(tmp_path)
    assert snapshot(tmp_path) == before
    # a log without a checkpoint (killed before the first one) is a run too
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(RunExistsError, match="metrics.csv with 2 rows"):
        run(tmp_path)
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        run(tmp_path, resume=True)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    model, res = run(tmp_path)
    before = snapshot(tmp_path)
    again, res2 = run(tmp_path, resume=True)
    assert snapshot(tmp_path) == before  # no row appended, no file rewritten
    assert res2.step == 12 and res2.steps_run == 0 and res2.resumed_from == 12
    assert res2.metrics == res.metrics and res.metrics["w0"] == pytest.approx(float(model[0].weight.detach().sum()))
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)  # the caller's model holds the finished weights


def test_resume_refuses_another_config_and_names_the_field(tmp_path):
    run(tmp_path, stop_after=6, config={"lr": 0.2, "width": 8, "data": {"root": "/a"}})
    with pytest.raises(CheckpointError, match=r"differs in: lr \(stored 0.2, now 0.3\)"):
        run(tmp_path, resume=True, config={"lr": 0.3, "width": 8, "data": {"root": "/a"}})
    with pytest.raises(CheckpointError, match=r"data.root \(stored '/a', now '/b'\)"):
        run(tmp_path, resume=True, config={"lr": 0.2, "width": 8, "data": {"root": "/b"}})


def test_data_paths_compare_resolved(tmp_path, monkeypatch):
    data = tmp_path / "data" / "train.txt"
    data.parent.mkdir()
    data.write_text("x")
    monkeypatch.chdir(tmp_path)
    run(tmp_path / "run", stop_after=6, config={"data": "data/train.txt", "lr": 0.2})
    monkeypatch.chdir(tmp_path / "data")
    _, res = run(tmp_path / "run", resume=True, config={"data": str(data), "lr": 0.2})  # same file, absolute
    assert res.resumed_from == 5 and res.step == 12
    assert config_differences({"data_dir": "faces"}, {"data_dir": "faces"}) == []  # a name, not a path
    assert config_differences({"out": Path("a")}, {"out": Path("a").resolve()}) == []


def test_checkpoint_writes_are_atomic_and_leave_no_temporary(tmp_path):
    path = save_checkpoint({"step": 1, "model": {}}, tmp_path / "checkpoint.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "model": {}, "bad": lambda: 0}, path)  # cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    orphan = tmp_path / ".checkpoint.pt.abc123.tmp"  # what a SIGKILL mid-write leaves
    orphan.write_bytes(b"partial")
    assert remove_orphan_temporaries(tmp_path) == [orphan] and not orphan.exists()


def test_metrics_csv_has_lr_throughput_data_wait_and_memory(tmp_path):
    _, res = run(tmp_path, evaluate=False)
    rows = list(csv.DictReader(open(res.log_path)))
    assert list(rows[0])[:6] == ["step", "train_loss", "lr", "samples_per_s", "data_wait_frac", "peak_mem_gib"]
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    # StepLR(4, 0.5): the lr of the row's last step (steps 1-4 run at 0.2, 5-8 at 0.1, 9-12 at 0.05)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.2, 0.1, 0.05, 0.05])
    for r in rows:
        assert float(r["samples_per_s"]) > 0 and 0 <= float(r["data_wait_frac"]) <= 1
        assert 0.01 < float(r["peak_mem_gib"]) < 1000  # the process's peak RSS on a CPU
    assert os.path.getsize(res.log_path) > 0
