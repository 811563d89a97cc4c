"""CIFAR-10 and CIFAR-100 from a local folder in torchvision's on-disk format (never downloads).

The format is the "python version" of the datasets, the one ``torchvision.datasets.CIFAR10`` /
``CIFAR100`` download and read::

    ROOT/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    ROOT/cifar-100-python/train, test, meta

Each batch file is a pickled dict with ``data`` (uint8, ``N x 3072``: the 1024 red, then green, then
blue values of each 32x32 image, row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` /
``coarse_labels`` (CIFAR-100). We read the files ourselves rather than through torchvision,
because torchvision's ``download=False`` path also checks each file's MD5 against the official
archive, which rejects the small files that :func:`write_cifar` generates for tests; the layout and
contents are the same (tests check our reader against torchvision's on such a folder).

Images stay uint8 in memory (150 MB for the 50,000 CIFAR training images) and batches are
normalised, and augmented (random crop with 4 pixels of zero padding + horizontal flip, the
paper's augmentation), on the device by :class:`TensorBatches`.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_TRAIN_FILES = {"cifar10": [f"data_batch_{i}" for i in range(1, 6)], "cifar100": ["train"]}
CIFAR_TEST_FILES = {"cifar10": ["test_batch"], "cifar100": ["test"]}
CIFAR_META_FILES = {"cifar10": "batches.meta", "cifar100": "meta"}
CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
#: Per-channel mean and standard deviation of the training images (on the [0, 1] scale).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _check_name(name: str) -> str:
    key = str(name).lower().replace("-", "")
    if key not in CIFAR_FOLDERS:
        raise ValueError(f"name: expected 'cifar10' or 'cifar100', got {name!r}")
    return key


def expected_layout(name: str) -> str:
    """The folder layout :func:`cifar_folder` expects, as text (for error messages and docs).
    """
    key = _check_name(name)
    files = CIFAR_TRAIN_FILES[key] + CIFAR_TEST_FILES[key] + [CIFAR_META_FILES[key]]
    return f"ROOT/{CIFAR_FOLDERS[key]}/{{{', '.join(files)}}}"


def cifar_folder(root: str | os.PathLike | None, name: str = "cifar10") -> Path:
    """The dataset folder inside ``root`` (``root`` may also be that folder itself); clear error if missing.

    ``root=None`` reads ``$PRUNINGLAB_DATA``.
    """
    key = _check_name(name)
    if root is None:
        root = os.environ.get("PRUNINGLAB_DATA")
        if not root:
            raise FileNotFoundError(
                f"data: no dataset folder given for {key} (pass --data DIR or set PRUNINGLAB_DATA); "
                f"expected the torchvision layout {expected_layout(key)}. Nothing is downloaded: fetch it once with "
                f"torchvision.datasets.{'CIFAR10' if key == 'cifar10' else 'CIFAR100'}(ROOT, download=True)."
            )
    root = Path(root).expanduser()
    candidates = [root / CIFAR_FOLDERS[key], root]
    needed = CIFAR_TRAIN_FILES[key] + CIFAR_TEST_FILES[key]
    for folder in candidates:
        if folder.is_dir() and all((folder / f).is_file() for f in needed):
            return folder
    found = sorted(p.name for p in root.iterdir())[:12] if root.is_dir() else None
    where = f"{root} contains {found}" if found is not None else f"{root} does not exist"
    raise FileNotFoundError(
        f"data: no {key} dataset at {root} ({where}); expected the torchvision layout {expected_layout(key)} "
        f"(ROOT = the folder you pass). Nothing is downloaded: fetch it once with "
        f"torchvision.datasets.{'CIFAR10' if key == 'cifar10' else 'CIFAR100'}(ROOT, download=True)."
    )


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only what a CIFAR batch holds: numpy arrays and scalars, dicts, lists,
    strings, bytes and numbers.

    Unpickling calls whatever the file names, so a crafted "batch" could run any code; this one
    refuses every global outside a short allow-list (numpy's array reconstruction, ``numpy.dtype``
    and ``_codecs.encode``, which Python 2 pickles of byte strings use, for latin-1 only).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 moved it (same function)
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(
            f"data: {self.path} is not a plain CIFAR batch: it asks to load {module}.{name}, which a CIFAR file "
            "never contains; refusing to unpickle it (a crafted pickle can run code)"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"data: {self.path} uses persistent ids, which a CIFAR file never contains")


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode: only latin-1 strings are admitted, got encoding {encoding!r}")
    return obj.encode(encoding, errors)


def _load_pickle(path: Path) -> dict:
    """Read one CIFAR batch file with the restricted unpickler; ValueError naming the file if it is not one."""
    try:
        with path.open("rb") as fh:
            # The official files are Python 2 pickles; latin1 keeps their byte strings intact (as torchvision does).
            entry = _CifarUnpickler(fh, path).load()
    except pickle.UnpicklingError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith("data: ") else f"data: {path} is not a readable CIFAR batch "
                         f"(UnpicklingError: {msg})") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OSError,
            UnicodeDecodeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(
            f"data: {path} is not a readable CIFAR batch, truncated or corrupt ({err.__class__.__name__}: {err})"
        ) from err
    if not isinstance(entry, dict):
        raise ValueError(f"data: {path} is not a CIFAR batch (expected a pickled dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar_split(
    root: str | os.PathLike | None, name: str = "cifar10", train: bool = True, labels: str = "fine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as ``(images, labels)``: uint8 ``N x 3 x 32 x 32`` and int64 ``N``.

    ``labels="coarse"`` gives CIFAR-100's 20 superclasses.
    """
    key = _check_name(name)
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels: expected 'fine' or 'coarse', got {labels!r}")
    folder = cifar_folder(root, key)
    images, targets = [], []
    for fname in (CIFAR_TRAIN_FILES if train else CIFAR_TEST_FILES)[key]:
        entry = _load_pickle(folder / fname)
        label_key = "labels" if key == "cifar10" else f"{labels}_labels"
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"data: {folder / fname} lacks the 'data' or {label_key!r} entry of a {key} batch")
        raw = entry["data"]
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
            raise ValueError(f"data: {folder / fname} holds 'data' of type "
                             f"{getattr(raw, 'dtype', type(raw).__name__)}; expected an N x 3072 uint8 array")
        data = raw
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"data: {folder / fname} holds data of shape {data.shape}; expected N x 3072 uint8")
        try:
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"data: {folder / fname} has labels that are not integers ({err})") from err
        if lab.shape != (data.shape[0],):
            raise ValueError(f"data: {folder / fname} has {data.shape[0]} images but {lab.shape} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        targets.append(lab)
    x = torch.from_numpy(np.concatenate(images))
    y = torch.from_numpy(np.concatenate(targets))
    n_classes = CIFAR_NUM_CLASSES[key] if labels == "fine" else 20
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"data: {folder} has labels outside 0..{n_classes - 1}")
    return x, y


