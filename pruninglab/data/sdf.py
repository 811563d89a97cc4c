"""Signed distance functions (SDFs) as signals: the paper's file format and an analytic generator.

The paper's third signal type is 2D signed distance fields (the SDF data of Learnit, Tancik et al.
2021). The official Meta-SparseINR code reads them from one file, ``data_2d_sdf.npz``, holding two
arrays ``train_data`` and ``test_data`` of shape ``(count, 178, 178, channels)`` with values 0..255,
scaled to ``[0, 1]`` by dividing by 255; the first 250 test fields are evaluated.
:func:`load_sdf_npz` reads that format (a folder holding the file, or the file itself) and
:func:`write_sdf_npz` writes it.

For small runs, :func:`sdf_split` generates fields of random circles, boxes and polygons with
exact signed distances (negative inside). A field is stored as an image: the distance ``d`` in
units of the ``[-1, 1]^2`` square is encoded as ``clip(0.5 + 0.5 * d / truncation, 0, 1)``, so the
zero level set is the grey value 0.5.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .images import SignalSplit, TensorSignals

__all__ = [
    "SDF_FILE",
    "load_sdf_npz",
    "write_sdf_npz",
    "circle_sdf",
    "box_sdf",
    "polygon_sdf",
    "encode_sdf",
    "random_shape_sdf",
    "sdf_images",
    "sdf_split",
]

SDF_FILE = "data_2d_sdf.npz"


def _check_npz_array(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0:
        raise ValueError(
            f"{path}: array {key!r} has shape {arr.shape}; expected (count, height, width, 1 or 3) with count > 0"
        )
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: array {key!r} has dtype {arr.dtype}; expected numbers 0..255")
    arr = arr.astype(np.float32)
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{path}: array {key!r} has values outside 0..255 ({arr.min()}..{arr.max()})")
    return arr / 255.0


def load_sdf_npz(path: str | os.PathLike) -> SignalSplit:
    """Read the paper's SDF file (``data_2d_sdf.npz``: ``train_data`` and ``test_data``) as signals.

    ``path`` is the file or a folder that holds it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SDF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data: no SDF file at {path} (expected {SDF_FILE} with train_data and test_data)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip, truncated, pickled objects
        raise ValueError(f"data: {path} is not a readable .npz file ({err.__class__.__name__}: {err})") from err
    with npz:
        missing = [k for k in ("train_data", "test_data") if k not in npz.files]
        if missing:
            raise ValueError(f"data: {path} lacks the array(s) {missing}; it holds {npz.files}")
        try:
            train = _check_npz_array(npz["train_data"], "train_data", path)
            test = _check_npz_array(npz["test_data"], "test_data", path)
        except (OSError, ValueError, EOFError) as err:
            if isinstance(err, ValueError) and str(path) in str(err):
                raise
            raise ValueError(f"data: {path} has an unreadable array ({err.__class__.__name__}: {err})") from err
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"data: {path} has train fields {train.shape[1:]} but test fields {test.shape[1:]}")
    return SignalSplit("sdf", TensorSignals(torch.from_numpy(train)), TensorSignals(torch.from_numpy(test)))


