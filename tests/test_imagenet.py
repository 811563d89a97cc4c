"""The ImageNet folder layout checks, the fake-folder writer and the seeded ResNet-50 transforms."""
import shutil

import pytest
import torch
from PIL import Image

from pruninglab.data.imagenet import (
    check_imagefolder,
    imagefolder_datasets,
    make_imagefolder,
    make_imagefolder_main,
    resnet_transforms,
)
from pruninglab.train import make_loader


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imnet") / "root", classes=3, per_class=6, val_per_class=2,
                            size=40, seed=1)


def test_writer_makes_real_jpegs_in_the_layout(folder):
    for split, n in (("train", 6), ("val", 2)):
        dirs = sorted(p.name for p in (folder / split).iterdir())
        assert dirs == ["n00000000", "n00000001", "n00000002"]
        for d in dirs:
            files = sorted((folder / split / d).iterdir())
            assert len(files) == n
            for f in files:
                assert f.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG magic
                with Image.open(f) as im:
                    assert im.format == "JPEG" and im.size == (40, 40) and im.mode == "RGB"
    suffixes = {f.suffix for f in folder.rglob("*") if f.is_file()}
    assert suffixes == {".JPEG", ".jpg"}  # upper-case as in ImageNet, lower-case too


def test_datasets_classes_and_transforms(folder):
    train, val = imagefolder_datasets(folder, image_size=32, resize=36, seed=0)
    assert train.classes == val.classes == ["n00000000", "n00000001", "n00000002"]
    assert len(train) == 18 and len(val) == 6  # both extension spellings were found
    assert sorted({y for _, y in train.samples}) == [0, 1, 2]
    x, y = train[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # Normalised with the ImageNet statistics: roughly zero-mean, not in [0, 1].
    assert float(x.min()) < 0
    # Seeded per (seed, epoch, index): repeatable, different across epochs, independent of the global RNG.
    torch.manual_seed(123)
    a = train[4][0]
    torch.manual_seed(456)
    assert torch.equal(a, train[4][0])
    train.set_epoch(1)
    assert not torch.equal(a, train[4][0])
    train.set_epoch(0)
    g = torch.get_rng_state()
    train[0]
    assert torch.equal(g, torch.get_rng_state())  # loading never moves the caller's RNG
    assert torch.equal(val[0][0], val[0][0])  # evaluation transform is deterministic
    # Workers do not change what is loaded.
    batches0 = [x for x, _ in make_loader(train, 6, seed=0, num_workers=0)]
    batches2 = [x for x, _ in make_loader(train, 6, seed=0, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(batches0, batches2))


def test_resnet_transforms_follow_the_standard_recipe():
    from torchvision import transforms as T

    tr = resnet_transforms(True).transforms
    ev = resnet_transforms(False).transforms
    assert isinstance(tr[0], T.RandomResizedCrop) and tr[0].size == (224, 224)
    assert isinstance(tr[1], T.RandomHorizontalFlip)
    assert isinstance(ev[0], T.Resize) and ev[0].size == 256
    assert isinstance(ev[1], T.CenterCrop) and ev[1].size == (224, 224)
    assert tuple(tr[-1].mean) == (0.485, 0.456, 0.406) and tuple(ev[-1].std) == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="resize"):
        resnet_transforms(False, image_size=64, resize=32)


def test_layout_errors_show_the_expected_layout(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a folder[\s\S]*ROOT/train/<class>/<image>\.JPEG"):
        check_imagefolder(tmp_path / "nope")
    root = tmp_path / "r"
    shutil.copytree(folder, root)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match=r"has no val/ folder[\s\S]*expected layout"):
        check_imagefolder(root)
    # Flat validation images (as in the raw ILSVRC2012 tar) are not sorted into classes.
    (root / "val").mkdir()
    for f in (root / "train" / "n00000000").iterdir():
        shutil.copy(f, root / "val" / f.name)
    with pytest.raises(ValueError, match=r"holds 6 image file\(s\) directly[\s\S]*valprep"):
        check_imagefolder(root)
    shutil.rmtree(root / "val")
    shutil.copytree(root / "train", root / "val")
    (root / "val" / "n00000009").mkdir()
    with pytest.raises(ValueError, match=r"n00000009 has no image files[\s\S]*expected layout"):
        check_imagefolder(root)
    (root / "val" / "n00000009" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"n00000009 has no image files"):
        check_imagefolder(root)
    shutil.move(root / "val" / "n00000009", root / "val" / "n00000000" / "sub")
    shutil.rmtree(root / "val" / "n00000002")
    with pytest.raises(ValueError, match=r"different class folders \(3 vs 2; only in train: \['n00000002'\]"):
        check_imagefolder(root)
    empty = tmp_path / "e"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(ValueError, match=r"has no class folders"):
        imagefolder_datasets(empty)
    assert check_imagefolder(folder) == ["n00000000", "n00000001", "n00000002"]


def test_cli_writer(tmp_path, capsys):
    assert make_imagefolder_main([str(tmp_path / "d"), "--classes", "2", "--per-class", "3", "--size", "16"]) == 0
    assert "wrote 8 JPEG files" in capsys.readouterr().out
    assert check_imagefolder(tmp_path / "d") == ["n00000000", "n00000001"]
    with pytest.raises(ValueError, match="per_class"):
        make_imagefolder(tmp_path / "x", per_class=0)