def class_names(root: str | os.PathLike | None, name: str = "cifar10") -> list[str]:
    """The class names from the meta file (``label_names`` / ``fine_label_names``).
    """
    key = _check_name(name)
    path = cifar_folder(root, key) / CIFAR_META_FILES[key]
    if not path.is_file():
        raise FileNotFoundError(f"data: {path} is missing; expected the layout {expected_layout(key)}")
    meta = _load_pickle(path)
    field = "label_names" if key == "cifar10" else "fine_label_names"
    names = meta.get(field)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"data: {path} lacks the {field!r} list of a {key} meta file")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


@dataclass
class CifarSplit:
    """Train and test images (uint8) and labels of CIFAR-10/100, plus the normalisation statistics.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return CIFAR_NUM_CLASSES[self.name]


def cifar_split(
    root: str | os.PathLike | None,
    name: str = "cifar10",
    *,
    train_samples: int | None = None,
    test_samples: int | None = None,
    seed: int = 0,
) -> CifarSplit:
    """CIFAR-10/100 train and test splits from ``root`` (optionally a random subset of each, for small runs).
    """
    key = _check_name(name)
    x_tr, y_tr = read_cifar_split(root, key, train=True)
    x_te, y_te = read_cifar_split(root, key, train=False)
    gen = torch.Generator().manual_seed(int(seed))
    for label, n, total in (("train_samples", train_samples, len(x_tr)), ("test_samples", test_samples, len(x_te))):
        if n is not None and (isinstance(n, bool) or int(n) != n or not 1 <= n):
            raise ValueError(f"{label}: expected a positive integer or None, got {n!r}")
    if train_samples is not None and train_samples < len(x_tr):
        idx = torch.randperm(len(x_tr), generator=gen)[:train_samples]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    if test_samples is not None and test_samples < len(x_te):
        idx = torch.randperm(len(x_te), generator=gen)[:test_samples]
        x_te, y_te = x_te[idx], y_te[idx]
    mean, std = CIFAR_STATS[key]
    return CifarSplit(key, x_tr, y_tr, x_te, y_te, mean, std)


class TensorBatches:
    """Minibatches of in-memory tensors, optionally normalised and augmented on the device.

    A re-iterable data source for :func:`pruninglab.train.train`: ``len()`` batches per epoch,
    ``set_epoch(e)`` fixes the order (and the augmentation) of epoch ``e`` from ``(seed, e)`` alone,
    so a resumed run sees the same batches. uint8 images are converted to float, divided by 255 and
    normalised with ``mean``/``std`` per channel; ``augment=True`` first applies a random crop with
    ``pad`` pixels of zero padding and a random horizontal flip to each image (uint8 images only).
    Much faster than a per-sample ``DataLoader`` for small models and for data that fits on the GPU.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool = False,
        pad: int = 4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y):
            raise ValueError("x, y: expected two tensors with the same number of samples")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if drop_last and len(x) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is larger than the {len(x)} samples (with drop_last=True)")
        if augment and (x.dtype != torch.uint8 or x.ndim != 4):
            raise ValueError("augment: needs uint8 images of shape N x C x H x W")
        dev = torch.device(device) if device is not None else x.device
        self.x, self.y = x.to(dev), y.to(dev)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.augment, self.pad, self.seed, self.epoch = bool(augment), int(pad), int(seed), 0
        self.device = dev
        if (mean is None) != (std is None):
            raise ValueError("mean, std: give both or neither")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=dev).reshape(shape) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32, device=dev).reshape(shape) if std is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        return gen

    def prepare(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Augment (if asked, with ``gen``) and normalise one batch of raw inputs (on the batches' device)."""
        if self.augment:
            x = _random_crop_flip(x, self.pad, gen)
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def __iter__(self):
        gen = self._generator()
        n = len(self.x)
        order = torch.randperm(n, generator=gen, device=gen.device).to(self.device) if self.shuffle else torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.prepare(self.x[idx], gen), self.y[idx]


def _random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = x.shape
    dev = x.device
    gdev = gen.device if gen is not None else dev
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # zeros, like torchvision's RandomCrop(padding=4)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gdev).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gdev).to(dev)
    flip = torch.rand(b, generator=gen, device=gdev).to(dev) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # b x h
    cols = ox[:, None] + torch.arange(w, device=dev)[None, :]  # b x w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def write_cifar(
    root: str | os.PathLike,
    name: str = "cifar10",
    *,
    train_per_file: int = 20,
    num_test: int = 20,
    seed: int = 0,
) -> Path:
    """Write a small synthetic dataset in the exact CIFAR-10/100 "python version" layout; return its folder.

    For tests and offline demos: CIFAR-10 gets five training
    files of ``train_per_file`` images each, CIFAR-100 one training file of ``5 * train_per_file``
    images. Images are class-dependent colour blobs plus noise, so a network can learn them.
    """
    key = _check_name(name)
    for label, n in (("train_per_file", train_per_file), ("num_test", num_test)):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"{label}: expected a positive integer, got {n!r}")
    folder = Path(root) / CIFAR_FOLDERS[key]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_classes = CIFAR_NUM_CLASSES[key]
    palette = rng.integers(0, 256, size=(n_classes, 3))

    def images(n: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.integers(0, n_classes, size=n)
        yy, xx = np.mgrid[0:32, 0:32]
        out = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for i, lab in enumerate(labels):
            cy, cx = rng.integers(8, 24, size=2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)
            img = palette[lab][:, None, None] * blob[None] + rng.normal(0, 20, size=(3, 32, 32)) + 40
            out[i] = np.clip(img, 0, 255).astype(np.uint8)
        return out.reshape(n, 3072), [int(v) for v in labels]

    def dump(fname: str, entry: dict) -> None:
        with (folder / fname).open("wb") as fh:
            pickle.dump(entry, fh, protocol=2)

    if key == "cifar10":
        for i, fname in enumerate(CIFAR_TRAIN_FILES[key], 1):
            data, labels = images(train_per_file)
            dump(fname, {"batch_label": f"training batch {i} of 5", "labels": labels, "data": data,
                         "filenames": [f"img_{i}_{j}.png" for j in range(len(labels))]})
        data, labels = images(num_test)
        dump("test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                            "filenames": [f"test_{j}.png" for j in range(len(labels))]})
        dump("batches.meta", {"num_cases_per_batch": train_per_file, "num_vis": 3072,
                              "label_names": [f"class_{c}" for c in range(n_classes)]})
    else:
        for fname, n in (("train", 5 * train_per_file), ("test", num_test)):
            data, labels = images(n)
            dump(fname, {"filenames": [f"{fname}_{j}.png" for j in range(n)], "batch_label": f"{fname} batch",
                         "fine_labels": labels, "coarse_labels": [v // 5 for v in labels], "data": data})
        dump("meta", {"fine_label_names": [f"class_{c}" for c in range(n_classes)],
                      "coarse_label_names": [f"super_{c}" for c in range(20)]})
    return folder
