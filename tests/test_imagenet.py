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


# --------------------------------------------------------------------------- the uint8 pipeline

from pruninglab.data.imagenet import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    Uint8ImageFolder,
    attach_input_normalization,
    decode_image_uint8,
    decode_jpegs_on_device,
    imagenet_loader,
    normalize_on_device,
    random_resized_crop_box,
    uint8_imagefolder_datasets,
)
from pruninglab.train import _epoch_batches  # noqa: E402


@pytest.fixture(scope="module")
def rect_folder(tmp_path_factory):
    """Non-square images (as ImageNet's), so crops, aspect ratios and the eval resize are exercised."""
    import numpy as np

    root = tmp_path_factory.mktemp("rect") / "root"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for c in range(2):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(n):
                h, w = (45, 60) if i % 2 else (64, 40)
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"img{i}.JPEG", quality=90)
    return root


def test_uint8_dataset_items_are_seeded_uint8_crops(rect_folder):
    train, val = uint8_imagefolder_datasets(rect_folder, image_size=32, resize=36, seed=5)
    assert len(train) == 10 and len(val) == 4 and train.classes == val.classes
    x, flip, y = train[3]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and isinstance(flip, bool) and y == 0
    assert x.permute(1, 2, 0).is_contiguous()  # HWC memory: a batch of them is channels-last
    # Same (seed, epoch, index) -> same crop and flip, whatever the global RNG; other epoch -> other crop.
    torch.manual_seed(1)
    g = torch.get_rng_state()
    a = train[(2, 7)]
    assert torch.equal(g, torch.get_rng_state())  # the global RNG did not move
    torch.manual_seed(99)
    b = train[(2, 7)]
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], train[(3, 7)][0])
    train.set_epoch(2)
    assert torch.equal(train[7][0], a[0])  # a plain index uses the dataset's epoch
    flips = [train[(e, i)][1] for e in range(6) for i in range(10)]
    assert 10 < sum(flips) < 50
    # Evaluation: deterministic resize of the shorter side to 36 and a centre 32x32 crop.
    from torchvision.transforms.v2 import functional as F

    v, vflip, _ = val[0]
    assert vflip is False and torch.equal(v, val[0][0])
    raw = decode_image_uint8(val.samples[0][0])
    ref = F.center_crop(F.resize(raw, 36, antialias=True), [32, 32])
    assert (v.int() - ref.int()).abs().max() <= 2


def test_crop_box_follows_the_inception_rule():
    g = torch.Generator().manual_seed(0)
    shares, aspects = [], []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_box(375, 500, g)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        shares.append(h * w / (375 * 500))
        aspects.append(w / h)
    assert 0.075 < min(shares) < 0.1 and max(shares) > 0.95
    assert min(aspects) > 0.74 and max(aspects) < 1.35
    # Impossible requests fall back to a centred crop with the aspect ratio clamped into the range.
    assert random_resized_crop_box(10, 100, g, scale=(1.0, 1.0)) == (0, 43, 10, 13)


def test_loader_workers_persist_and_resume_is_identical(rect_folder):
    train, _ = uint8_imagefolder_datasets(rect_folder, image_size=16, resize=20, seed=3)

    def epoch(loader, e, skip=0):
        return [((x.clone(), f.clone()), y.clone()) for (x, f), y in _epoch_batches(loader, e, skip)]

    plain = imagenet_loader(train, 4, seed=3, num_workers=0, pin_memory=False)
    workers = imagenet_loader(train, 4, seed=3, num_workers=2, pin_memory=False, prefetch_factor=2)
    assert workers.persistent_workers and len(plain) == 2
    for e in (0, 1, 2):  # the persistent workers see each new epoch through the keys
        a, b = epoch(plain, e), epoch(workers, e)
        for ((xa, fa), ya), ((xb, fb), yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(fa, fb) and torch.equal(ya, yb)
        assert xa.dtype == torch.uint8 and xa.shape == (4, 3, 16, 16)
        assert xa.is_contiguous(memory_format=torch.channels_last)
    e1, e2 = epoch(plain, 1), epoch(plain, 2)
    assert not torch.equal(e1[0][0][0], e2[0][0][0])
    resumed = epoch(workers, 1, skip=1)  # resume mid-epoch: the remaining batches, bit for bit
    assert len(resumed) == 1 and torch.equal(resumed[0][0][0], e1[1][0][0])
    assert torch.equal(resumed[0][0][1], e1[1][0][1]) and torch.equal(resumed[0][1], e1[1][1])
    # Ranks split each epoch; evaluation order: every image once over ranks, nothing dropped.
    r0 = imagenet_loader(train, 2, seed=3, num_workers=0, rank=0, world_size=2)
    r1 = imagenet_loader(train, 2, seed=3, num_workers=0, rank=1, world_size=2)
    ids0 = [i for _, i in r0.sampler]
    ids1 = [i for _, i in r1.sampler]
    assert sorted(ids0 + ids1) == list(range(10))
    _, val = uint8_imagefolder_datasets(rect_folder, image_size=16, resize=20)
    ev = [imagenet_loader(val, 3, num_workers=0, rank=r, world_size=2) for r in (0, 1)]
    assert sum(len(y) for ld in ev for _, y in ld) == 4
    with pytest.raises(ValueError, match="batch_size: 9 is larger"):
        imagenet_loader(train, 9, num_workers=0, rank=0, world_size=2)


def test_normalize_on_device_matches_the_float_recipe():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 8, 10), dtype=torch.uint8, generator=g)
    flips = torch.tensor([True, False, True])
    out = normalize_on_device(x, flips)
    ref = x.float() / 255
    ref[flips] = ref[flips].flip(-1)
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)
    assert normalize_on_device(x, channels_last=False).is_contiguous()
    with pytest.raises(ValueError, match="images: expected a uint8"):
        normalize_on_device(x.float())
    # The pre-hook lets the unchanged model (and state_dict) take the loader's uint8 batches.
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    expected = net(ref)
    keys = list(net.state_dict())
    handle = attach_input_normalization(net)
    assert torch.allclose(net((x, flips)), expected, atol=1e-5)
    assert torch.allclose(net(ref), expected, atol=1e-5)
    assert list(net.state_dict()) == keys
    handle.remove()


def test_corrupt_and_truncated_images_are_named(rect_folder, tmp_path):
    good = next((rect_folder / "train" / "n00000000").iterdir())
    data = good.read_bytes()
    root = tmp_path / "bad"
    d = root / "n00000000"
    d.mkdir(parents=True)
    (d / "cut.JPEG").write_bytes(data[: len(data) // 2])
    ds = Uint8ImageFolder(root, train=True, image_size=16, resize=16)
    with pytest.raises(ValueError, match=r"image: cannot decode .*cut\.JPEG .*corrupt or truncated"):
        ds[0]
    (d / "cut.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cut\.JPEG is an empty file"):
        ds[0]
    (d / "cut.JPEG").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot decode .*cut\.JPEG"):
        ds[0]
    (d / "cut.JPEG").write_bytes(data[: len(data) // 2])
    from pruninglab.data.imagenet import SeededImageFolder

    with pytest.raises(ValueError, match=r"cannot decode .*cut\.JPEG"):
        SeededImageFolder(root)[0]  # the PIL path of the reference recipe names the file too


def test_batched_decode_matches_single_decode(rect_folder):
    files = sorted((rect_folder / "train" / "n00000001").iterdir())[:3]
    from torchvision.io import read_file

    decoded = decode_jpegs_on_device([read_file(str(f)) for f in files], device="cpu")
    for f, img in zip(files, decoded):
        assert torch.equal(img, decode_image_uint8(f))
