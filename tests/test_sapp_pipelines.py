"""The full SA++ pipelines at tiny size: kill-and-resume identity, torchrun data parallelism, the CLI."""
import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pruninglab import cli
from pruninglab.data.criteo import write_synthetic_criteo
from pruninglab.data.imagenet import Uint8ImageFolder, make_imagefolder
from pruninglab.experiments import sapp_criteo, sapp_imagenet
from pruninglab.runlog import TIMING_COLUMNS
from pruninglab.train import make_loader, train

TIMING_KEYS = {"train_rows_per_s", "train_images_per_s"}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNINGLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PRUNINGLAB_DEVICE", "cpu")


@pytest.fixture(scope="module")
def criteo_file(tmp_path_factory):
    return write_synthetic_criteo(tmp_path_factory.mktemp("criteo") / "train.txt", 3000, seed=5)


def criteo_config(**kw):
    base = dict(steps=30, batch_size=64, checkpoint_every=7, eval_batch_size=512)
    base.update(kw)
    return dataclasses.replace(sapp_criteo.CriteoConfig.small(), **base)


def log_rows(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(fh)]


def assert_same_run(a, b):
    assert a["completed"] and b["completed"]
    ma = {k: v for k, v in a["metrics"].items() if k not in TIMING_KEYS}
    mb = {k: v for k, v in b["metrics"].items() if k not in TIMING_KEYS}
    assert ma == mb
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k
    assert log_rows(a["run_dir"]) == log_rows(b["run_dir"])


@pytest.mark.parametrize("method", ["sapp", "acdc"])
def test_criteo_kill_and_resume_is_identical(criteo_file, tmp_path, method):
    cfg = criteo_config(method=method)
    ref = sapp_criteo.run(cfg, str(criteo_file), out=str(tmp_path / "ref"), seed=1)
    cut = sapp_criteo.run(cfg, str(criteo_file), out=str(tmp_path / "cut"), seed=1, stop_after=17)
    assert not cut["completed"] and cut["result_path"] is None
    resumed = sapp_criteo.run(cfg, str(criteo_file), out=str(tmp_path / "cut"), seed=1, resume=True)
    assert_same_run(ref, resumed)
    m = ref["metrics"]
    assert m["pruned_layers"] == 1 and abs(m["layer_sparsity"]["dense.0.weight"] - 0.9) < 1e-9
    w = ref["model"].dense[0].weight
    assert int((w == 0).sum()) == int((~ref["masks"]["dense.0.weight"]).sum())  # pruned blocks are exact zeros
    stored = json.loads(ref["result_path"].read_text())
    assert stored["metrics"]["val_logloss"] == pytest.approx(m["val_logloss"])
    assert stored["config"]["config"]["method"] == method and stored["scale"] == "small"


