"""Block-sparse storage and timing: a storage format for pruned weights, not a pruner.

Names are imported from their modules on first use.
"""
from .. import _install_lazy

__all__ = _install_lazy(__name__, {
    **dict.fromkeys(["BlockSparseLinear", "to_block_sparse", "time_dense_vs_bsr"], ".bsr"),
})
