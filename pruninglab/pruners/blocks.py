"""Block partition of weight matrices and conv kernels, block norms and per-layer top-k block masks.

Defined in book/sapp.md.

**Which matrix is tiled.** A ``Linear`` weight is tiled as stored, ``out_features x in_features``
(rows x cols). A conv kernel ``C_out x C_in x k_1 x ... `` is first viewed as the matrix
``(k_1 ... C_in) x C_out`` (for ``Conv2d``: ``(H W C_in) x C_out``, as in Yasuda et al. 2024),
i.e. ``w.permute(2, 3, 1, 0).reshape(H * W * C_in, C_out)``; blocks are ``B x B`` tiles of that
matrix.

**Shapes that the block size does not divide** are padded to whole blocks (ceil) and cropped:
the block grid has ``ceil(rows / B) x ceil(cols / B)`` blocks, the blocks on the last row / column
are partial, a partial block's norm is the norm of the entries it really has, and a block mask is
expanded to the full padded tile and then cropped to the weight's shape. Block counts are exact
(``N - floor(s N)`` blocks kept); the *element* sparsity of a layer with partial blocks can
therefore differ slightly from ``s`` (the achieved value is what :func:`pruninglab.sparsity_report`
shows). This rule reproduces the effective sparsities of the paper's ResNet-50 table.

**Which layers.** Every ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Conv3d`` weight with at least
``min_blocks`` blocks (the paper: 100); smaller layers stay dense. Sparsity is uniform per layer
(the paper found global block selection worse: large blocks can nearly delete a layer).

Everything stays on the weights' device; nothing here moves data to the CPU.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import PRUNABLE_LAYERS, Masks, SparsityWarning, check_finite, check_weight_dtype
from .schedule import PhasedHook, kept_blocks

#: Layer types that the block pruners tile.
BLOCK_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size: expected a positive integer, got {block_size!r}")
    return block_size


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0 \
            or math.isnan(sparsity):
        raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


@dataclass(frozen=True)
class BlockLayout:
    """How one weight tensor is tiled into ``block_size x block_size`` blocks.

    ``rows x cols`` is the matrix view (see the module docstring),
    ``grid`` the number of block rows and block columns (ceil).
    """

    shape: tuple[int, ...]
    block_size: int

    def __post_init__(self) -> None:
        if len(self.shape) < 2 or any(int(d) < 1 for d in self.shape):
            raise ValueError(f"shape: expected a weight shape with at least 2 positive dimensions, got {self.shape}")
        _check_block_size(self.block_size)

    @property
    def is_conv(self) -> bool:
        return len(self.shape) > 2

    @property
    def rows(self) -> int:
        if self.is_conv:
            return math.prod(self.shape[2:]) * self.shape[1]
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[0] if self.is_conv else self.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        b = self.block_size
        return (-(-self.rows // b), -(-self.cols // b))

    @property
    def num_blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def divisible(self) -> bool:
        return self.rows % self.block_size == 0 and self.cols % self.block_size == 0

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """The ``rows x cols`` matrix view of a weight of this layout (a conv kernel is permuted)."""
        self._check(w, "w")
        if not self.is_conv:
            return w
        perm = tuple(range(2, w.dim())) + (1, 0)
        return w.permute(perm).reshape(self.rows, self.cols)

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_matrix`: a ``rows x cols`` matrix back to the weight's shape."""
        if tuple(m.shape) != (self.rows, self.cols):
            raise ValueError(f"m: expected shape {(self.rows, self.cols)}, got {tuple(m.shape)}")
        if not self.is_conv:
            return m
        k = self.shape[2:]
        t = m.reshape(*k, self.shape[1], self.shape[0])  # (k..., C_in, C_out)
        nk = len(k)
        perm = (nk + 1, nk) + tuple(range(nk))
        return t.permute(perm)

    def _padded(self, w: torch.Tensor) -> torch.Tensor:
        m = self.to_matrix(w)
        gr, gc = self.grid
        b = self.block_size
        pr, pc = gr * b - self.rows, gc * b - self.cols
        if pr or pc:
            m = nn.functional.pad(m, (0, pc, 0, pr))
        return m

    def block_norms(self, w: torch.Tensor) -> torch.Tensor:
        """Frobenius norm of every block, a ``grid``-shaped tensor (partial blocks: their real entries)."""
        gr, gc = self.grid
        b = self.block_size
        m = self._padded(w.detach().float())
        return m.reshape(gr, b, gc, b).square().sum(dim=(1, 3)).sqrt()

    def block_sizes(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Number of real (unpadded) entries in every block, ``grid``-shaped (int64)."""
        b = self.block_size
        gr, gc = self.grid
        r = torch.full((gr,), b, dtype=torch.int64, device=device)
        c = torch.full((gc,), b, dtype=torch.int64, device=device)
        r[-1] = self.rows - (gr - 1) * b
        c[-1] = self.cols - (gc - 1) * b
        return r[:, None] * c[None, :]

    def expand(self, grid_values: torch.Tensor) -> torch.Tensor:
        """A ``grid``-shaped tensor (a block mask, per-block scales) expanded to the weight's shape.

        Each block value is repeated over its ``B x B`` tile; padding is cropped.
        """
        if tuple(grid_values.shape) != self.grid:
            raise ValueError(f"grid_values: expected shape {self.grid}, got {tuple(grid_values.shape)}")
        b = self.block_size
        if b == 1:  # unstructured: the grid is the matrix
            return self.from_matrix(grid_values)
        m = grid_values.repeat_interleave(b, dim=0).repeat_interleave(b, dim=1)
        m = m[: self.rows, : self.cols]
        return self.from_matrix(m)

    def _check(self, w: torch.Tensor, name: str) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"{name}: expected shape {self.shape}, got {tuple(w.shape)}")


def block_layout(weight: torch.Tensor | Sequence[int], block_size: int) -> BlockLayout:
    """The :class:`BlockLayout` of a weight tensor (or shape) at ``block_size``.

    Defined in book/sapp.md.
    """
    _check_block_size(block_size)
    shape = tuple(int(d) for d in (weight.shape if isinstance(weight, torch.Tensor) else weight))
    return BlockLayout(shape, block_size)


def topk_block_mask(scores: torch.Tensor, k: int, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the ``k`` highest ``scores`` (any shape), optionally only among ``alive`` entries.

    Ties are broken by flat index (the earlier block wins), so the result is the same on every
    device. NaN scores rank below every other score (the pruners check weights for NaN). With
    ``alive``, the kept set is a subset of ``alive`` (nested pruning); if ``k`` exceeds the number of
    alive entries, all alive entries are kept.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k > scores.numel():
        raise ValueError(f"k: expected an integer in [0, {scores.numel()}], got {k!r}")
    flat = scores.detach().reshape(-1).float()
    # A NaN score ranks lowest (never kept ahead of a real one), so exactly k entries are kept; the
    # one-shot callers refuse NaN weights with an error naming the layer before they get here.
    flat = torch.nan_to_num(flat, nan=-math.inf)
    if alive is not None:
        if alive.shape != scores.shape or alive.dtype != torch.bool:
            raise ValueError("alive: expected a bool tensor of the scores' shape")
        flat = torch.where(alive.reshape(-1), flat, torch.full_like(flat, -math.inf))
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=flat.device)
    # Selection instead of a sort (O(N), and no host sync): the k-th largest value is the threshold;
    # everything above it is kept, then the first ties by flat index fill up to exactly k.
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    keep = flat > threshold
    tie = flat == threshold
    need = k - keep.sum()
    keep |= tie & (torch.cumsum(tie.to(torch.int64), 0) <= need)
    if alive is not None:
        keep &= alive.reshape(-1)
    return keep.reshape(scores.shape)


def _weight_of(mod: nn.Module) -> torch.Tensor:
    """The stored weight of a layer: the parametrisation's ``original`` or ``weight_orig`` if present."""
    if parametrize.is_parametrized(mod, "weight"):
        return mod.parametrizations.weight.original
    p = mod._parameters.get("weight_orig")
    return p if p is not None else mod.weight


def select_block_layers(
    model: nn.Module,
    block_size: int,
    min_blocks: int = 100,
    layers: Iterable[str] | None = None,
) -> dict[str, tuple[nn.Module, BlockLayout]]:
    """The layers a block pruner manages: ``"name.weight" -> (module, layout)``, in module order.

    Defined in book/sapp_imagenet.md.

    ``layers=None`` takes every conv/linear layer with at least ``min_blocks`` blocks. ``layers``
    may name modules (``"fc1"``) or their weights (``"fc1.weight"``); a named layer with fewer than
    ``min_blocks`` blocks is an error rather than silently left dense.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    _check_block_size(block_size)
    if isinstance(min_blocks, bool) or not isinstance(min_blocks, int) or min_blocks < 0:
        raise ValueError(f"min_blocks: expected a non-negative integer, got {min_blocks!r}")
    modules = dict(model.named_modules())
    eligible = {n: m for n, m in modules.items() if isinstance(m, BLOCK_LAYERS) and not _is_internal(n)}
    out: dict[str, tuple[nn.Module, BlockLayout]] = {}
    if layers is None:
        for name, mod in eligible.items():
            lay = block_layout(_weight_of(mod), block_size)
            if lay.num_blocks >= min_blocks:
                out[_key(name)] = (mod, lay)
        if not out:
            sizes = {n: block_layout(_weight_of(m), block_size).num_blocks for n, m in eligible.items()}
            raise ValueError(
                f"min_blocks: no layer has at least {min_blocks} blocks of {block_size}x{block_size} "
                f"(blocks per layer: {sizes}); lower min_blocks or block_size"
            )
        return _checked(out)
    if isinstance(layers, str):
        raise ValueError(f"layers: expected a list of layer names, got the string {layers!r}")
    names = list(layers)
    if not names:
        raise ValueError("layers: is empty; pass None for every eligible layer")
    wanted = set()
    for raw in names:
        name = raw[: -len(".weight")] if raw.endswith(".weight") else ("" if raw == "weight" else raw)
        if name not in eligible:
            raise ValueError(
                f"layers: {raw!r} is not a Linear/Conv layer of the model (eligible: {sorted(eligible)})"
            )
        lay = block_layout(_weight_of(eligible[name]), block_size)
        if lay.num_blocks < min_blocks:
            raise ValueError(
                f"layers: {raw!r} has {lay.num_blocks} blocks of {block_size}x{block_size}, fewer than "
                f"min_blocks={min_blocks}; lower min_blocks or leave the layer out"
            )
        wanted.add(name)
    for name, mod in eligible.items():  # module order, whatever the order of `layers`
        if name in wanted:
            out[_key(name)] = (mod, block_layout(_weight_of(mod), block_size))
    return _checked(out)


def _checked(selected: dict[str, tuple[nn.Module, BlockLayout]]) -> dict[str, tuple[nn.Module, BlockLayout]]:
    """The selected layers, after the checks every pruner makes: real floating-point, finite weights."""
    weights = {n: _weight_of(mod) for n, (mod, _) in selected.items()}
    for n, w in weights.items():
        check_weight_dtype(w, f"params[{n!r}]")
    check_finite(weights)
    return selected


def check_block_sparsity(layouts: Mapping[str, BlockLayout], sparsity: float, tolerance: float = 0.05) -> dict[str, float]:
    """Achieved block sparsity per layer (``floor(s N) / N``); warn where it misses ``sparsity``.

    Called by every block pruner when it selects its layers. A layer with few blocks cannot reach every sparsity (a block larger
    than the layer is one block, which is always kept): a :class:`~pruninglab.masks.SparsityWarning`
    names each layer whose achieved block sparsity is more than ``tolerance`` below the nominal one
    or that stays dense, and a ``ValueError`` is raised when no layer would be pruned at all.
    """
    achieved = {n: 1.0 - kept_blocks(lay.num_blocks, sparsity) / lay.num_blocks for n, lay in layouts.items()}
    if sparsity <= 0:
        return achieved
    short = {n: a for n, a in achieved.items() if a == 0.0 or sparsity - a > tolerance}
    if short and len(short) == len(achieved) and all(a == 0.0 for a in short.values()):
        raise ValueError(
            f"block_size: at sparsity {sparsity:g} no managed layer would lose a block "
            f"({', '.join(f'{n}: {layouts[n].num_blocks} block(s) of {layouts[n].block_size}x{layouts[n].block_size}' for n in short)}); "
            "use a smaller block_size or a larger min_blocks"
        )
    for n, a in short.items():
        lay = layouts[n]
        warnings.warn(
            f"layers: {n!r} has {lay.num_blocks} block(s) of {lay.block_size}x{lay.block_size}, so its sparsity is "
            f"{a:.4f}, not the nominal {sparsity:g}; use a smaller block_size or raise min_blocks to leave it dense",
            SparsityWarning, stacklevel=3,
        )
    return achieved


def _key(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _is_internal(name: str) -> bool:
    # Modules living inside a parametrisation are not layers of the model.
    return ".parametrizations." in f".{name}."


def block_masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    layouts: Mapping[str, BlockLayout],
    sparsity: float,
) -> dict[str, torch.Tensor]:
    """Per-layer top-k **block** masks (``grid``-shaped bool) keeping ``N - floor(s N)`` blocks of each layer.
    """
    s = _check_sparsity(sparsity)
    out = {}
    for name, lay in layouts.items():
        sc = scores[name]
        if tuple(sc.shape) != lay.grid:
            raise ValueError(f"scores[{name!r}]: expected grid shape {lay.grid}, got {tuple(sc.shape)}")
        if not bool(torch.isfinite(sc).all()):
            raise ValueError(f"scores[{name!r}]: contains NaN or Inf values (a NaN or Inf weight?); cannot rank blocks")
        out[name] = topk_block_mask(sc, kept_blocks(lay.num_blocks, s))
    return out


def expand_block_masks(block_masks: Mapping[str, torch.Tensor], layouts: Mapping[str, BlockLayout]) -> Masks:
    """Block masks (``grid``-shaped) expanded to element masks in the shared masks format.
    """
    return {n: layouts[n].expand(m.to(torch.bool)) for n, m in block_masks.items()}


def block_magnitude_masks(
    model: nn.Module,
    sparsity: float,
    block_size: int,
    *,
    min_blocks: int = 100,
    layers: Iterable[str] | None = None,
) -> Masks:
    """Block magnitude pruning masks: in each managed layer keep the blocks with the largest Frobenius norm.

    Defined in book/sapp.md. Returns element masks (True = kept) for the managed layers only;
    layers with fewer than ``min_blocks`` blocks are not in the result (they stay dense).
    """
    s = _check_sparsity(sparsity)
    sel = select_block_layers(model, block_size, min_blocks, layers)
    layouts = {n: lay for n, (_, lay) in sel.items()}
    check_block_sparsity(layouts, s)
    scores = {n: lay.block_norms(_weight_of(mod)) for n, (mod, lay) in sel.items()}
    return expand_block_masks(block_masks_from_scores(scores, layouts, s), layouts)


def is_block_mask(mask: torch.Tensor, layout: BlockLayout) -> bool:
    """Whether an element mask is constant on every block of ``layout`` (a test and debugging aid)."""
    b = layout.block_size
    m = layout._padded(mask.float())
    gr, gc = layout.grid
    sizes = layout.block_sizes(mask.device)
    kept = m.reshape(gr, b, gc, b).sum(dim=(1, 3))
    return bool(((kept == 0) | (kept == sizes)).all())


def effective_sparsity(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Whole-network sparsity over every conv/linear weight, layers not in ``masks`` counting as dense.

    Defined in book/sapp.md. This is the paper's "effective sparsity" (e.g. 74.3% for 64x64 blocks at
    a nominal 90% on ResNet-50, where small layers stay dense).
    """
    total = 0
    pruned = 0
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_LAYERS) and not _is_internal(name):
            w = _weight_of(mod)
            total += w.numel()
            m = masks.get(_key(name))
            if m is not None:
                pruned += int((~m).sum())
    if total == 0:
        raise ValueError("model: has no conv/linear weights")
    return pruned / total


