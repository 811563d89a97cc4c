"""The book's figure helpers: one house style; functions return ``(fig, ax)`` and never call ``plt.show()``.

Defined in book/convex_geometry.md.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

#: Colours used for the same method in every chapter.
METHOD_COLORS = {
    "predicted": "#1f77b4",
    "actual": "#d62728",
    "magnitude": "#7f7f7f",
    "random": "#bcbd22",
    "sapp": "#d62728",
    "acdc": "#1f77b4",
    "powerprop": "#9467bd",
    "meta-sparse": "#d62728",
    "dense-narrow": "#2ca02c",
    "scratch": "#7f7f7f",
    "paper": "#000000",
}

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
}


def use_style() -> None:
    """Apply the house style to matplotlib (idempotent)."""
    mpl.rcParams.update(STYLE)


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6, **kwargs):
    """A new figure in the house style with ``nrows × ncols`` axes of the given size each."""
    use_style()
    fig, ax = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), **kwargs)
    return fig, ax


def color(method: str) -> str | None:
    """The colour of a method across the book (None lets matplotlib choose)."""
    return METHOD_COLORS.get(method.lower())
