"""Bad data files and values: refused with a message that names the file or the input, never run as
code, never read silently wrong; the files involved are left as they were.
"""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from pruninglab import runtime
from pruninglab.data.cifar import class_names, read_cifar_split, write_cifar
from pruninglab.data.images import TensorSignals, load_image


def _file_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- CIFAR pickles


class _CreatesAFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _RunsAShellCommand:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_CreatesAFile, _RunsAShellCommand])
@pytest.mark.parametrize("fname", ["data_batch_1", "test_batch"])
def test_crafted_cifar_pickle_is_refused_and_creates_no_file(tmp_path, payload, fname):
    folder = write_cifar(tmp_path, train_per_file=2, num_test=2)
    victim = tmp_path / "created-by-pickle"
    (folder / fname).write_bytes(pickle.dumps({"data": payload(victim), "labels": [0]}, protocol=2))
    before = _file_hashes(tmp_path)
    with pytest.raises(ValueError, match=rf"data: .*{fname} is not a plain CIFAR batch: it asks to load"):
        read_cifar_split(tmp_path, train=fname != "test_batch")
    assert not victim.exists()
    assert _file_hashes(tmp_path) == before


def test_crafted_cifar_meta_is_refused(tmp_path):
    folder = write_cifar(tmp_path, train_per_file=2, num_test=2)
    victim = tmp_path / "created-by-pickle"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _CreatesAFile(victim)}, protocol=2))
    with pytest.raises(ValueError, match=r"data: .*batches.meta is not a plain CIFAR batch"):
        class_names(tmp_path)
    assert not victim.exists()


def test_cifar_pickle_with_disallowed_codec_is_refused(tmp_path):
    import codecs

    folder = write_cifar(tmp_path, train_per_file=2, num_test=2)

    class Zlib:
        def __reduce__(self):
            return (codecs.encode, ("x", "zlib_codec"))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Zlib(), "labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data: .*data_batch_1"):
        read_cifar_split(tmp_path)


@pytest.mark.parametrize("cut", [0, 10, 300])
def test_truncated_cifar_batch_names_the_file(tmp_path, cut):
    folder = write_cifar(tmp_path, train_per_file=2, num_test=2)
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError, match=r"data: .*data_batch_3 is not a readable CIFAR batch"):
        read_cifar_split(tmp_path)


@pytest.mark.parametrize("entry, pattern", [
    ([1, 2, 3], r"data_batch_5 is not a CIFAR batch \(expected a pickled dict\)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, r"data_batch_5 holds 'data' of type float32"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}, r"data_batch_5 has labels that are not integers"),
    ({"data": np.zeros((2, 3072), np.uint8)}, r"data_batch_5 lacks the 'data' or 'labels' entry"),
])
def test_malformed_cifar_batch_names_the_file(tmp_path, entry, pattern):
    folder = write_cifar(tmp_path, train_per_file=2, num_test=2)
    (folder / "data_batch_5").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=pattern):
        read_cifar_split(tmp_path)


# ----------------------------------------------------------------------------- image files


def _jpeg(path, size=(32, 32)):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_truncated_jpeg_names_the_file(tmp_path, keep):
    path = _jpeg(tmp_path / "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"image: .*cut.jpg is not a readable image, or is truncated"):
        load_image(path, 16)


def test_png_with_garbage_after_header_names_the_file(tmp_path):
    from PIL import Image

    path = tmp_path / "bad.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[40:60] = b"\xff" * 20  # corrupt the compressed data
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"image: .*bad.png"):
        load_image(path, 8)


# ----------------------------------------------------------------------------- signals in memory


@pytest.mark.parametrize("images, pattern", [
    (torch.full((2, 4, 4, 3), 200.0), r"images: values lie in \[200, 200\]; expected \[0, 1\] \(0..255 pixel values"),
    (torch.tensor(float("nan")).expand(2, 4, 4, 1).clone(), r"images: contains NaN or Inf pixels"),
    (torch.full((2, 4, 4, 1), -0.5), r"images: values lie in \[-0.5, -0.5\]; expected \[0, 1\]"),
    (torch.zeros(2, 4, 4, 3, dtype=torch.complex64), r"images: has dtype torch.complex64"),
    (torch.zeros(2, 4, 4, 3, dtype=torch.int64), r"images: has dtype torch.int64"),
    (np.full((1, 4, 4, 3), np.inf, dtype=np.float32), r"images: contains NaN or Inf pixels"),
])
def test_tensor_signals_refuse_bad_values(images, pattern):
    with pytest.raises(ValueError, match=pattern):
        TensorSignals(images)


@pytest.mark.parametrize("value_range", [(1, 0), (0, float("nan")), "01", (0, 1, 2)])
def test_tensor_signals_value_range_checked(value_range):
    with pytest.raises(ValueError, match="value_range: expected"):
        TensorSignals(torch.zeros(1, 4, 4, 1), value_range=value_range)


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed", [2**64, 2**70, 1.5, "3", True])
def test_seed_outside_64_bits_or_not_an_integer(seed):
    with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\*\*64 - 1\]"):
        runtime.seed_everything(seed)


