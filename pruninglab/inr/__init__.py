"""Sparse implicit neural representations: SIREN, MAML on functional parameters, Meta-SparseINR.

Names are imported from their modules on first use. (The ``siren`` builder is ``pruninglab.siren``
or ``pruninglab.inr.siren.siren``; here ``siren`` is the module.)
"""
from .. import _install_lazy

__all__ = _install_lazy(__name__, {
    **dict.fromkeys(["Siren", "siren_weight_count", "narrow_width", "coordinate_grid"], ".siren"),
    **dict.fromkeys(["MetaObjective", "adapt", "meta_loss"], ".meta"),
    **dict.fromkeys(["psnr", "FitResult", "fit_signals", "prune_round", "meta_train"], ".metasparse"),
})
