"""Models used across the book: fully connected nets (more are added by the chapters that use them).

ResNets come from torchvision.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    """A fully connected net ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers.

    Defined in book/intro.md. ``mlp([64, 32, 32, 10])`` is the digits MLP of the limit chapters.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
        raise ValueError(f"sizes: expected at least two positive integers, got {sizes!r}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(int(a), int(b), bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)
