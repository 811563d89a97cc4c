"""Tests of the CIFAR reader (against torchvision's), the on-device batches, and the ``limit`` CLI on a generated folder."""
import json

import numpy as np
import pytest
import torch

from pruninglab.data.cifar import (
    TensorBatches,
    cifar_folder,
    cifar_split,
    class_names,
    read_cifar_split,
    write_cifar,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10", train_per_file=24, num_test=40, seed=0)
    write_cifar(root, "cifar100", train_per_file=12, num_test=20, seed=1)
    return root


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_reader_agrees_with_torchvision(cifar_root, name, monkeypatch):
    import torchvision
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks every file's MD5 against the official archive; our generated files are
    # in the same format but not the same bytes, so switch that check off for the comparison.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    for train in (True, False):
        ref = cls(str(cifar_root), train=train, download=False)
        x, y = read_cifar_split(cifar_root, name, train=train)
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), ref.data)  # torchvision keeps N x H x W x C
        assert y.tolist() == list(ref.targets)
        assert class_names(cifar_root, name) == list(ref.classes)
    assert len(read_cifar_split(cifar_root, name)[0]) == 120 if name == "cifar10" else 60


def test_folder_may_be_root_or_the_dataset_folder(cifar_root):
    inner = cifar_folder(cifar_root, "cifar10")
    assert inner.name == "cifar-10-batches-py"
    assert cifar_folder(inner, "cifar10") == inner
    a, _ = read_cifar_split(inner, "cifar10", train=False)
    b, _ = read_cifar_split(cifar_root, "cifar10", train=False)
    assert torch.equal(a, b)


