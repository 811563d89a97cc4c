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
import math
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


def _pil_rgb_loader(path: str):
    """PIL RGB image; a corrupt or truncated file raises ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"image: cannot decode {path} ({e}); the file is corrupt, truncated or not an image") from None


class SeededImageFolder(ImageFolder):
    """``ImageFolder`` whose random transforms are seeded per sample by ``(seed, epoch, index)``.

    :func:`pruninglab.train.train` calls ``set_epoch`` before
    each epoch. Files are matched by extension, case-insensitively (``.JPEG`` and ``.jpg``).
    """

    def __init__(self, root, transform=None, seed: int = 0):
        super().__init__(str(root), transform=transform, is_valid_file=_is_image, loader=_pil_rgb_loader)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int):
        # fork_rng restores the caller's torch RNG afterwards: loading data never moves the
        # training process's random stream (dropout etc.), with or without workers.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            return super().__getitem__(index)


def imagefolder_datasets(
    root: str | os.PathLike, image_size: int = 224, resize: int = 256, seed: int = 0
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """``(train, val)`` datasets from ``root/train`` and ``root/val`` with the ResNet-50 transforms.

    The layout is checked first (:func:`check_imagefolder`).
    """
    classes = check_imagefolder(root)
    train = SeededImageFolder(Path(root) / "train", transform=resnet_transforms(True, image_size, resize), seed=seed)
    val = SeededImageFolder(Path(root) / "val", transform=resnet_transforms(False, image_size, resize), seed=seed)
    assert train.classes == classes == val.classes
    return train, val


# --------------------------------------------------------------------------- the uint8 pipeline
# Workers decode to uint8 and crop/resize on uint8; nothing becomes float on the CPU. The device
# step (:func:`normalize_on_device`) flips, converts and normalises. Every random number of a
# sample comes from a generator seeded by (seed, epoch, index), and the epoch travels with the
# index through the sampler, so persistent workers (which keep their own copy of the dataset) still
# see the right epoch, and a resumed run gets exactly the crops and flips of an uninterrupted one.

#: torchvision.io decodes these in C (libjpeg-turbo, libpng, libwebp); other formats go through PIL.
_TORCHVISION_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF", b"GIF8")


def _quiet_torchvision_io() -> None:
    # torchvision 0.29 warns on every decode call that its decoders move to TorchCodec; they still
    # work, and one warning per image would flood the logs.
    import warnings

    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The per-sample seed of :class:`SeededImageFolder` and :class:`Uint8ImageFolder`.

    Depends only on ``(seed, epoch, index)``.
    """
    return ((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index)) % (2**63)


