"""Images as signals for implicit neural representations: folders on disk and bundled small data.

Defined in book/meta_sparse_inr.md.

A *signal* is one image flattened to ``(H*W, C)`` float32 values in ``[0, 1]``, row ``i*W + j`` for
pixel ``(i, j)`` (the order of :func:`pruninglab.inr.siren.coordinate_grid`). A signal dataset
yields ``(signal, signal)`` pairs, because in meta-learning an INR the image is both the support
and the query set; that makes it usable with :func:`pruninglab.train.make_loader` as it is.

Folders (read lazily, one file per item, so CelebA's 162,770 training images never sit in memory):

- **CelebA** as distributed: ``img_align_celeba/*.jpg`` (178x218) plus ``list_eval_partition.txt``
  (``0`` = train, ``1`` = val, ``2`` = test); centre crop to 178x178, no resize (the paper's).
  torchvision's layout (``<root>/celeba/...``) is accepted too.
- **Imagenette** (or any ImageFolder): ``train/<class>/*`` and ``val/<class>/*``; resize the
  shorter side to 200, centre crop 178 (the paper's).
- **Any other folder** of images: sorted file list, the last ``test_fraction`` of it is the test set;
  shorter side resized to the resolution, then centre crop.

Bundled data (no download): :func:`lfw_faces` (scikit-image's 25x25 LFW crops, grey) and
:func:`photo_crops` (crops of the colour photos that ship with scikit-image, scikit-learn and
matplotlib, split into meta-train / meta-test **by source photo**).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "TensorSignals",
    "ImageFileSignals",
    "SignalSplit",
    "load_image",
    "list_images",
    "celeba_split",
    "imagenette_split",
    "folder_split",
    "image_folder_split",
    "lfw_faces",
    "photo_crops",
    "BUNDLED_PHOTOS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _check_resolution(resolution, name: str = "resolution") -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ValueError(f"{name}: expected a positive integer (pixels), got {resolution!r}")
    return int(resolution)


def _check_channels(channels) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


# --------------------------------------------------------------------------- datasets


class TensorSignals(torch.utils.data.Dataset):
    """In-memory signals from a tensor of images ``(M, H, W, C)`` (uint8, or real floats in ``value_range``).

    uint8 images are kept as uint8 and scaled on access. Float
    images must be finite and inside ``value_range`` (default ``(0, 1)``; ``(-1, 1)`` for signed
    signals): 0..255 floats, NaN pixels or complex values are refused with a message.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, *, value_range: tuple[float, float] = (0.0, 1.0)):
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise ValueError(f"images: expected a tensor or array, got {type(images).__name__}")
        lo, hi = _check_value_range(value_range)
        images = torch.as_tensor(images)
        if images.is_complex() or images.dtype == torch.bool:
            raise ValueError(f"images: has dtype {images.dtype}; expected uint8 or real floats in [{lo:g}, {hi:g}]")
        if images.dim() == 3:
            images = images.unsqueeze(-1)
        if images.dim() != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
            raise ValueError(
                f"images: expected a non-empty tensor (count, height, width, channels) with 1 or 3 channels, "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise ValueError(f"images: has dtype {images.dtype}; expected uint8 (0..255) or floats in "
                                 f"[{lo:g}, {hi:g}]")
            images = images.to(torch.float32)
            if not bool(torch.isfinite(images).all()):
                raise ValueError(f"images: contains NaN or Inf pixels ({int((~torch.isfinite(images)).sum())} "
                                 "values); expected finite values")
            vmin, vmax = float(images.min()), float(images.max())
            if vmin < lo - 1e-6 or vmax > hi + 1e-6:
                hint = " (0..255 pixel values? pass uint8, or divide by 255)" if vmax > 1.5 and hi <= 1 else ""
                raise ValueError(f"images: values lie in [{vmin:g}, {vmax:g}]; expected [{lo:g}, {hi:g}]{hint}")
        self.images = images
        self.value_range = (lo, hi)

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as float32 ``(H, W, C)`` in [0, 1]."""
        img = self.images[index]
        return img.to(torch.float32) / 255.0 if img.dtype == torch.uint8 else img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sig = self.image(index).reshape(-1, self.channels)
        return sig, sig

    def stack(self, count: int | None = None) -> torch.Tensor:
        """The first ``count`` signals (all if None) as one tensor ``(count, H*W, C)``."""
        n = _check_count(count, len(self))
        return torch.stack([self[i][0] for i in range(n)])


def _check_value_range(value_range) -> tuple[float, float]:
    ok = isinstance(value_range, (tuple, list)) and len(value_range) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value_range)
    if not ok or not value_range[0] < value_range[1]:
        raise ValueError(f"value_range: expected (low, high) finite numbers with low < high, got {value_range!r}")
    return float(value_range[0]), float(value_range[1])


def _check_count(count, available: int) -> int:
    if count is None:
        return available
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected a positive integer or None, got {count!r}")
    if count > available:
        raise ValueError(f"count: asked for {count} signals but only {available} are available")
    return int(count)


def load_image(path: str | os.PathLike, resolution: int, *, resize: int | None = None, channels: int = 3) -> torch.Tensor:
    """Read one image file: optional resize of the shorter side, centre crop to a square, ``(H, W, C)`` in [0, 1].

    ``resize=None`` crops without resizing (CelebA: 178x218 ->
    178x178). A missing file raises ``FileNotFoundError``; a file that is not a readable image (or
    is truncated, or smaller than the crop) raises ``ValueError`` naming the file.
    """
    from PIL import Image, UnidentifiedImageError
    import torchvision.transforms.functional as TF

    resolution = _check_resolution(resolution)
    channels = _check_channels(channels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image: no file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _HIGH_DEPTH_MODES:
                return _load_high_depth(im, path, resolution, resize, channels)
            im = im.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, ValueError) and str(err).startswith("image: "):
            raise
        raise ValueError(f"image: {path} is not a readable image, or is truncated "
                         f"({err.__class__.__name__}: {err})") from err
    if resize is not None:
        im = TF.resize(im, _check_resolution(resize, "resize"), antialias=True)
    _check_crop(path, im.size[0], im.size[1], resolution)
    im = TF.center_crop(im, [resolution, resolution])
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).to(torch.float32) / 255.0


#: PIL modes of images deeper than 8 bits per channel (16-bit grey PNG/TIFF, 32-bit int, float).
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _check_crop(path: Path, width: int, height: int, resolution: int) -> None:
    if min(width, height) < resolution:
        raise ValueError(
            f"image: {path} is {width}x{height} pixels, smaller than the {resolution}x{resolution} crop "
            "(set a resize, or a smaller resolution)"
        )


def _load_high_depth(im, path: Path, resolution: int, resize: int | None, channels: int) -> torch.Tensor:
    """A 16-bit (or 32-bit int / float) single-channel image at its real depth, scaled to [0, 1].

    ``convert("L")`` would clip 16-bit values at 255 (a saturated, white image). 16-bit values are
    divided by 65535; a 32-bit integer image must hold 16-bit values; a float image must already be
    in [0, 1]. (Pillow reads 16-bit *colour* PNGs as 8-bit RGB, correctly scaled, at 8-bit precision.)
    """
    import torchvision.transforms.functional as TF

    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"image: {path} is a float image with values outside [0, 1] (or NaN); "
                             "expected values in [0, 1]")
    else:
        arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"image: {path} has {im.mode!r} pixels outside 0..65535 "
                             f"({arr.min()}..{arr.max()}); expected an 8- or 16-bit image")
        arr = arr.astype(np.float32) / 65535.0
    t = torch.from_numpy(np.ascontiguousarray(arr))[None]  # 1 x H x W
    if resize is not None:
        t = TF.resize(t, _check_resolution(resize, "resize"), antialias=True).clamp_(0.0, 1.0)
    _check_crop(path, t.shape[2], t.shape[1], resolution)
    t = TF.center_crop(t, [resolution, resolution])
    return t.permute(1, 2, 0).expand(-1, -1, channels).contiguous()


class ImageFileSignals(torch.utils.data.Dataset):
    """Signals read lazily from image files (see :func:`load_image` for the transform and errors).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], resolution: int, *, resize: int | None = None,
                 channels: int = 3):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("paths: is empty; there are no images to read")
        self.resolution = _check_resolution(resolution)
        self.resize = None if resize is None else _check_resolution(resize, "resize")
        self._channels = _check_channels(channels)

    @property
    def height(self) -> int:
        return self.resolution

    @property
    def width(self) -> int:
        return self.resolution

    @property
    def channels(self) -> int:
        return self._channels

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], self.resolution, resize=self.resize, channels=self._channels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sig = self.image(index).reshape(-1, self._channels)
        return sig, sig

    def stack(self, count: int | None = None) -> torch.Tensor:
        """The first ``count`` signals (all if None) as one tensor ``(count, H*W, C)``."""
        n = _check_count(count, len(self))
        return torch.stack([self[i][0] for i in range(n)])


