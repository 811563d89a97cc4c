"""Reliability suite: bad input across the public API and the CLI gets a clear error that names the
input, and never corrupts an existing checkpoint or results file.

Each case asserts the error type and that the message names the offending argument.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from pruninglab import runtime
from pruninglab.masks import apply_masks, load_masks, save_masks, sparsity_report
from pruninglab.models import mlp
from pruninglab.pruners.magnitude import global_magnitude_masks, layerwise_magnitude_masks, random_masks
from pruninglab.train import CheckpointError, make_loader, train


def net():
    torch.manual_seed(0)
    return mlp([6, 8, 3])


# ----------------------------------------------------------------------------- runtime


def test_wrong_scale_env(monkeypatch):
    monkeypatch.setenv("PRUNINGLAB_SCALE", "huge")
    with pytest.raises(ValueError, match="PRUNINGLAB_SCALE.*'huge'.*small, full"):
        runtime.scale()


def test_wrong_scale_argument():
    with pytest.raises(ValueError, match="scale: 'medium'"):
        runtime.scale("medium")


def test_unknown_device():
    with pytest.raises(ValueError, match="device: 'gpu0'"):
        runtime.device("gpu0")


def test_negative_seed():
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)


def test_experiment_name_with_path():
    with pytest.raises(ValueError, match="experiment"):
        runtime.save_result("../escape", {"a": 1}, {})


def test_corrupt_results_file(tmp_path):
    (tmp_path / "result.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        runtime.load_result("x", out_dir=tmp_path)


# ----------------------------------------------------------------------------- pruners and masks


@pytest.mark.parametrize("sparsity", [1.0, -0.01, 2, float("nan")])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        global_magnitude_masks(net(), sparsity)


def test_layerwise_sparsity_names_the_layer():
    with pytest.raises(ValueError, match=r"sparsity\['0.weight'\]"):
        layerwise_magnitude_masks(net(), {"0.weight": 1.2, "2.weight": 0.5})


def test_empty_model():
    with pytest.raises(ValueError, match="model: has no prunable layers"):
        global_magnitude_masks(nn.Sequential(nn.ReLU()), 0.5)


def test_empty_param_dict():
    with pytest.raises(ValueError, match="params: is empty"):
        random_masks({}, 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights(bad):
    model = net()
    with torch.no_grad():
        model[2].weight[0, 0] = bad
    with pytest.raises(ValueError, match=r"params\['2.weight'\]: contains NaN or Inf"):
        global_magnitude_masks(model, 0.5)


def test_mask_of_wrong_shape():
    masks = {"0.weight": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: shape \(3, 3\)"):
        apply_masks(net(), masks)


def test_mask_for_unknown_parameter():
    with pytest.raises(ValueError, match="masks: names 'fc.weight'"):
        apply_masks(net(), {"fc.weight": torch.ones(2, dtype=torch.bool)})


def test_mask_not_bool():
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: expected a bool tensor"):
        apply_masks(net(), {"0.weight": torch.ones(8, 6)})


def test_missing_mask_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no mask file"):
        load_masks(tmp_path / "none.pt")


def test_corrupt_mask_file(tmp_path):
    path = save_masks(global_magnitude_masks(net(), 0.5), tmp_path / "m.pt")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable mask file"):
        load_masks(path)


def test_sparsity_report_needs_masks():
    with pytest.raises(ValueError, match="masks: expected a dict"):
        sparsity_report([torch.ones(2, dtype=torch.bool)])


def test_mlp_sizes():
    with pytest.raises(ValueError, match="sizes"):
        mlp([10])


# ----------------------------------------------------------------------------- training, checkpoints


def _run(out, steps=6, stop_after=None, config=None, resume=False, x=None):
    torch.manual_seed(0)
    x = torch.randn(64, 6) if x is None else x
    y = torch.randint(0, 3, (len(x),))
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(model, nn.functional.cross_entropy, make_loader(torch.utils.data.TensorDataset(x, y), 16), opt,
                 steps=steps, out_dir=out, checkpoint_every=2, stop_after=stop_after, resume=resume,
                 config=config or {"lr": 0.1})


def test_mismatched_data_shape(tmp_path):
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _run(tmp_path, x=torch.randn(64, 7))


def test_batch_larger_than_dataset():
    with pytest.raises(ValueError, match="batch_size: 128 is larger than the 64 samples"):
        make_loader(torch.utils.data.TensorDataset(torch.zeros(64, 2)), 128)


def test_truncated_checkpoint_is_refused_and_left_alone(tmp_path):
    _run(tmp_path, stop_after=4)
    ck = tmp_path / "checkpoint.pt"
    broken = ck.read_bytes()[:100]
    ck.write_bytes(broken)
    with pytest.raises(CheckpointError, match="truncated or corrupt.*refusing to resume"):
        _run(tmp_path, resume=True)
    assert ck.read_bytes() == broken


def test_resume_with_different_config_is_refused(tmp_path):
    _run(tmp_path, stop_after=4)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="different config.*differs in: lr"):
        _run(tmp_path, resume=True, config={"lr": 0.5})
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = runtime.atomic_torch_save({"step": 1}, tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        runtime.atomic_torch_save({"step": 2, "bad": lambda: 0}, path)  # lambdas cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_negative_steps(tmp_path):
    with pytest.raises(ValueError, match="steps: expected a non-negative integer"):
        _run(tmp_path, steps=-3)


# ----------------------------------------------------------------------------- CLI


def _cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "pruninglab", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_cli_unknown_experiment():
    proc = _cli("prune-everything")
    assert proc.returncode == 2 and "unknown experiment 'prune-everything'" in proc.stderr


def test_cli_bench_unknown_benchmark():
    proc = _cli("bench", "--only", "no_such_benchmark")
    assert proc.returncode == 2 and "--only: no benchmark named" in proc.stderr


# ----------------------------------------------------------------------------- data files and folders


def _criteo_with(tmp_path, lineno, edit):
    from pruninglab.data.criteo import write_synthetic_criteo

    good = tmp_path / "train.txt"
    write_synthetic_criteo(good, rows=20, seed=0)
    lines = good.read_text().splitlines(True)
    lines[lineno - 1] = edit(lines[lineno - 1])
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    return bad


def test_criteo_line_with_wrong_field_count(tmp_path):
    from pruninglab.data.criteo import CriteoBatches

    bad = _criteo_with(tmp_path, 6, lambda line: "1\t2\t3\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 6: has 3 tab-separated fields, expected 40"):
        list(CriteoBatches(bad, batch_size=4))


def test_criteo_non_numeric_integer_field(tmp_path):
    from pruninglab.data.criteo import CriteoBatches

    def edit(line):
        f = line.split("\t")
        f[2] = "abc"
        return "\t".join(f)

    bad = _criteo_with(tmp_path, 4, edit)
    with pytest.raises(ValueError, match=r"line 4: integer feature I2 \(field 3\) is 'abc'"):
        list(CriteoBatches(bad, batch_size=4))


def test_criteo_missing_file(tmp_path):
    from pruninglab.data.criteo import CriteoBatches

    with pytest.raises(FileNotFoundError, match="path: no Criteo TSV file"):
        CriteoBatches(tmp_path / "none.txt", batch_size=4)


def test_imagefolder_missing_shows_layout(tmp_path):
    from pruninglab.data.imagenet import check_imagefolder

    with pytest.raises(FileNotFoundError, match=r"(?s)root: .* is not a folder.*expected layout.*train/<class>"):
        check_imagefolder(tmp_path / "nope")


def test_imagefolder_empty_class(tmp_path):
    from pruninglab.data.imagenet import check_imagefolder

    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="root: class folder .*n01440764 has no image files"):
        check_imagefolder(tmp_path)


def test_cifar_folder_missing(tmp_path):
    from pruninglab.data.cifar import cifar_folder

    with pytest.raises(FileNotFoundError, match="data: no cifar10 dataset.*cifar-10-batches-py"):
        cifar_folder(tmp_path, "cifar10")


def test_unreadable_image_names_the_file(tmp_path):
    from pruninglab.data.images import load_image

    path = tmp_path / "a.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"image: .*a.jpg is not a readable image"):
        load_image(path, 16)


# ----------------------------------------------------------------------------- geometry, blocks, sharpness


def test_statistical_dimension_s_larger_than_d():
    from pruninglab.limits.geometry import statistical_dimension_l1

    with pytest.raises(ValueError, match=r"s: expected 0 <= s <= d = 10, got 11"):
        statistical_dimension_l1(10, 11)


def test_statistical_dimension_non_integer_and_zero_sizes():
    from pruninglab.limits.geometry import statistical_dimension_group_l1, statistical_dimension_l1

    with pytest.raises(ValueError, match="d: expected an integer"):
        statistical_dimension_l1(10.5, 2)
    with pytest.raises(ValueError, match="group_size: expected an integer >= 1"):
        statistical_dimension_group_l1(10, 2, 0)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(sparsity=1.2, block_size=8), r"sparsity: expected a number in \[0, 1\)"),
    (dict(sparsity=0.5, block_size=0), "block_size: expected a positive integer"),
    (dict(sparsity=0.5, block_size=8, layers=["nope"]), "layers: 'nope' is not a Linear/Conv layer"),
])
def test_sapp_pruner_arguments(kwargs, pattern):
    from pruninglab.pruners.schedule import imagenet_phases
    from pruninglab.pruners.sequential_attention import SequentialAttentionPruner

    with pytest.raises(ValueError, match=pattern):
        SequentialAttentionPruner(nn.Sequential(nn.Linear(64, 64)), phases=imagenet_phases(100, "sapp"),
                                  min_blocks=1, **kwargs)


def test_bsr_rejects_a_mask_that_is_not_block_structured():
    from pruninglab.sparse.bsr import to_block_sparse

    torch.manual_seed(0)
    masks = {"0.weight": torch.rand(64, 64) > 0.5}
    with pytest.raises(ValueError, match=r"masks\['0.weight'\]: is not block-structured for block size 8x8"):
        to_block_sparse(nn.Sequential(nn.Linear(64, 64)), masks, block_size=8)


@pytest.mark.parametrize("kwargs, pattern", [(dict(method="arnoldi"), "method: expected 'lanczos' or 'power'"),
                                             (dict(k=0), "k: expected a positive integer")])
def test_hessian_eigenvalues_arguments(kwargs, pattern):
    from pruninglab.sharpness import hessian_eigenvalues

    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match=pattern):
        hessian_eigenvalues(net(), nn.functional.cross_entropy, data, **kwargs)