class BlockPruner(PhasedHook):
    """Shared machinery of the phased block pruners (SA++, ACDC, block magnitude, block PowerProp).

    A block pruner is a training hook for :func:`pruninglab.train.train`: it selects the layers it
    manages (:func:`select_block_layers`), follows a phase schedule (:mod:`.schedule`), exposes
    the current element masks as :attr:`masks` (the shared format, True = kept) and its state for
    checkpoints. Subclasses decide how blocks are scored and how masks act on the model.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        block_size: int,
        phases: Sequence,
        min_blocks: int = 100,
        layers: Iterable[str] | None = None,
    ):
        self.sparsity = _check_sparsity(sparsity)
        self.block_size = _check_block_size(block_size)
        self.min_blocks = min_blocks
        selected = select_block_layers(model, block_size, min_blocks, layers)
        self._modules = {n: mod for n, (mod, _) in selected.items()}
        self.layouts: dict[str, BlockLayout] = {n: lay for n, (_, lay) in selected.items()}
        check_block_sparsity(self.layouts, self.sparsity)
        self._init_phases(phases)
        self._final_masks: Masks | None = None

    # -- what subclasses provide
    @property
    def block_masks(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Current block masks, ``"layer.weight" -> grid-shaped bool tensor`` (True = kept)."""
        raise NotImplementedError

    # -- shared
    @property
    def masks(self) -> Masks:
        """Current element masks in the shared format: ``"layer.weight" -> bool tensor`` (True = kept)."""
        if self._final_masks is not None:
            return dict(self._final_masks)
        return expand_block_masks(self.block_masks, self.layouts)

    @property
    def kept_blocks(self) -> dict[str, int]:
        """Target number of kept blocks per managed layer at the final sparsity."""
        return {n: kept_blocks(lay.num_blocks, self.sparsity) for n, lay in self.layouts.items()}

    def weight(self, name: str) -> torch.Tensor:
        """The stored weight tensor of a managed layer (the parametrisation's ``original`` if any)."""
        return _weight_of(self._modules[name])

    def on_step_end(self, step: int, model: nn.Module | None = None) -> None:
        return None

    def state_dict(self) -> dict:
        state = self._phase_state()
        state.update(sparsity=self.sparsity, block_size=self.block_size,
                     block_masks={n: m.detach().clone() for n, m in self.block_masks.items()})
        return state

    def _load_mask_buffers(self, state: Mapping, buffers: Mapping[str, torch.Tensor]) -> None:
        """Restore a checkpointed state into pruners whose block masks live in model buffers."""
        self._check_state(state)
        self._load_phase_state(state)
        for n, m in state["block_masks"].items():
            buffers[n].copy_(m.to(device=buffers[n].device, dtype=torch.bool))

    def _check_state(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or "phase" not in state:
            raise ValueError("state: expected a dict made by this pruner's state_dict()")
        for key in ("sparsity", "block_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"state: was saved with {key}={state[key]!r}, this pruner has {getattr(self, key)!r}"
                )
        bm = state.get("block_masks", {})
        if set(bm) != set(self.layouts):
            raise ValueError(f"state: manages layers {sorted(bm)}, this pruner manages {sorted(self.layouts)}")
        for n, m in bm.items():
            if tuple(m.shape) != self.layouts[n].grid:
                raise ValueError(f"state: block mask of {n!r} has shape {tuple(m.shape)}, expected {self.layouts[n].grid}")


@torch.no_grad()
def fold_parametrization(module: nn.Module, name: str = "weight") -> None:
    """Replace a parametrised tensor by its current value, as a plain parameter of ``module``.

    Like ``parametrize.remove_parametrizations(..., leave_parametrized=True)``,
    but it leaves the class that :mod:`torch.nn.utils.parametrize` created untouched: torch deletes the
    property from that class, which ``copy.deepcopy`` shares between a model and its copies, so
    finalizing one model would break every copy of it. The stored ``original`` keeps its identity
    (an optimizer that holds it still points at the folded weight).
    """
    if not parametrize.is_parametrized(module, name):
        raise ValueError(f"name: {name!r} is not parametrised on this {type(module).__name__}")
    plist = module.parametrizations[name]
    if not hasattr(plist, "original") or len(module.parametrizations) > 1:
        # several parametrised tensors (or a tuple-valued right_inverse): torch's own removal
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        return
    value = getattr(module, name).detach()
    original = plist.original
    original.copy_(value)
    module.__class__ = module.__class__.__bases__[0]  # this module only; the shared class keeps its property
    del module._modules["parametrizations"]
    if isinstance(original, nn.Parameter):
        module.register_parameter(name, original)
    else:
        module.register_buffer(name, original)