@dataclass
class SignalSplit:
    """Meta-train and meta-test signals of one dataset.
    """

    name: str
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset

    @property
    def height(self) -> int:
        return self.train.height  # type: ignore[attr-defined]

    @property
    def width(self) -> int:
        return self.train.width  # type: ignore[attr-defined]

    @property
    def channels(self) -> int:
        return self.train.channels  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- folders


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Sorted image files in ``folder`` (by extension); errors if it is missing or holds none.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"folder: {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a directory")
    walker = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in walker if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"folder: {folder} contains no image files (looked for {', '.join(IMAGE_EXTENSIONS)}"
            + (", in subfolders too" if recursive else "") + ")"
        )
    return files


def _celeba_root(root: Path) -> Path | None:
    for cand in (root, root / "celeba"):
        if (cand / "img_align_celeba").is_dir() or (cand / "list_eval_partition.txt").is_file():
            return cand
    return None


def celeba_split(root: str | os.PathLike, resolution: int = 178, *, resize: int | None = None,
                 test_split: str = "test", channels: int = 3) -> SignalSplit:
    """CelebA from disk: train = partition 0, test = partition 2 (``test_split="val"``: 1), centre crop.

    ``root`` holds ``img_align_celeba/`` and
    ``list_eval_partition.txt`` (or a ``celeba/`` folder that does). Test images come in file order.
    The paper crops 178x178 without resizing (``resize=None``); for smaller signals pass
    ``resize=resolution`` (shorter side resized first).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"root: {root} does not exist")
    base = _celeba_root(root) or root
    images = base / "img_align_celeba"
    part = base / "list_eval_partition.txt"
    if not images.is_dir():
        raise FileNotFoundError(f"root: no img_align_celeba/ folder in {base}")
    if not part.is_file():
        raise FileNotFoundError(f"root: no list_eval_partition.txt in {base}")
    codes = {"train": "0", "val": "1", "test": "2"}
    if test_split not in ("val", "test"):
        raise ValueError(f"test_split: expected 'val' or 'test', got {test_split!r}")
    splits: dict[str, list[Path]] = {"0": [], "1": [], "2": []}
    with part.open() as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in splits:
                raise ValueError(f"{part}: line {lineno} is {line.strip()!r}; expected '<file> <0|1|2>'")
            splits[fields[1]].append(images / fields[0])
    train, test = splits[codes["train"]], splits[codes[test_split]]
    if not train or not test:
        raise ValueError(f"{part}: lists {len(train)} train and {len(test)} {test_split} images; need both")
    return SignalSplit(
        "celeba",
        ImageFileSignals(sorted(train), resolution, resize=resize, channels=channels),
        ImageFileSignals(sorted(test), resolution, resize=resize, channels=channels),
    )


def _image_folder(split_dir: Path) -> list[Path]:
    """ImageFolder order: classes (subfolders) sorted, files sorted within a class."""
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"folder: {split_dir} has no class subfolders (expected {split_dir}/<class>/<image>)")
    files: list[Path] = []
    for cls in classes:
        files += sorted(p for p in cls.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder: {split_dir} contains no image files in its class subfolders")
    return files


def imagenette_split(root: str | os.PathLike, resolution: int = 178, *, resize: int | None = 200,
                     channels: int = 3) -> SignalSplit:
    """An ImageFolder dataset (Imagenette): ``train/<class>/*`` and ``val/<class>/*``; resize, centre crop.

    Test images come in ImageFolder order.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"root: {root} does not exist")
    if (root / "imagenette").is_dir() and not (root / "train").is_dir():
        root = root / "imagenette"
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"root: no {sub}/ folder in {root} (expected train/<class>/* and val/<class>/*)")
    return SignalSplit(
        "imagenette",
        ImageFileSignals(_image_folder(root / "train"), resolution, resize=resize, channels=channels),
        ImageFileSignals(_image_folder(root / "val"), resolution, resize=resize, channels=channels),
    )


def folder_split(root: str | os.PathLike, resolution: int, *, test_fraction: float = 0.1, channels: int = 3) -> SignalSplit:
    """Any folder of images: sorted files, the last ``test_fraction`` (at least one) is the test set.

    Each image is resized (shorter side) to the resolution
    and centre cropped.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    files = list_images(root)
    if len(files) < 2:
        raise ValueError(f"folder: {root} holds {len(files)} image; need at least 2 (meta-train and meta-test)")
    n_test = min(len(files) - 1, max(1, round(test_fraction * len(files))))
    res = _check_resolution(resolution)
    return SignalSplit(
        Path(root).name or "folder",
        ImageFileSignals(files[:-n_test], res, resize=res, channels=channels),
        ImageFileSignals(files[-n_test:], res, resize=res, channels=channels),
    )


def image_folder_split(root: str | os.PathLike, resolution: int | None = None, *, channels: int = 3) -> SignalSplit:
    """Recognise CelebA, an ImageFolder (Imagenette) or a plain folder, and split it.

    ``resolution=None`` means the paper's 178. CelebA is
    centre cropped at 178 (other resolutions: resized first); an ImageFolder's shorter side is
    resized to ``round(200/178 * resolution)`` before the crop, as the paper's 200 -> 178.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data: {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"data: {root} is not a directory")
    res = 178 if resolution is None else _check_resolution(resolution)
    if _celeba_root(root) is not None:
        return celeba_split(root, res, resize=None if res == 178 else res, channels=channels)
    base = root / "imagenette" if (root / "imagenette").is_dir() else root
    if (base / "train").is_dir() and (base / "val").is_dir():
        return imagenette_split(base, res, resize=round(200 * res / 178), channels=channels)
    return folder_split(root, res, channels=channels)


# --------------------------------------------------------------------------- bundled data


def lfw_faces(num_train: int = 80, num_test: int = 20) -> SignalSplit:
    """scikit-image's LFW subset: the 100 face crops (25x25, grey), first ``num_train`` to meta-train, next ``num_test`` to test.

    Defined in book/meta_sparse_inr.md. ``skimage.data.lfw_subset()`` holds 100 faces followed by
    100 non-faces; only the faces are used. Nothing is downloaded.
    """
    from skimage.data import lfw_subset

    for name, val in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    if num_train + num_test > 100:
        raise ValueError(f"num_train + num_test: the LFW subset has 100 faces, asked for {num_train + num_test}")
    faces = torch.from_numpy(np.asarray(lfw_subset()[:100], dtype=np.float32))
    return SignalSplit("faces", TensorSignals(faces[:num_train]), TensorSignals(faces[num_train:num_train + num_test]))


#: The bundled colour photos: (name, loader). The last two are the meta-test photos of :func:`photo_crops`.
BUNDLED_PHOTOS = (
    "astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "china", "grace_hopper", "coffee", "flower",
)


def _bundled_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    import skimage.data

    return getattr(skimage.data, name)()


def photo_crops(size: int = 32, *, crops_per_photo: int = 40, shorter_side: int = 64, num_test_photos: int = 2,
                seed: int = 0) -> SignalSplit:
    """Random ``size`` x ``size`` RGB crops of the bundled colour photos; train/test split by source photo.

    Each photo is first resized so its shorter side is
    ``shorter_side`` (so a crop shows a part of a scene, as a 178-pixel crop of an Imagenette image
    does), then ``crops_per_photo`` crops are drawn. The last ``num_test_photos`` photos of
    :data:`BUNDLED_PHOTOS` give the meta-test signals, so no test crop overlaps a training photo.
    """
    from PIL import Image
    import torchvision.transforms.functional as TF

    size = _check_resolution(size, "size")
    shorter_side = _check_resolution(shorter_side, "shorter_side")
    if shorter_side < size:
        raise ValueError(f"shorter_side: must be at least size ({size}), got {shorter_side}")
    if isinstance(crops_per_photo, bool) or not isinstance(crops_per_photo, (int, np.integer)) or crops_per_photo < 1:
        raise ValueError(f"crops_per_photo: expected a positive integer, got {crops_per_photo!r}")
    if not isinstance(num_test_photos, (int, np.integer)) or not 1 <= num_test_photos < len(BUNDLED_PHOTOS):
        raise ValueError(f"num_test_photos: expected an integer in 1..{len(BUNDLED_PHOTOS) - 1}, got {num_test_photos!r}")
    rng = np.random.default_rng(seed)
    per_photo = []
    for name in BUNDLED_PHOTOS:
        im = TF.resize(Image.fromarray(_bundled_photo(name)).convert("RGB"), shorter_side, antialias=True)
        arr = np.asarray(im, dtype=np.uint8)
        h, w = arr.shape[:2]
        ys = rng.integers(0, h - size + 1, crops_per_photo)
        xs = rng.integers(0, w - size + 1, crops_per_photo)
        per_photo.append(np.stack([arr[y:y + size, x:x + size] for y, x in zip(ys, xs)]))
    split = len(BUNDLED_PHOTOS) - num_test_photos
    train = torch.from_numpy(np.concatenate(per_photo[:split]))
    # Interleave the test photos, so the first few test signals already come from every test photo.
    test = torch.from_numpy(np.stack(per_photo[split:], axis=1).reshape(-1, size, size, 3))
    return SignalSplit("photos", TensorSignals(train), TensorSignals(test))