def write_sdf_npz(path: str | os.PathLike, train: np.ndarray | torch.Tensor, test: np.ndarray | torch.Tensor) -> Path:
    """Write fields ``(count, H, W, C)`` with values in [0, 1] in the paper's format (uint8 0..255).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path / SDF_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for key, arr in (("train_data", train), ("test_data", test)):
        arr = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"{key}: expected (count, height, width, channels), got shape {arr.shape}")
        arrays[key] = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- analytic fields


def circle_sdf(points: torch.Tensor, center, radius: float) -> torch.Tensor:
    """Signed distance from ``points (P, 2)`` to a circle (negative inside).
    """
    c = torch.as_tensor(center, dtype=points.dtype, device=points.device)
    return torch.linalg.vector_norm(points - c, dim=-1) - float(radius)


def box_sdf(points: torch.Tensor, center, half_size, angle: float = 0.0) -> torch.Tensor:
    """Exact signed distance to a box with half-sides ``half_size``, rotated by ``angle`` (radians).
    """
    c = torch.as_tensor(center, dtype=points.dtype, device=points.device)
    h = torch.as_tensor(half_size, dtype=points.dtype, device=points.device)
    cos, sin = math.cos(angle), math.sin(angle)
    d = points - c
    # Into the box's frame (rotate by -angle).
    local = torch.stack([cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1]], dim=-1)
    q = local.abs() - h
    outside = torch.linalg.vector_norm(q.clamp(min=0), dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0)
    return outside + inside


def polygon_sdf(points: torch.Tensor, vertices) -> torch.Tensor:
    """Exact signed distance to a simple polygon given by its vertices ``(V, 2)`` in order.

    The magnitude is the distance to the nearest edge; the sign
    comes from the even-odd (crossing number) rule.
    """
    v = torch.as_tensor(vertices, dtype=points.dtype, device=points.device)
    if v.dim() != 2 or v.shape[1] != 2 or v.shape[0] < 3:
        raise ValueError(f"vertices: expected (V, 2) with V >= 3, got shape {tuple(v.shape)}")
    a = v  # edge starts (V, 2)
    b = torch.roll(v, -1, dims=0)  # edge ends
    e = b - a
    w = points[:, None, :] - a[None]  # (P, V, 2)
    t = ((w * e[None]).sum(-1) / (e * e).sum(-1).clamp(min=1e-12)[None]).clamp(0, 1)
    dist = torch.linalg.vector_norm(w - t[..., None] * e[None], dim=-1).min(dim=1).values
    py = points[:, 1:2]
    px = points[:, 0:1]
    ay, by, ax, bx = a[:, 1][None], b[:, 1][None], a[:, 0][None], b[:, 0][None]
    crosses = (ay > py) != (by > py)
    x_at = ax + (py - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
    inside = ((crosses & (px < x_at)).sum(dim=1) % 2) == 1
    return torch.where(inside, -dist, dist)


def encode_sdf(sdf: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
    """Distances to grey values: ``clip(0.5 + 0.5 * sdf / truncation, 0, 1)`` (level set at 0.5).
    """
    if not truncation > 0:
        raise ValueError(f"truncation: expected a positive distance, got {truncation!r}")
    return (0.5 + 0.5 * sdf / truncation).clamp(0.0, 1.0)


def random_shape_sdf(points: torch.Tensor, rng: np.random.Generator, max_shapes: int = 3) -> torch.Tensor:
    """The exact signed distance field of the union of 1..``max_shapes`` random circles, boxes and polygons.

    The union's field is the pointwise minimum (exact outside
    the shapes, a lower bound on the depth inside where shapes overlap).
    """
    fields = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = rng.choice(["circle", "box", "polygon"])
        center = rng.uniform(-0.5, 0.5, 2)
        if kind == "circle":
            fields.append(circle_sdf(points, center, rng.uniform(0.15, 0.45)))
        elif kind == "box":
            fields.append(box_sdf(points, center, rng.uniform(0.1, 0.4, 2), rng.uniform(0, math.pi)))
        else:
            n = int(rng.integers(3, 8))
            # A star-shaped polygon: sorted angles and random radii around the centre (always simple).
            angles = np.sort(rng.uniform(0, 2 * math.pi, n))
            radii = rng.uniform(0.15, 0.45, n)
            verts = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
            fields.append(polygon_sdf(points, verts))
    return torch.stack(fields).min(dim=0).values


def sdf_images(count: int, size: int = 32, *, seed: int = 0, truncation: float = 1.0) -> torch.Tensor:
    """``count`` random SDF fields sampled on a ``size`` x ``size`` grid, encoded as grey images ``(count, size, size, 1)``.

    Points are ``(x, y)`` with row ``i`` at ``y_i`` and column ``j``
    at ``x_j``, both ``linspace(-1, 1, size)``.
    """
    from .coords import coordinate_grid

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected a positive integer, got {count!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size: expected an integer >= 2, got {size!r}")
    grid = coordinate_grid(int(size))  # (y, x) rows
    points = grid.flip(-1).to(torch.float64)  # (x, y)
    rng = np.random.default_rng(seed)
    imgs = [encode_sdf(random_shape_sdf(points, rng), truncation) for _ in range(int(count))]
    return torch.stack(imgs).reshape(int(count), int(size), int(size), 1).to(torch.float32)


def sdf_split(num_train: int = 200, num_test: int = 20, size: int = 32, *, seed: int = 0) -> SignalSplit:
    """Random analytic SDF fields split into meta-train and meta-test (independent draws).
    """
    for name, val in (("num_train", num_train), ("num_test", num_test)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{name}: expected a positive integer, got {val!r}")
    fields = sdf_images(int(num_train) + int(num_test), size, seed=seed)
    return SignalSplit("sdf", TensorSignals(fields[:num_train]), TensorSignals(fields[num_train:]))
