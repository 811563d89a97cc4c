"""SIREN: sine-activated MLPs that represent one signal as a function of its coordinates.

Defined in book/meta_sparse_inr.md.

A SIREN (Sitzmann et al. 2020) with ``depth`` sine layers and one linear output layer computes
``sin(omega0 * (W x + b))`` in every sine layer, the first included, and ``W x + b`` at the output
(no activation, offset or clamp). Meta-SparseINR (Lee et al. 2021) uses depth 4, width 256 and
``omega0 = 200`` for 178x178 images: 2 -> 256 -> 256 -> 256 -> 256 -> 3, 197,888 weights.

Weights **and** biases are initialised from the same ranges: ``U(-1/d_in, 1/d_in)`` in the first
layer and ``U(-sqrt(6/d_in)/omega0, sqrt(6/d_in)/omega0)`` in every other layer (the output layer
included). Only weights count as parameters of a pruned SIREN; biases are never pruned.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import positive_int
from ..data.coords import coordinate_grid  # re-exported: the grid an INR is fitted on

__all__ = [
    "Siren",
    "siren",
    "siren_weight_count",
    "narrow_width",
    "pruned_counts",
    "coordinate_grid",
    "PAPER_NARROW_WIDTHS",
]

#: The Dense-Narrow widths of the official code (README), for the paper's 178x178 RGB setting.
PAPER_NARROW_WIDTHS = (230, 206, 184, 164, 148, 132, 118, 106, 94, 84, 76, 68, 60, 54, 48, 44, 38, 34, 32, 28)


class Siren(nn.Module):
    """``depth`` sine layers of ``width`` units and a linear output layer.

    Parameters are ``layers.{i}.weight`` / ``layers.{i}.bias`` for ``i = 0..depth`` (the last one is
    the linear output), so :func:`pruninglab.masks.prunable_parameters` returns exactly the weight
    matrices. The forward takes coordinates of shape ``(..., dim_in)``.
    """

    def __init__(self, dim_in: int = 2, width: int = 256, depth: int = 4, dim_out: int = 3,
                 omega0: float = 200.0):
        super().__init__()
        self.dim_in = positive_int(dim_in, "dim_in")
        self.width = positive_int(width, "width")
        self.depth = positive_int(depth, "depth")
        self.dim_out = positive_int(dim_out, "dim_out")
        if isinstance(omega0, bool) or not isinstance(omega0, (int, float)) or not omega0 > 0 or math.isinf(omega0):
            raise ValueError(f"omega0: expected a positive finite number, got {omega0!r}")
        self.omega0 = float(omega0)
        sizes = [self.dim_in] + [self.width] * self.depth + [self.dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw weights and biases from the SIREN ranges (see the module docstring)."""
        for i, layer in enumerate(self.layers):
            d_in = layer.in_features
            bound = 1.0 / d_in if i == 0 else math.sqrt(6.0 / d_in) / self.omega0
            for p in (layer.weight, layer.bias):
                # Draw on the CPU so a seed gives the same network on every device.
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = coords
        for layer in self.layers[:-1]:
            h = torch.sin(self.omega0 * layer(h))
        return self.layers[-1](h)

    def extra_repr(self) -> str:
        return f"omega0={self.omega0:g}, weights={self.num_weights():,}"

    def num_weights(self) -> int:
        """Number of weights (biases excluded): what a pruned SIREN's size is measured in."""
        return siren_weight_count(self.dim_in, self.width, self.depth, self.dim_out)


def siren(dim_in: int = 2, width: int = 256, depth: int = 4, dim_out: int = 3, omega0: float = 200.0,
          seed: int | None = None, device: torch.device | str | None = None) -> Siren:
    """A freshly initialised :class:`Siren` (seeded if ``seed`` is given), on ``device``.

    Defined in book/meta_sparse_inr.md.
    """
    model = Siren(dim_in, width, depth, dim_out, omega0)
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
        model.reset_parameters(gen)
    return model.to(device) if device is not None else model


def siren_weight_count(dim_in: int = 2, width: int = 256, depth: int = 4, dim_out: int = 3) -> int:
    """Weights (no biases) of a SIREN: ``dim_in*w + (depth-1)*w^2 + w*dim_out``.

    Defined in book/meta_sparse_inr.md. The paper's 2-256x4-3 network has 197,888; a width-``w``
    network of the same depth has ``3w^2 + 5w``.
    """
    dim_in, width = positive_int(dim_in, "dim_in"), positive_int(width, "width")
    depth, dim_out = positive_int(depth, "depth"), positive_int(dim_out, "dim_out")
    return dim_in * width + (depth - 1) * width * width + width * dim_out


def narrow_width(num_weights: int, dim_in: int = 2, depth: int = 4, dim_out: int = 3) -> int:
    """The width whose dense SIREN has the weight count closest to ``num_weights`` (Dense-Narrow).

    Defined in book/meta_sparse_inr.md. Solves ``(depth-1) w^2 + (dim_in+dim_out) w = num_weights``
    and returns the nearer of the two integers around the root (ties go to the smaller width).
    """
    n = positive_int(num_weights, "num_weights")
    depth = positive_int(depth, "depth")
    lin = positive_int(dim_in, "dim_in") + positive_int(dim_out, "dim_out")
    quad = depth - 1
    if quad == 0:
        root = n / lin
    else:
        root = (-lin + math.sqrt(lin * lin + 4 * quad * n)) / (2 * quad)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(sorted(candidates), key=lambda w: abs(siren_weight_count(dim_in, w, depth, dim_out) - n))


def pruned_counts(num_weights: int, rounds: int, rate: float = 0.2) -> list[int]:
    """Weights left after each round of pruning ``floor(rate * n)`` of the ``n`` survivors.

    Defined in book/meta_sparse_inr.md. Entry ``r`` is the count after round ``r`` (entry 0 is the
    dense count). With the floor, 197,888 gives 8,704 after 14 rounds, as printed in the paper
    (rounding would give 8,702).
    """
    n = positive_int(num_weights, "num_weights")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        raise ValueError(f"rounds: expected a non-negative integer, got {rounds!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"rate: expected a number in [0, 1), got {rate!r}")
    counts = [n]
    for _ in range(int(rounds)):
        counts.append(counts[-1] - math.floor(rate * counts[-1]))
    return counts