def test_missing_folder_names_the_expected_layout(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/\{data_batch_1.*test_batch, batches.meta\}"):
        cifar_folder(tmp_path / "absent", "cifar10")
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/\{train, test, meta\}"):
        cifar_folder(tmp_path, "cifar100")
    monkeypatch.delenv("PRUNINGLAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="PRUNINGLAB_DATA"):
        cifar_folder(None, "cifar10")
    with pytest.raises(ValueError, match="name"):
        cifar_folder(tmp_path, "mnist")


def test_corrupt_batch_is_rejected(tmp_path):
    import pickle

    folder = write_cifar(tmp_path, "cifar10", train_per_file=2, num_test=2)
    with (folder / "test_batch").open("wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match="3072"):
        read_cifar_split(tmp_path, "cifar10", train=False)


def test_subsets_are_seeded(cifar_root):
    a = cifar_split(cifar_root, "cifar10", train_samples=50, test_samples=10, seed=3)
    b = cifar_split(cifar_root, "cifar10", train_samples=50, test_samples=10, seed=3)
    assert a.x_train.shape[0] == 50 and a.x_test.shape[0] == 10 and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_batches_order_and_normalisation(cifar_root):
    x, y = read_cifar_split(cifar_root, "cifar10")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    tb = TensorBatches(x, y, 32, mean=mean, std=std, seed=5)
    assert len(tb) == 3  # 120 // 32, drop_last
    tb.set_epoch(0)
    first = [b[1] for b in tb]
    tb.set_epoch(1)
    second = [b[1] for b in tb]
    tb.set_epoch(0)
    again = [b[1] for b in tb]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    plain = TensorBatches(x, y, 50, shuffle=False, drop_last=False, mean=mean, std=std)
    xb, yb = next(iter(plain))
    ref = (x[:50].double() / 255 - torch.tensor(mean, dtype=torch.float64)[:, None, None]) / torch.tensor(
        std, dtype=torch.float64)[:, None, None]
    assert torch.allclose(xb.double(), ref, atol=1e-5) and torch.equal(yb, y[:50])
    assert len(plain) == 3  # 50 + 50 + 20


def test_augmentation_is_a_padded_crop_or_its_mirror(cifar_root):
    x, y = read_cifar_split(cifar_root, "cifar10")
    tb = TensorBatches(x, y, 40, shuffle=False, augment=True, seed=0)
    gen = torch.Generator().manual_seed(0)
    out = tb.prepare(x[:40], gen)  # no mean/std: float in [0, 1]
    padded = torch.nn.functional.pad(x[:40], (4, 4, 4, 4))
    flips = 0
    for i in range(40):
        img = (out[i] * 255).round().to(torch.uint8)
        windows = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(img, (padded[i, :, dy:dy + 32, dx:dx + 32].flip(2) if f
                                        else padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert windows, f"image {i} is not a crop of the padded original"
        flips += any(f for _, _, f in windows) and not any(not f for _, _, f in windows)
    assert 5 <= flips <= 35  # about half are mirrored
    with pytest.raises(ValueError, match="augment"):
        TensorBatches(x.float(), y, 8, augment=True)


def test_limit_cli_runs_and_resumes_to_the_same_result(cifar_root, tmp_path, capsys):
    from pruninglab.cli import main as cli_main

    args = ["limit", "--model", "mlp-16", "--dataset", "cifar10", "--data", str(cifar_root), "--scale", "small",
            "--epochs", "4", "--batch-size", "24", "--lanczos-steps", "8", "--no-progress"]
    def run_folder(root):  # <runs root>/limit/limit-<config hash>-s<seed>
        (folder,) = (root / "limit").glob("limit-*-s0")
        return folder

    assert cli_main(args + ["--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((run_folder(tmp_path / "whole") / "result.json").read_text())
    m = whole["metrics"]
    assert whole["scale"] == "small" and whole["config"]["config"]["model"] == "mlp-16"
    assert 0 <= m["actual"] < 1 and 0 < m["predicted"] <= 1 and m["epsilon"] > 0
    assert m["hessian_dim"] == 3072 * 16 + 16 + 16 * 10 + 10 and m["num_weights"] == 3072 * 16 + 160
    assert m["train_steps"] == 4 * 5  # 120 images // 24 per batch, 4 epochs
    # A run killed after 7 steps (last checkpoint at step 5) continues to the identical result.
    cut = tmp_path / "cut"
    assert cli_main(args + ["--out", str(cut), "--stop-after", "7"]) == 0
    assert not (run_folder(cut) / "result.json").exists() and (run_folder(cut) / "checkpoint.pt").exists()
    assert cli_main(args + ["--out", str(cut), "--resume"]) == 0
    resumed = json.loads((run_folder(cut) / "result.json").read_text())["metrics"]
    assert resumed["resumed_from"] == 5
    for key in ("dense_accuracy", "epsilon", "predicted", "actual", "top_eigenvalue"):
        assert resumed[key] == pytest.approx(m[key], rel=1e-6, abs=1e-9), key
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith(f"result: {run_folder(cut) / 'result.json'}")


def test_limit_cli_reports_a_missing_dataset(tmp_path, capsys):
    from pruninglab.cli import main as cli_main

    rc = cli_main(["limit", "--model", "fc5", "--data", str(tmp_path / "nowhere"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "download=True" in err
    assert cli_main(["limit", "--model", "lenet", "--no-progress"]) == 2
    assert "mlp-H1-H2" in capsys.readouterr().err


def test_python2_style_batches_are_read(tmp_path):
    """The official files are Python 2 pickles naming numpy.core.multiarray; the restricted reader admits them."""
    import pickle

    import numpy as np

    from pruninglab.data.cifar import read_cifar_split, write_cifar

    folder = write_cifar(tmp_path, train_per_file=3, num_test=3)
    data = np.arange(3 * 3072, dtype=np.uint64).astype(np.uint8).reshape(3, 3072)
    raw = pickle.dumps({b"data": data, b"labels": [1, 2, 3], b"batch_label": b"testing batch 1 of 1"}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1.x / Python 2 wrote it
    assert b"numpy.core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw)
    x, y = read_cifar_split(tmp_path, train=False)
    assert torch.equal(x, torch.from_numpy(data).reshape(3, 3, 32, 32)) and y.tolist() == [1, 2, 3]
