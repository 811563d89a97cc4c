"""Coordinates of signals: the input grid an implicit neural representation is fitted on.

Part of the data layer, so that readers (e.g. the SDF reader) need no model code.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["coordinate_grid"]


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def coordinate_grid(height: int, width: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel coordinates in ``[-1, 1]^2`` (endpoints included), "ij" order, flattened to ``(H*W, 2)``.

    Defined in book/meta_sparse_inr.md. Row ``i * W + j`` holds ``(y_i, x_j)``, which matches an
    image tensor ``(H, W, C)`` flattened to ``(H*W, C)``.
    """
    height = _positive_int(height, "height")
    width = height if width is None else _positive_int(width, "width")
    ys = torch.linspace(-1.0, 1.0, height, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)
