"""TinyImageNet (200 classes, 64x64 RGB) from a local folder in its distributed layout (never downloads).

Defined in book/limit_experiments.md; used by the limit experiment's TinyImageNet presets.

The layout of the official archive ``tiny-imagenet-200.zip``, unpacked::

    ROOT/wnids.txt                                one WordNet id per line (200 of them)
    ROOT/train/<wnid>/images/<wnid>_<i>.JPEG      500 training images per class
    ROOT/val/images/val_<i>.JPEG                  10,000 validation images, not sorted by class
    ROOT/val/val_annotations.txt                  "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per line

(``ROOT/tiny-imagenet-200/...`` is accepted too; ``words.txt``, ``test/`` and the per-class
``<wnid>_boxes.txt`` files are not needed.) The class index of a wnid is its position in the sorted
list of ``wnids.txt``, as in an ImageFolder. Every image must be a readable 64x64 image (a few
TinyImageNet images are greyscale JPEGs; they are converted to RGB). The validation set is the
test set of the usual protocol (the official test labels are not public).

Images are read into memory as uint8 ``N x 3 x 64 x 64`` (1.2 GB for the 100,000 training images), so
:class:`pruninglab.data.cifar.TensorBatches` batches, normalises and augments them on the device,
as for CIFAR. :func:`write_tinyimagenet` writes a small folder of real JPEGs in exactly this layout
for tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TINYIMAGENET_SIZE",
    "TINYIMAGENET_STATS",
    "TINYIMAGENET_LAYOUT",
    "TinyImageNetSplit",
    "tinyimagenet_folder",
    "tinyimagenet_wnids",
    "read_tinyimagenet_split",
    "tinyimagenet_split",
    "write_tinyimagenet",
]

TINYIMAGENET_SIZE = 64
#: Per-channel mean and standard deviation of the training images, on the [0, 1] scale (the values
#: commonly used with TinyImageNet).
TINYIMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))

TINYIMAGENET_LAYOUT = """expected the layout of tiny-imagenet-200.zip:
  ROOT/wnids.txt                              one wnid per line
  ROOT/train/<wnid>/images/<wnid>_<i>.JPEG    training images, 64x64
  ROOT/val/images/val_<i>.JPEG                validation images, 64x64
  ROOT/val/val_annotations.txt                <file> TAB <wnid> [TAB box...] per line
(ROOT may also contain tiny-imagenet-200/ with that layout). Nothing is downloaded."""


def tinyimagenet_folder(root: str | os.PathLike | None) -> Path:
    """The dataset folder (the one holding ``wnids.txt``); ``root=None`` reads ``$PRUNINGLAB_DATA``.

    ; used by the limit experiment's TinyImageNet presets. Raises ``FileNotFoundError`` naming what is
    missing, followed by :data:`TINYIMAGENET_LAYOUT`.
    """
    if root is None:
        root = os.environ.get("PRUNINGLAB_DATA")
        if not root:
            raise FileNotFoundError(
                f"data: no dataset folder given for TinyImageNet (pass --data DIR or set PRUNINGLAB_DATA)\n"
                f"{TINYIMAGENET_LAYOUT}"
            )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data: {root} is not a folder\n{TINYIMAGENET_LAYOUT}")
    for folder in (root, root / "tiny-imagenet-200"):
        if (folder / "wnids.txt").is_file():
            break
    else:
        raise FileNotFoundError(f"data: no wnids.txt in {root}\n{TINYIMAGENET_LAYOUT}")
    for needed in ("train", "val/images"):
        if not (folder / needed).is_dir():
            raise FileNotFoundError(f"data: no {needed}/ folder in {folder}\n{TINYIMAGENET_LAYOUT}")
    if not (folder / "val" / "val_annotations.txt").is_file():
        raise FileNotFoundError(f"data: no val/val_annotations.txt in {folder}\n{TINYIMAGENET_LAYOUT}")
    return folder


def tinyimagenet_wnids(root: str | os.PathLike | None) -> list[str]:
    """The sorted class ids of ``wnids.txt`` (class index = position in this list).

    ; used by the limit experiment's TinyImageNet presets.
    """
    path = tinyimagenet_folder(root) / "wnids.txt"
    wnids = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    wnids = [w for w in wnids if w]
    if not wnids:
        raise ValueError(f"data: {path} lists no class ids\n{TINYIMAGENET_LAYOUT}")
    bad = [w for w in wnids if any(c in w for c in "/\\\t ") or w in (".", "..")]
    if bad:
        raise ValueError(f"data: {path} has malformed class ids {bad[:3]}; expected one wnid per line")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"data: {path} lists a class id twice")
    return sorted(wnids)


def _read_image(path: Path) -> np.ndarray:
    """One 64x64 image as uint8 ``3 x 64 x 64``; ValueError naming the file if unreadable or the wrong size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ValueError(
            f"data: {path} is not a readable image, or is truncated ({err.__class__.__name__}: {err})"
        ) from err
    if size != (TINYIMAGENET_SIZE, TINYIMAGENET_SIZE):
        raise ValueError(f"data: {path} is {size[0]}x{size[1]} pixels; TinyImageNet images are 64x64")
    return arr.transpose(2, 0, 1)


