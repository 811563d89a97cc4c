"""pruninglab: the limits and the practice of pruning deep networks.

The names a reader uses most are importable from here; everything else lives in its module
(see the API reference page of the book).
"""
__version__ = "0.1.0"

from .runtime import device, load_result, save_result, scale, seed_everything  # noqa: E402
from .masks import apply_masks, prunable_parameters, sparsity_report  # noqa: E402
from .pruners.magnitude import global_magnitude_masks, one_shot_magnitude_prune  # noqa: E402

__all__ = [
    "__version__",
    "device",
    "seed_everything",
    "scale",
    "save_result",
    "load_result",
    "apply_masks",
    "prunable_parameters",
    "sparsity_report",
    "global_magnitude_masks",
    "one_shot_magnitude_prune",
]