def decode_image_uint8(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file to a uint8 ``[3, H, W]`` RGB tensor; a bad file raises ``ValueError`` naming it.

    JPEG/PNG/WebP/GIF through ``torchvision.io`` (libjpeg-turbo),
    anything else through PIL; grey, palette and CMYK images become RGB; 16-bit PNGs are scaled to 8 bits
    (the network's input is 8-bit).
    """
    from torchvision.io import ImageReadMode, decode_image

    _quiet_torchvision_io()
    path = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise FileNotFoundError(f"image: cannot read {path}: {e.strerror or e}") from None
    if not raw:
        raise ValueError(f"image: {path} is an empty file")
    if raw.startswith(_TORCHVISION_MAGIC):
        try:
            img = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            reason = str(e).rsplit(",", 1)[-1].strip()
            raise ValueError(f"image: cannot decode {path} ({reason}); the file is corrupt or truncated") from None
        if img.dtype != torch.uint8:  # 16-bit PNG
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        return img
    from PIL import Image, UnidentifiedImageError

    try:
        import io

        with Image.open(io.BytesIO(raw)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"image: cannot decode {path} ({e}); the file is corrupt, truncated or not an image") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def random_resized_crop_box(
    height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop with area share in ``scale`` and aspect ratio in ``ratio``.

    The usual Inception-style rule: up to 10 tries of an area share
    drawn uniformly and an aspect ratio drawn log-uniformly; if none fits, the largest centred crop
    whose aspect ratio is clamped into ``ratio``. All numbers are drawn from ``generator``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u = torch.rand(10, 4, generator=generator, dtype=torch.float64).tolist()
    for share, r, ut, ul in u:
        target = area * (scale[0] + (scale[1] - scale[0]) * share)
        aspect = math.exp(log_lo + (log_hi - log_lo) * r)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(ut * (height - h + 1)), height - h)
            left = min(int(ul * (width - w + 1)), width - w)
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a uint8 ``[3, H, W]`` image to ``size``; stays uint8, channels-last memory.

    Uses torch's uint8 resampling kernel (no float copy of the image).
    """
    x = image.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return x[0]


class Uint8ImageFolder(torch.utils.data.Dataset):
    """An ImageFolder that yields uint8 crops, seeded per sample, for the device-side normalisation.

    ``train=True``: random-resized crop to ``image_size`` (area 8-100 %, aspect 3/4-4/3) and a random
    horizontal-flip bit; an item is ``(image, flip, label)`` with ``image`` uint8 ``[3, S, S]``
    (channels-last memory). The flip is *applied* on the device by :func:`normalize_on_device`.
    ``train=False``: shorter side resized to ``resize``, centre crop ``image_size``; ``flip`` is False.
    The key may be an index or ``(epoch, index)`` (what :class:`EpochSampler` yields); random numbers
    come from a generator seeded by :func:`sample_seed`, never from the global RNG.
    """

    def __init__(self, root, *, train: bool, image_size: int = 224, resize: int = 256, seed: int = 0):
        from torchvision.datasets.folder import find_classes, make_dataset

        for name, val in (("image_size", image_size), ("resize", resize)):
            if isinstance(val, bool) or int(val) != val or val < 8:
                raise ValueError(f"{name}: expected an integer >= 8 pixels, got {val!r}")
        if resize < image_size:
            raise ValueError(f"resize: {resize} is smaller than image_size {image_size}; the center crop would not fit")
        self.root = str(root)
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples = make_dataset(self.root, self.class_to_idx, is_valid_file=_is_image)
        self.targets = [t for _, t in self.samples]
        self.train, self.image_size, self.resize = bool(train), int(image_size), int(resize)
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer keys (keys from :class:`EpochSampler` carry their own)."""
        self.epoch = int(epoch)

    def __getitem__(self, key):
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (self.epoch, int(key))
        path, label = self.samples[index]
        img = decode_image_uint8(path)
        s = self.image_size
        if self.train:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], g)
            out = resize_uint8(img[:, top:top + h, left:left + w], (s, s))
            flip = bool(torch.rand((), generator=g) < 0.5)
        else:
            h, w = img.shape[1:]
            short = min(h, w)
            # Shorter side -> resize, the longer one truncated as torchvision's Resize(int) does.
            nh, nw = max(s, int(self.resize * h / short)), max(s, int(self.resize * w / short))
            out = resize_uint8(img, (nh, nw))
            top, left = (nh - s) // 2, (nw - s) // 2
            out = out[:, top:top + s, left:left + s]
            flip = False
        return out, flip, label


def collate_uint8(items) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``[(image, flip, label), ...]`` -> ``((images uint8 [B, 3, S, S] channels-last, flips bool [B]), labels)``.

    One copy into a ``[B, S, S, 3]`` buffer (pinned by the loader
    when asked), viewed as NCHW with channels-last strides.
    """
    images = torch.stack([x.permute(1, 2, 0) for x, _, _ in items]).permute(0, 3, 1, 2)
    flips = torch.tensor([f for _, f, _ in items], dtype=torch.bool)
    labels = torch.tensor([y for _, _, y in items], dtype=torch.long)
    return (images, flips), labels


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler with ``set_epoch`` and yields ``(epoch, index)`` keys.

    With persistent DataLoader workers the dataset copy in each
    worker never sees ``set_epoch``; the epoch travels with the key instead.
    """

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.epoch
        return ((e, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def imagenet_loader(
    dataset: Uint8ImageFolder,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    num_workers: int = 8,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    prefetch_factor: int = 4,
    rank: int | None = None,
    world_size: int | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader for :class:`Uint8ImageFolder`: order from ``(seed, epoch)``, split over ranks, uint8 batches.

    Training (``dataset.train``): shuffled, last incomplete batch dropped; evaluation: file order, each
    rank takes every ``world``-th image, nothing dropped or padded. ``pin_memory`` defaults to whether
    CUDA is available; ``persistent_workers`` and ``prefetch_factor`` apply when ``num_workers > 0``.
    Batches are ``((images, flips), labels)``; pass them through :func:`normalize_on_device` (or
    :func:`attach_input_normalization`) on the device.
    """
    from .._checks import nonnegative_int, positive_int
    from ..distributed import dist_info

    positive_int(batch_size, "batch_size")
    nonnegative_int(num_workers, "num_workers")
    positive_int(prefetch_factor, "prefetch_factor")
    if len(dataset) == 0:
        raise ValueError("dataset: is empty; there is nothing to load")
    r0, _, w0 = dist_info()
    rank = r0 if rank is None else int(rank)
    world = w0 if world_size is None else int(world_size)
    train = dataset.train if isinstance(dataset, Uint8ImageFolder) else True
    shuffle = train if shuffle is None else bool(shuffle)
    drop_last = train if drop_last is None else bool(drop_last)
    if shuffle or drop_last:
        base = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle,
                                                   seed=int(seed), drop_last=drop_last)
    else:
        base = range(rank, len(dataset), world)
    if drop_last and len(base) < batch_size:
        raise ValueError(f"batch_size: {batch_size} is larger than the {len(base)} images each of the "
                         f"{world} process(es) gets")
    workers = int(num_workers) > 0
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), sampler=EpochSampler(base), drop_last=drop_last,
        num_workers=int(num_workers), collate_fn=collate_uint8,
        pin_memory=torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
        persistent_workers=bool(persistent_workers) and workers,
        prefetch_factor=int(prefetch_factor) if workers else None,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def uint8_imagefolder_datasets(
    root: str | os.PathLike, image_size: int = 224, resize: int = 256, seed: int = 0
) -> tuple[Uint8ImageFolder, Uint8ImageFolder]:
    """``(train, val)`` :class:`Uint8ImageFolder` datasets from ``root/train`` and ``root/val``.

    The layout is checked first (:func:`check_imagefolder`).
    """
    classes = check_imagefolder(root)
    train = Uint8ImageFolder(Path(root) / "train", train=True, image_size=image_size, resize=resize, seed=seed)
    val = Uint8ImageFolder(Path(root) / "val", train=False, image_size=image_size, resize=resize, seed=seed)
    assert train.classes == classes == val.classes
    return train, val