def _check_limit(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    return int(value)


def _train_files(folder: Path, wnids: list[str], per_class: int | None) -> list[tuple[Path, int]]:
    items = []
    for label, wnid in enumerate(wnids):
        d = folder / "train" / wnid / "images"
        if not d.is_dir():
            raise FileNotFoundError(f"data: no folder {d} for class {wnid} of wnids.txt\n{TINYIMAGENET_LAYOUT}")
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        if not files:
            raise ValueError(f"data: {d} holds no images for class {wnid}")
        items += [(p, label) for p in files[:per_class]]
    return items


def _val_files(folder: Path, wnids: list[str], per_class: int | None) -> list[tuple[Path, int]]:
    index = {w: i for i, w in enumerate(wnids)}
    ann = folder / "val" / "val_annotations.txt"
    items, counts = [], {}
    with ann.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2 or not fields[0] or "/" in fields[0] or "\\" in fields[0]:
                raise ValueError(f"data: {ann}, line {lineno}: is {line.strip()!r}; expected "
                                 "'<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>'")
            name, wnid = fields[0], fields[1]
            if wnid not in index:
                raise ValueError(f"data: {ann}, line {lineno}: class {wnid!r} is not in wnids.txt")
            path = folder / "val" / "images" / name
            if not path.is_file():
                raise FileNotFoundError(f"data: {ann}, line {lineno}: names {name}, but {path} does not exist")
            label = index[wnid]
            if per_class is not None and counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            items.append((path, label))
    if not items:
        raise ValueError(f"data: {ann} lists no validation images")
    return items


def read_tinyimagenet_split(
    root: str | os.PathLike | None, train: bool = True, *, per_class: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as ``(images, labels)``: uint8 ``N x 3 x 64 x 64`` and int64 ``N``.

    ; used by the limit experiment's TinyImageNet presets. ``train=False`` reads the validation set
    (in the order of ``val_annotations.txt``). ``per_class`` reads at most that many images of each
    class (training: the first in sorted file order), for small runs.
    """
    per_class = _check_limit(per_class, "per_class")
    folder = tinyimagenet_folder(root)
    wnids = tinyimagenet_wnids(folder)
    items = _train_files(folder, wnids, per_class) if train else _val_files(folder, wnids, per_class)
    x = torch.from_numpy(np.stack([_read_image(p) for p, _ in items]))
    y = torch.tensor([label for _, label in items], dtype=torch.int64)
    return x, y


@dataclass
class TinyImageNetSplit:
    """Train and validation images (uint8) and labels of TinyImageNet, plus the normalisation statistics.

    ; used by the limit experiment's TinyImageNet presets. Same fields as
    :class:`pruninglab.data.cifar.CifarSplit`, so the same batching code serves both.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    wnids: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.wnids)


def tinyimagenet_split(
    root: str | os.PathLike | None,
    *,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> TinyImageNetSplit:
    """TinyImageNet's training and validation splits from ``root`` (optionally the first images of each class).

    Defined in book/limit_experiments.md; used by the limit experiment's TinyImageNet presets. The validation images are the test set.
    """
    folder = tinyimagenet_folder(root)
    x_tr, y_tr = read_tinyimagenet_split(folder, True, per_class=train_per_class)
    x_te, y_te = read_tinyimagenet_split(folder, False, per_class=test_per_class)
    mean, std = TINYIMAGENET_STATS
    return TinyImageNetSplit("tinyimagenet", x_tr, y_tr, x_te, y_te, mean, std, tinyimagenet_wnids(folder))


def write_tinyimagenet(
    root: str | os.PathLike,
    *,
    num_classes: int = 4,
    train_per_class: int = 5,
    val_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write a small folder of real 64x64 JPEGs in exactly the TinyImageNet layout; return ``root``.

    Defined in book/limit_experiments.md; used by the limit experiment's TinyImageNet presets (tests and offline demos). Class ids are
    made-up wnids ``n90000000``, ``n90000001``, ...; each image is a class-coloured blob on noise, so a
    network can learn them; validation annotations carry a dummy bounding box, as the real file does.
    """
    from PIL import Image

    for name, val in (("num_classes", num_classes), ("train_per_class", train_per_class),
                      ("val_per_class", val_per_class)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = [f"n9{c:07d}" for c in range(num_classes)]
    palette = rng.integers(0, 256, size=(num_classes, 3))
    yy, xx = np.mgrid[0:TINYIMAGENET_SIZE, 0:TINYIMAGENET_SIZE]

    def image(label: int) -> Image.Image:
        cy, cx = rng.integers(16, 48, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 200.0)
        img = palette[label][None, None, :] * blob[..., None] + rng.normal(0, 20, size=(64, 64, 3)) + 40
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")

    (root / "val" / "images").mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tsynthetic class {c}\n" for c, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        d = root / "train" / wnid / "images"
        d.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            image(c).save(d / name, format="JPEG", quality=95)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    lines, k = [], 0
    for i in range(val_per_class):
        for c, wnid in enumerate(wnids):
            name = f"val_{k}.JPEG"
            image(c).save(root / "val" / "images" / name, format="JPEG", quality=95)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
            k += 1
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root
