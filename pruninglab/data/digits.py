"""scikit-learn's bundled 8×8 digits (1,797 images, 10 classes): the small-scale dataset of the book.

Defined in book/intro.md. It ships with scikit-learn, so nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TensorSplit:
    """Train and test tensors of a small in-memory dataset."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def train_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.x_train, self.y_train)

    def to(self, device) -> "TensorSplit":
        return TensorSplit(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)))


def digits_split(test_size: int = 397, seed: int = 0, flatten: bool = True) -> TensorSplit:
    """The digits split into train/test (1,400 / 397 by default), features scaled to [0, 1].

    Defined in book/intro.md. ``flatten=False`` gives ``N×1×8×8`` images for small CNNs.
    """
    from sklearn.datasets import load_digits

    if isinstance(test_size, bool) or int(test_size) != test_size or not 0 < test_size < 1797:
        raise ValueError(f"test_size: expected an integer in 1..1796, got {test_size!r}")
    ds = load_digits()
    x = ds.data.astype(np.float32) / 16.0
    y = ds.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    n_train = len(x) - int(test_size)
    t = torch.from_numpy
    return TensorSplit(t(x[:n_train]), t(y[:n_train]), t(x[n_train:]), t(y[n_train:]))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (eval mode, batched)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size].to(dev))
        correct += int((out.argmax(1) == y[i:i + batch_size].to(dev)).sum())
    model.train(was)
    return correct / len(x)