def test_criteo_prepared_folder_resumes_identically_and_equals_the_text_run(criteo_file, tmp_path):
    from pruninglab.data.criteo_prepared import CriteoArrays, prepare_criteo
    from pruninglab.optim import DenseSparseAdam

    cfg = criteo_config(method="sapp")
    folder = prepare_criteo(criteo_file, tmp_path / "prepared", num_buckets=cfg.num_buckets)
    task = sapp_criteo.setup(cfg, folder, torch.device("cpu"), 1)
    assert isinstance(task.train_data, CriteoArrays) and task.net.embedding.sparse
    opt, _ = task.make_optimizer(task.net, 30, 10)
    assert isinstance(opt, DenseSparseAdam)
    ref = sapp_criteo.run(cfg, str(folder), out=str(tmp_path / "ref"), seed=1)
    cut = sapp_criteo.run(cfg, str(folder), out=str(tmp_path / "cut"), seed=1, stop_after=17)
    assert not cut["completed"]
    resumed = sapp_criteo.run(cfg, str(folder), out=str(tmp_path / "cut"), seed=1, resume=True)
    assert_same_run(ref, resumed)
    text = sapp_criteo.run(cfg, str(criteo_file), out=str(tmp_path / "text"), seed=1)
    for key in ("val_logloss", "val_auc", "val_accuracy"):  # the same rows in the same order
        assert text["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-5), key


def test_imagenet_kill_and_resume_is_identical(tmp_path):
    root = make_imagefolder(tmp_path / "im", classes=3, per_class=8, val_per_class=2, size=24, seed=0)
    cfg = dataclasses.replace(sapp_imagenet.ImagenetConfig.small(), arch="resnet18", image_size=16, resize=16,
                              method="magnitude", block=8, steps=12, batch_size=4, checkpoint_every=5,
                              warmup_epochs=0.5)
    task = sapp_imagenet.setup(cfg, root, torch.device("cpu"), 1)  # the uint8 pipeline, normalised on the device
    assert isinstance(task.train_data.dataset, Uint8ImageFolder) and task.net._forward_pre_hooks
    ref = sapp_imagenet.run(cfg, str(root), out=str(tmp_path / "ref"), seed=2)
    cut = sapp_imagenet.run(cfg, str(root), out=str(tmp_path / "cut"), seed=2, stop_after=8)
    assert not cut["completed"]
    resumed = sapp_imagenet.run(cfg, str(root), out=str(tmp_path / "cut"), seed=2, resume=True)
    assert_same_run(ref, resumed)
    assert ref["metrics"]["val_images"] == 6 and ref["metrics"]["train_images"] == 24
    assert 0 < ref["metrics"]["effective_sparsity"] < 0.9


def test_gradient_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    x = torch.randn(128, 6)
    y = (x[:, 0] > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    finals = []
    for batch, acc in ((32, 1), (16, 2), (8, 4)):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        train(model, nn.functional.cross_entropy, make_loader(ds, batch, seed=3), opt, steps=10, accumulate=acc)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    for f in finals[1:]:
        assert torch.allclose(finals[0], f, atol=1e-6)
    with pytest.raises(ValueError, match="accumulate"):
        train(model, nn.functional.cross_entropy, make_loader(ds, 32), opt, steps=1, accumulate=5)


def test_torchrun_two_processes_match_one(criteo_file, tmp_path):
    """2 processes (gloo, CPU) x 32 rows = the single process's 64-row global batch, to float tolerance."""
    args = ["sapp-criteo", "--data", str(criteo_file), "--method", "sapp", "--steps", "24", "--batch-size", "64",
            "--checkpoint-every", "100", "--eval-batch-size", "256", "--no-progress"]
    env = {**os.environ, "PRUNINGLAB_CACHE": str(tmp_path / "c2"), "PRUNINGLAB_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pruninglab",
         *args, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (two_dir,) = (tmp_path / "two" / "sapp-criteo").iterdir()  # one run folder, written by rank 0
    two = json.loads((tmp_path / "c2" / "results" / "sapp-criteo" / two_dir.name / "result.json").read_text())
    assert two["metrics"]["world_size"] == 2
    one = sapp_criteo.run(criteo_config(steps=24, checkpoint_every=100, eval_batch_size=256), str(criteo_file),
                          out=str(tmp_path / "one"))
    assert one["metrics"]["world_size"] == 1
    for key in ("val_logloss", "val_auc", "val_accuracy"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=2e-3), key
    assert two["metrics"]["layer_sparsity"] == one["metrics"]["layer_sparsity"]
    # Each rank read its own half of every global batch: the logged (all-reduced) training loss agrees.
    rows_two = list(csv.DictReader(open(two_dir / "metrics.csv")))
    rows_one = list(csv.DictReader(open(tmp_path / "one" / "metrics.csv")))
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for a, b in zip(rows_two, rows_one):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
    # The weights differ only by float reduction order (Adam magnifies it on rarely seen embedding rows).
    w_two = torch.load(two_dir / "checkpoint.pt", weights_only=True)["model"]
    w_one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    for k in w_one:
        assert torch.allclose(w_two[k].float(), w_one[k].float(), atol=1e-3), k


def test_cli_end_to_end_and_bad_input(tmp_path, capsys):
    data = tmp_path / "criteo.txt"
    assert cli.main(["make-criteo", str(data), "--rows", "2000", "--seed", "1"]) == 0
    rc = cli.main(["sapp-criteo", "--data", str(data), "--method", "magnitude", "--block", "20", "--sparsity", "0.95",
                   "--min-blocks", "50", "--steps", "12", "--batch-size", "64", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[small]: val log loss" in out
    (stored_path,) = (tmp_path / "cache" / "results" / "sapp-criteo").glob("*/result.json")
    stored = json.loads(stored_path.read_text())
    assert stored["config"]["config"]["block"] == 20 and stored["config"]["config"]["min_blocks"] == 50
    assert stored["config"]["data"] == str(data.resolve())
    assert stored["metrics"]["layer_sparsity"]["dense.0.weight"] == pytest.approx(0.95, abs=0.01)
    assert (stored_path.parent / "metrics.csv").exists()
    # Bad input: one clear line and exit status 2.
    assert cli.main(["sapp-criteo", "--data", str(tmp_path / "missing.txt")]) == 2
    assert "no Criteo TSV file" in capsys.readouterr().err
    assert cli.main(["sapp-criteo", "--data", str(data), "--method", "lasso"]) == 2
    assert "method: expected one of 'dense', 'sapp'" in capsys.readouterr().err
    assert cli.main(["sapp-imagenet", "--data", str(tmp_path)]) == 2
    assert "expected layout" in capsys.readouterr().err
    assert cli.main(["sapp-criteo", "--data", str(data), "--batch-size", "100", "--accumulate", "3"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert cli.main(["sapp-criteo", "--data", str(data), "--method", "sapp", "--steps", "10"]) == 2
    assert "total_steps: 10 is too short for a schedule of 15 phases" in capsys.readouterr().err
