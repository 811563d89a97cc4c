"""TinyImageNet reader on a generated folder in the official layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from pruninglab.data.cifar import TensorBatches
from pruninglab.data.tinyimagenet import (
    read_tinyimagenet_split, tinyimagenet_folder, tinyimagenet_split, tinyimagenet_wnids, write_tinyimagenet,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tinyimagenet(tmp_path_factory.mktemp("tin") / "tiny-imagenet-200", num_classes=3,
                              train_per_class=4, val_per_class=2)


def test_layout_is_the_official_one(folder):
    assert (folder / "wnids.txt").read_text().split() == ["n90000000", "n90000001", "n90000002"]
    assert sorted(p.name for p in (folder / "train" / "n90000001" / "images").iterdir())[0] == "n90000001_0.JPEG"
    first = (folder / "val" / "val_annotations.txt").read_text().splitlines()[0].split("\t")
    assert first[:2] == ["val_0.JPEG", "n90000000"] and len(first) == 6
    with Image.open(folder / "val" / "images" / "val_0.JPEG") as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def test_read_splits_shapes_labels_and_pixels(folder):
    x, y = read_tinyimagenet_split(folder.parent, train=True)  # parent holding tiny-imagenet-200/ works too
    assert x.shape == (12, 3, 64, 64) and x.dtype == torch.uint8
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with Image.open(folder / "train" / "n90000002" / "images" / "n90000002_3.JPEG") as im:
        ref = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(x[11], ref)
    xv, yv = read_tinyimagenet_split(folder, train=False)
    assert xv.shape == (6, 3, 64, 64) and yv.tolist() == [0, 1, 2, 0, 1, 2]


def test_per_class_limit_and_split(folder):
    split = tinyimagenet_split(folder, train_per_class=2, test_per_class=1)
    assert split.num_classes == 3 and split.x_train.shape[0] == 6 and split.y_test.tolist() == [0, 1, 2]
    batches = TensorBatches(split.x_train, split.y_train, 3, augment=True, mean=split.mean, std=split.std)
    xb, yb = next(iter(batches))
    assert xb.shape == (3, 3, 64, 64) and xb.dtype == torch.float32


def test_wnids_sorted(tmp_path):
    root = write_tinyimagenet(tmp_path, num_classes=2, train_per_class=1, val_per_class=1)
    (root / "wnids.txt").write_text("n90000001\nn90000000\n")
    assert tinyimagenet_wnids(root) == ["n90000000", "n90000001"]
    assert tinyimagenet_folder(root) == root
