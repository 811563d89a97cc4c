"""Pruners: global magnitude, blocks, SequentialAttention++, ACDC, PowerProp, schedules (block-sparse storage is in pruninglab.sparse).

Names are imported from their modules on first use.
"""
from .. import _install_lazy

__all__ = _install_lazy(__name__, {
    **dict.fromkeys(["lowest_score_masks", "global_magnitude_masks", "layerwise_magnitude_masks", "random_masks",
                     "one_shot_magnitude_prune", "imp_sparsities"], ".magnitude"),
    **dict.fromkeys(["BlockLayout", "block_layout", "block_magnitude_masks", "BlockPruner"], ".blocks"),
    **dict.fromkeys(["BlockAttention", "SequentialAttentionPruner"], ".sequential_attention"),
    **dict.fromkeys(["ACDCPruner", "BlockMagnitudePruner", "PowerPropPruner"], ".acdc"),
    **dict.fromkeys(["Phase", "imagenet_phases", "criteo_phases"], ".schedule"),
})