def normalize_on_device(
    images: torch.Tensor,
    flips: torch.Tensor | None = None,
    *,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` on the device -> flipped where ``flips``, ``dtype``, ImageNet-normalised.

    ``(x / 255 - mean) / std`` as one multiply-add per element;
    ``channels_last=True`` returns channels-last memory (what cuDNN's fastest convolutions want).
    Runs on whatever device ``images`` is on, with no host synchronisation.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(f"images: expected a uint8 tensor [B, {len(mean)}, H, W], got {images.dtype} "
                         f"{tuple(images.shape)}")
    x = images
    if flips is not None:
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device, dtype=dtype).view(1, -1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=x.device, dtype=dtype).view(1, -1, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.addcmul(shift, x.to(dtype), scale).contiguous(memory_format=memory_format)


def attach_input_normalization(model: torch.nn.Module, *, channels_last: bool = True):
    """Make ``model`` accept the uint8 batches of :func:`imagenet_loader`; return the hook handle.

    A forward pre-hook (so the state_dict keys stay those of the
    model) turns an input ``(images uint8, flips)`` or a uint8 tensor into normalised float with
    :func:`normalize_on_device`; float inputs pass through unchanged (only made channels-last when
    asked). The training loop then needs no change: it moves the batch to the device and calls the model.
    """

    def hook(module, args):
        x = args[0]
        if isinstance(x, (tuple, list)) and len(x) == 2 and torch.is_tensor(x[0]) and x[0].dtype == torch.uint8:
            x = normalize_on_device(x[0], x[1], channels_last=channels_last)
        elif torch.is_tensor(x) and x.dtype == torch.uint8:
            x = normalize_on_device(x, None, channels_last=channels_last)
        elif torch.is_tensor(x) and channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x,) + tuple(args[1:])

    return model.register_forward_pre_hook(hook)


def decode_jpegs_on_device(encoded: list[torch.Tensor], device: str | torch.device = "cuda") -> list[torch.Tensor]:
    """Decode a list of encoded JPEGs (uint8 byte tensors) on ``device`` in one batched call (nvJPEG on CUDA).

    Optional: workers then only read bytes and the crop happens on the
    device. ``torchvision.io.decode_jpeg`` supports ``device="cuda"`` in torchvision >= 0.19; on "cpu" the
    same call decodes with libjpeg-turbo (what the tests exercise here).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_torchvision_io()
    return decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device)


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
    "SeededImageFolder", "sample_seed", "decode_image_uint8", "random_resized_crop_box", "resize_uint8",
    "Uint8ImageFolder", "collate_uint8", "EpochSampler", "imagenet_loader", "uint8_imagefolder_datasets",
    "normalize_on_device", "attach_input_normalization", "decode_jpegs_on_device",
    "make_imagefolder", "make_imagefolder_main",
]