# ----------------------------------------------------------------------------- TinyImageNet folders


@pytest.fixture
def tin(tmp_path):
    from pruninglab.data.tinyimagenet import write_tinyimagenet

    return write_tinyimagenet(tmp_path / "tin", num_classes=2, train_per_class=2, val_per_class=1)


def _read(root, train=True):
    from pruninglab.data.tinyimagenet import read_tinyimagenet_split

    return read_tinyimagenet_split(root, train)


@pytest.mark.parametrize("remove, pattern", [
    ("wnids.txt", r"data: no wnids.txt in .*tin"),
    ("val/val_annotations.txt", r"data: no val/val_annotations.txt in .*tin"),
    ("train", r"data: no train/ folder in .*tin"),
])
def test_tinyimagenet_missing_part(tin, remove, pattern):
    import shutil

    target = tin / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=pattern):
        _read(tin)


def test_tinyimagenet_missing_class_folder(tin):
    (tin / "wnids.txt").write_text("n90000000\nn90000001\nn12345678\n")
    with pytest.raises(FileNotFoundError, match=r"data: no folder .*n12345678/images for class n12345678"):
        _read(tin)


def test_tinyimagenet_annotation_with_unknown_class(tin):
    ann = tin / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 3: class 'n99999999' is not in wnids.txt"):
        _read(tin, train=False)


def test_tinyimagenet_annotation_names_a_missing_file(tin):
    ann = tin / "val" / "val_annotations.txt"
    ann.write_text("val_77.JPEG\tn90000000\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"line 1: names val_77.JPEG, but .*val_77.JPEG does not exist"):
        _read(tin, train=False)


def test_tinyimagenet_corrupt_jpeg_names_the_file(tin):
    bad = tin / "train" / "n90000001" / "images" / "n90000001_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"data: .*n90000001_1.JPEG is not a readable image"):
        _read(tin)


def test_tinyimagenet_wrong_image_size_names_the_file(tin):
    _jpeg(tin / "val" / "images" / "val_1.JPEG", size=(32, 48))
    with pytest.raises(ValueError, match=r"data: .*val_1.JPEG is 32x48 pixels; TinyImageNet images are 64x64"):
        _read(tin, train=False)


def test_tinyimagenet_no_folder_given(monkeypatch):
    from pruninglab.data.tinyimagenet import tinyimagenet_folder

    monkeypatch.delenv("PRUNINGLAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"data: no dataset folder given for TinyImageNet"):
        tinyimagenet_folder(None)


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(train_per_class=-1), dict(val_per_class=1.5)])
def test_write_tinyimagenet_counts(tmp_path, kwargs):
    from pruninglab.data.tinyimagenet import write_tinyimagenet

    with pytest.raises(ValueError, match=f"{next(iter(kwargs))}: expected a positive integer"):
        write_tinyimagenet(tmp_path, **kwargs)


# ----------------------------------------------------------------------------- solvers with NaN inputs


def test_phase_solver_refuses_nan_matrix():
    from pruninglab.limits.phase import solve_l1_batched

    A = torch.randn(2, 3, 6, dtype=torch.float64)
    A[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="A: contains NaN or Inf values"):
        solve_l1_batched(A, torch.randn(2, 3, dtype=torch.float64))


def test_phase_solver_refuses_inf_rhs():
    from pruninglab.limits.phase import solve_group_l1_batched

    b = torch.randn(1, 4, dtype=torch.float64)
    b[0, 0] = float("inf")
    with pytest.raises(ValueError, match="b: contains NaN or Inf values"):
        solve_group_l1_batched(torch.randn(1, 4, 8, dtype=torch.float64), b, 2)


def test_cvxpy_reference_refuses_nan():
    from pruninglab.limits.phase import solve_l1_cvxpy

    A = np.random.default_rng(0).normal(size=(3, 6))
    A[0, 0] = np.nan
    with pytest.raises(ValueError, match="A: contains NaN or Inf values"):
        solve_l1_cvxpy(A, np.ones(3))


def test_hessian_of_nan_weights_names_them():
    from torch import nn

    from pruninglab.sharpness import hessian_eigenvalues

    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    with pytest.raises(ValueError, match=r"params: \['0.weight'\] contain NaN or Inf"):
        hessian_eigenvalues(model, nn.functional.cross_entropy, data, k=1)


def test_hessian_of_nan_data_says_so():
    from torch import nn

    from pruninglab.sharpness import hessian_eigenvalues

    torch.manual_seed(0)
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    data = [(x, torch.randint(0, 3, (5,)))]
    with pytest.raises(ValueError, match=r"data: the Hessian-vector products became NaN or Inf"):
        hessian_eigenvalues(nn.Sequential(nn.Linear(4, 3)), nn.functional.cross_entropy, data, k=1)


def test_spectral_average_refuses_nan_nodes():
    from pruninglab.sharpness import spectral_average

    with pytest.raises(ValueError, match="nodes, weights: contain NaN or Inf"):
        spectral_average(torch.tensor([1.0, float("nan")]), torch.tensor([0.5, 0.5]), lambda t: t)
