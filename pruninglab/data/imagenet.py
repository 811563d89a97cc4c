"""ImageNet in the torchvision ``ImageFolder`` layout, the standard ResNet-50 transforms, and a writer of fake folders.

Defined in book/sapp_imagenet.md.

Nothing here downloads anything: point ``root`` at a folder laid out as :data:`EXPECTED_LAYOUT`
(the layout ``torchvision.datasets.ImageNet`` and the usual ``valprep.sh`` produce). A missing or
malformed folder raises an error that prints the expected layout and says what is wrong.

Random augmentation is seeded per sample from ``(seed, epoch, index)``: which worker process
loads an image, and how many workers there are, then changes nothing, so a resumed run sees
exactly the crops an uninterrupted run would have seen.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import ImageFolder

#: Image file extensions ImageFolder accepts (matched case-insensitively, e.g. ``.JPEG``).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

EXPECTED_LAYOUT = """expected layout (torchvision ImageFolder, as for ImageNet ILSVRC2012):
  ROOT/train/<class>/<image>.JPEG   e.g. ROOT/train/n01440764/n01440764_10026.JPEG
  ROOT/val/<class>/<image>.JPEG     e.g. ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG
with the same class folders (1000 wnids for ImageNet) in train/ and val/, at least one image in
each; class index = position of the folder name in sorted order. Validation images must be sorted
into class folders (torchvision.datasets.ImageNet or the usual valprep.sh does this).
`python -m pruninglab make-imagefolder DIR --classes C --per-class N` writes a small fake one."""

#: ImageNet channel statistics used by every torchvision ResNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def check_imagefolder(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> list[str]:
    """Check that ``root`` has the ImageFolder layout; return the sorted class names.

    Defined in book/sapp_imagenet.md.

    Raises ``FileNotFoundError`` (missing folder) or ``ValueError`` (malformed: no class folders,
    loose images in a split folder, an empty class folder, classes that differ between splits),
    each message followed by :data:`EXPECTED_LAYOUT`. Looks at no more than one image per class.
    """
    if root is None:
        raise ValueError(f"root: no dataset folder given (use --data DIR or $PRUNINGLAB_DATA)\n{EXPECTED_LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: {root} is not a folder\n{EXPECTED_LAYOUT}")
    classes_by_split: dict[str, list[str]] = {}
    for split in splits:
        d = root / split
        if not d.is_dir():
            raise FileNotFoundError(f"root: {root} has no {split}/ folder\n{EXPECTED_LAYOUT}")
        entries = list(os.scandir(d))
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
        if loose:
            raise ValueError(
                f"root: {d} holds {len(loose)} image file(s) directly (e.g. {loose[0]}) instead of class "
                f"folders\n{EXPECTED_LAYOUT}"
            )
        if not classes:
            raise ValueError(f"root: {d} has no class folders\n{EXPECTED_LAYOUT}")
        for c in classes:
            with os.scandir(d / c) as it:
                if not any(e.is_file() and _is_image(e.name) for e in it):
                    raise ValueError(
                        f"root: class folder {d / c} has no image files ({', '.join(IMG_EXTENSIONS)}, any case)"
                        f"\n{EXPECTED_LAYOUT}"
                    )
        classes_by_split[split] = classes
    first = splits[0]
    for split in splits[1:]:
        a, b = set(classes_by_split[first]), set(classes_by_split[split])
        if a != b:
            only_a, only_b = sorted(a - b)[:3], sorted(b - a)[:3]
            raise ValueError(
                f"root: {first}/ and {split}/ have different class folders ({len(a)} vs {len(b)}; only in "
                f"{first}: {only_a}, only in {split}: {only_b})\n{EXPECTED_LAYOUT}"
            )
    return classes_by_split[first]


def resnet_transforms(train: bool, image_size: int = 224, resize: int = 256):
    """The standard torchvision ResNet-50 transforms.

    Defined in book/sapp_imagenet.md.

    Train: ``RandomResizedCrop(image_size)``, horizontal flip, tensor, ImageNet normalisation.
    Eval: ``Resize(resize)`` (shorter side), ``CenterCrop(image_size)``, tensor, normalisation.
    The paper uses the usual 224 / 256; small runs use e.g. 32 / 36 on fake images.
    """
    from torchvision import transforms as T

    for name, val in (("image_size", image_size), ("resize", resize)):
        if isinstance(val, bool) or int(val) != val or val < 8:
            raise ValueError(f"{name}: expected an integer >= 8 pixels, got {val!r}")
    if resize < image_size:
        raise ValueError(f"resize: {resize} is smaller than image_size {image_size}; the center crop would not fit")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        return T.Compose([T.RandomResizedCrop(int(image_size)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.Resize(int(resize)), T.CenterCrop(int(image_size)), T.ToTensor(), norm])


class SeededImageFolder(ImageFolder):
    """``ImageFolder`` whose random transforms are seeded per sample by ``(seed, epoch, index)``.

    Defined in book/sapp_imagenet.md. :func:`pruninglab.train.train` calls ``set_epoch`` before
    each epoch. Files are matched by extension, case-insensitively (``.JPEG`` and ``.jpg``).
    """

    def __init__(self, root, transform=None, seed: int = 0):
        super().__init__(str(root), transform=transform, is_valid_file=_is_image)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        # fork_rng restores the caller's torch RNG afterwards: loading data never moves the
        # training process's random stream (dropout etc.), with or without workers.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
            return super().__getitem__(index)


def imagefolder_datasets(
    root: str | os.PathLike, image_size: int = 224, resize: int = 256, seed: int = 0
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """``(train, val)`` datasets from ``root/train`` and ``root/val`` with the ResNet-50 transforms.

    Defined in book/sapp_imagenet.md. The layout is checked first (:func:`check_imagefolder`).
    """
    classes = check_imagefolder(root)
    train = SeededImageFolder(Path(root) / "train", transform=resnet_transforms(True, image_size, resize), seed=seed)
    val = SeededImageFolder(Path(root) / "val", transform=resnet_transforms(False, image_size, resize), seed=seed)
    assert train.classes == classes == val.classes
    return train, val


# --------------------------------------------------------------------------- fake folders


def make_imagefolder(
    root: str | os.PathLike,
    classes: int = 3,
    per_class: int = 4,
    *,
    val_per_class: int | None = None,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write real JPEG files in the ImageNet ``ImageFolder`` layout; return ``root``.

    Defined in book/sapp_imagenet.md.

    ``root/train/<wnid>/*.JPEG`` (``per_class`` each) and ``root/val/<wnid>/*.JPEG``
    (``val_per_class`` each, default ``max(1, per_class // 4)``), wnid-like folder names
    ``n00000000, n00000001, ...``. Every third file uses a lower-case ``.jpg`` extension so both
    spellings are exercised. Each class has its own colour and stripe direction under random noise,
    so a network can learn to tell them apart; the images are otherwise meaningless.
    """
    from PIL import Image

    for name, val, low in (("classes", classes, 1), ("per_class", per_class, 1), ("size", size, 8)):
        if isinstance(val, bool) or int(val) != val or val < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {val!r}")
    if val_per_class is None:
        val_per_class = max(1, per_class // 4)
    if isinstance(val_per_class, bool) or int(val_per_class) != val_per_class or val_per_class < 1:
        raise ValueError(f"val_per_class: expected an integer >= 1, got {val_per_class!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root: {root} exists and is not a folder")
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 215, (classes, 3))
    angles = rng.uniform(0, np.pi, classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{c:08d}"
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(int(n)):
                phase = rng.uniform(0, 2 * np.pi)
                stripes = np.sin((np.cos(angles[c]) * xx + np.sin(angles[c]) * yy) * (2 * np.pi / 8) + phase)
                img = colours[c] + 40 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
                ext = ".jpg" if i % 3 == 2 else ".JPEG"
                stem = f"{wnid}_{i}" if split == "train" else f"ILSVRC2012_val_{c * int(n) + i:08d}"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{stem}{ext}", format="JPEG", quality=90)
    return root


def make_imagefolder_main(argv: list[str] | None = None) -> int:
    """``python -m pruninglab make-imagefolder DIR --classes C --per-class N [--val-per-class M] [--size S] [--seed S]``.

    Defined in book/sapp_imagenet.md.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pruninglab make-imagefolder",
        description="Write real JPEG files in the ImageNet ImageFolder layout (DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG).",
    )
    parser.add_argument("dir", help="output folder")
    parser.add_argument("--classes", type=int, default=3, help="number of classes (default 3)")
    parser.add_argument("--per-class", type=int, default=4, help="training images per class (default 4)")
    parser.add_argument("--val-per-class", type=int, default=None, help="validation images per class (default per-class/4, at least 1)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    root = make_imagefolder(args.dir, args.classes, args.per_class, val_per_class=args.val_per_class,
                            size=args.size, seed=args.seed)
    n_val = args.val_per_class if args.val_per_class is not None else max(1, args.per_class // 4)
    print(f"wrote {args.classes * (args.per_class + n_val)} JPEG files ({args.classes} classes, "
          f"{args.per_class} train + {n_val} val each) under {root}/train and {root}/val")
    return 0


__all__ = [
    "EXPECTED_LAYOUT", "IMG_EXTENSIONS", "check_imagefolder", "resnet_transforms", "imagefolder_datasets",
    "SeededImageFolder",
    "make_imagefolder", "make_imagefolder_main",
]
