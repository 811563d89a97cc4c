"""pruninglab: the limits and the practice of pruning deep networks.

``import pruninglab as pl`` reaches the main function of each area; everything else lives in its
module (see the API reference page of the book):

- masks and magnitude pruning: ``pl.prunable_parameters``, ``pl.global_magnitude_masks``,
  ``pl.apply_masks``, ``pl.sparsity_report``, ...;
- sharpness: ``pl.HessianOperator``, ``pl.hessian_eigenvalues``, ``pl.hessian_trace``,
  ``pl.hessian_spectrum``, ``pl.layerwise_sharpness``, ``pl.exact_hessian``;
- convex geometry and phase transitions: ``pl.statistical_dimension_l1``,
  ``pl.statistical_dimension_group_l1``, ``pl.solve_l1_batched``, ``pl.phase_transition_grid``;
- the pruning limit: ``pl.predicted_pruning_limit``, ``pl.actual_pruning_limit``, ``pl.limit_report``;
- block pruning: ``pl.SequentialAttentionPruner``, ``pl.ACDCPruner``, ``pl.PowerPropPruner``,
  ``pl.to_block_sparse``;
- sparse implicit neural representations: ``pl.siren``, ``pl.meta_train``, ``pl.fit_signals``;
- the training loop and the runtime: ``pl.train``, ``pl.device``, ``pl.seed_everything``, ``pl.scale``.

Names are imported on first use, so ``import pruninglab`` itself stays light.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Iterable

__version__ = "0.1.0"


def _install_lazy(module_name: str, table: dict[str, str], shadowed: Iterable[str] = ()) -> list[str]:
    """Make ``module_name`` resolve the names of ``table`` (name -> relative module) on first access.

    Returns the sorted names (the module's ``__all__``). ``shadowed`` names a function that has the
    same name as a submodule (``pruninglab.train``): importing the submodule then does not replace
    the function on the package (the submodule stays reachable through ``sys.modules``).
    """
    module = sys.modules[module_name]

    def __getattr__(name: str):
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target, module_name), name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(table))

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    shadowed = frozenset(shadowed)
    if shadowed:
        class _Package(types.ModuleType):
            def __setattr__(self, name, value):
                if name in shadowed and isinstance(value, types.ModuleType):
                    return
                super().__setattr__(name, value)

        module.__class__ = _Package
    return sorted(table)


_EXPORTS = {
    # runtime
    **dict.fromkeys(["device", "seed_everything", "scale", "save_result", "load_result", "progress_enabled"],
                    ".runtime"),
    # masks and magnitude pruning
    **dict.fromkeys(["apply_masks", "prunable_parameters", "sparsity_report", "global_sparsity", "save_masks",
                     "load_masks"], ".masks"),
    **dict.fromkeys(["global_magnitude_masks", "one_shot_magnitude_prune", "layerwise_magnitude_masks",
                     "random_masks", "lowest_score_masks"], ".pruners.magnitude"),
    # sharpness
    **dict.fromkeys(["HessianOperator", "hvp_operator", "hessian_eigenvalues", "hessian_trace", "hessian_spectrum",
                     "spectral_density", "exact_hessian", "exact_hessian_eigenvalues", "layerwise_sharpness",
                     "hessian_parameters", "lanczos"], ".sharpness"),
    # convex geometry and phase transitions
    **dict.fromkeys(["statistical_dimension_l1", "statistical_dimension_group_l1", "statistical_dimension_mc",
                     "gaussian_width_mc"], ".limits.geometry"),
    **dict.fromkeys(["solve_l1_batched", "solve_group_l1_batched", "phase_transition_grid",
                     "predicted_transition"], ".limits.phase"),
    # the pruning limit
    **dict.fromkeys(["predicted_pruning_limit", "actual_pruning_limit", "loss_noise_epsilon", "MagnitudeRadius",
                     "width_spectrum", "train_with_l1"], ".limits.pruning_limit"),
    **dict.fromkeys(["limit_report", "LimitReport"], ".limits.report"),
    # block pruning and block-sparse storage
    "SequentialAttentionPruner": ".pruners.sequential_attention",
    **dict.fromkeys(["ACDCPruner", "PowerPropPruner", "BlockMagnitudePruner"], ".pruners.acdc"),
    "block_magnitude_masks": ".pruners.blocks",
    "to_block_sparse": ".sparse.bsr",
    # sparse implicit neural representations
    **dict.fromkeys(["Siren", "siren"], ".inr.siren"),
    **dict.fromkeys(["meta_train", "fit_signals"], ".inr.metasparse"),
    # the training loop
    **dict.fromkeys(["train", "TrainResult", "Preempted"], ".train"),
}

__all__ = ["__version__", *_install_lazy(__name__, _EXPORTS, shadowed=["train"])]
