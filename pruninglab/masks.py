"""Masks as plain boolean tensors keyed by parameter name.

Defined in book/intro.md (first use) and book/sharpness.md.

A mask is ``True`` where a weight is **kept** and ``False`` where it is pruned. Masks are a
``dict[str, torch.BoolTensor]`` whose keys are names from ``model.named_parameters()`` (or the
keys of a plain parameter dict, as in functional code). Masks alone change neither the speed
nor the size of a model; see book/block_sparse_speed.md for that.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .runtime import atomic_torch_save

Masks = dict[str, torch.Tensor]

#: Layer types whose ``weight`` is prunable by default (conv and linear weights; biases and norms are not).
PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(
    model: nn.Module,
    layer_types: tuple[type[nn.Module], ...] = PRUNABLE_LAYERS,
    include_bias: bool = False,
) -> dict[str, nn.Parameter]:
    """The parameters pruned by default: weights of conv/linear layers, in module order.

    Defined in book/intro.md.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, layer_types):
            prefix = f"{mod_name}." if mod_name else ""
            # torch.nn.utils.prune renames weight -> weight_orig; accept both conventions.
            for pname in ("weight", "weight_orig") + (("bias", "bias_orig") if include_bias else ()):
                p = mod._parameters.get(pname)
                if p is None and parametrize.is_parametrized(mod, pname):
                    # torch.nn.utils.parametrize (e.g. the SA++ block attention): the stored tensor.
                    p = mod.parametrizations[pname].original
                if p is not None:
                    out[prefix + pname.replace("_orig", "")] = p
    if not out:
        raise ValueError(
            "model: has no prunable layers (expected at least one of "
            + ", ".join(t.__name__ for t in layer_types)
            + ")"
        )
    return out


def as_tensor_dict(params: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a model (its prunable weights) or a mapping name -> tensor; validate it."""
    if isinstance(params, nn.Module):
        return dict(prunable_parameters(params))
    if not isinstance(params, Mapping):
        raise ValueError(
            f"params: expected an nn.Module or a dict of name -> tensor, got {type(params).__name__}"
        )
    if len(params) == 0:
        raise ValueError("params: is empty; there is nothing to prune")
    for name, t in params.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"params[{name!r}]: expected a tensor, got {type(t).__name__}")
    return dict(params)


def ones_masks(params: nn.Module | Mapping[str, torch.Tensor]) -> Masks:
    """All-kept masks for the given parameters (on their devices)."""
    return {n: torch.ones_like(t, dtype=torch.bool) for n, t in as_tensor_dict(params).items()}


def check_masks(params: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` if a mask names an unknown parameter or has the wrong shape or dtype."""
    if isinstance(params, nn.Module):
        named = _param_lookup(params)
    else:
        named = dict(params)
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict of parameter name -> bool tensor, got {type(masks).__name__}")
    for name, m in masks.items():
        if name not in named:
            raise ValueError(f"masks: names {name!r}, which is not a parameter of the model")
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(f"masks[{name!r}]: expected a bool tensor, got {getattr(m, 'dtype', type(m))}")
        if tuple(m.shape) != tuple(named[name].shape):
            raise ValueError(
                f"masks[{name!r}]: shape {tuple(m.shape)} does not match the parameter's {tuple(named[name].shape)}"
            )


def _param_lookup(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    # After torch.nn.utils.prune the stored tensor is weight_orig; zero that one.
    for n in list(named):
        if n.endswith("_orig"):
            named[n[: -len("_orig")]] = named[n]
        # Parametrised layers (torch.nn.utils.parametrize) store "<layer>.parametrizations.weight.original".
        layer, sep, rest = ("." + n).rpartition(".parametrizations.")
        if sep and rest.endswith(".original") and rest.count(".") == 1:
            key = (layer[1:] + "." if layer else "") + rest[: -len(".original")]
            named[key] = named[n]
    return named


@torch.no_grad()
def apply_masks(model: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries in place (``w *= mask``).

    Defined in book/intro.md.
    """
    named = _param_lookup(model) if isinstance(model, nn.Module) else dict(model)
    check_masks(named, masks)
    for name, m in masks.items():
        named[name].mul_(m.to(device=named[name].device, dtype=named[name].dtype))


@dataclass
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    kept: int
    target: float | None = None

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Achieved sparsity per layer and in total. Prints as a table; shows as a table in Jupyter.

    Defined in book/intro.md.
    """

    rows: list[LayerSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Achieved global sparsity: fraction of the masked entries that are pruned."""
        return 1.0 - self.kept / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, float]:
        return {r.name: r.sparsity for r in self.rows}

    def _table(self) -> list[list[str]]:
        head = ["layer", "shape", "weights", "kept", "sparsity", "target"]
        body = [
            [r.name, "×".join(map(str, r.shape)), f"{r.numel:,}", f"{r.kept:,}", f"{r.sparsity:.4f}",
             "" if r.target is None else f"{r.target:.4f}"]
            for r in self.rows
        ]
        body.append(["total", "", f"{self.numel:,}", f"{self.kept:,}", f"{self.sparsity:.4f}", ""])
        return [head] + body

    def __str__(self) -> str:
        table = self._table()
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        table = self._table()
        out = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        out += ["| " + " | ".join(row) + " |" for row in table[1:]]
        return "\n".join(out)

    __repr__ = __str__


def sparsity_report(
    masks: Mapping[str, torch.Tensor],
    targets: Mapping[str, float] | float | None = None,
) -> SparsityReport:
    """One row per masked parameter (name, shape, kept, achieved sparsity, target) plus the total.

    Defined in book/intro.md.
    """
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict of parameter name -> bool tensor, got {type(masks).__name__}")
    rows = []
    for name, m in masks.items():
        if isinstance(targets, Mapping):
            tgt = targets.get(name)
        else:
            tgt = targets
        rows.append(LayerSparsity(name, tuple(m.shape), m.numel(), int(m.sum()), tgt))
    return SparsityReport(rows)


def global_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all masked entries that are pruned."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def count_kept(masks: Mapping[str, torch.Tensor]) -> int:
    """Number of kept (unpruned) entries across all masks."""
    return sum(int(m.sum()) for m in masks.values())


def save_masks(masks: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save masks (moved to CPU) atomically with ``torch.save``; load them with :func:`load_masks`."""
    return atomic_torch_save({n: m.detach().to("cpu", torch.bool) for n, m in masks.items()}, path)


def load_masks(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    device: torch.device | str | None = None,
) -> Masks:
    """Load masks saved by :func:`save_masks`; checked against ``model`` when given."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no mask file at {path}")
    try:
        masks = torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(f"path: {path} is not a readable mask file ({err.__class__.__name__}: {err})") from err
    if not isinstance(masks, dict):
        raise ValueError(f"path: {path} does not hold a dict of masks")
    if model is not None:
        check_masks(model, masks)
        if device is None:
            named = _param_lookup(model)
            masks = {n: m.to(named[n].device) for n, m in masks.items()}
    return masks


def to_torch_prune(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach masks with ``torch.nn.utils.prune.custom_from_mask`` (``weight_orig`` + ``weight_mask``).

    For interoperability with code written against torch's pruning utilities.
    """
    from torch.nn.utils import prune

    check_masks(model, masks)
    modules = dict(model.named_modules())
    for name, m in masks.items():
        mod_name, _, pname = name.rpartition(".")
        prune.custom_from_mask(modules[mod_name], pname, m)
    return model


def from_torch_prune(model: nn.Module, remove: bool = False) -> Masks:
    """Read the ``*_mask`` buffers that ``torch.nn.utils.prune`` registered, as our masks.

    With ``remove=True`` the pruning is also made permanent (``prune.remove``), leaving plain
    parameters with zeros, which is what the rest of pruninglab expects.
    """
    from torch.nn.utils import prune

    masks: Masks = {}
    for mod_name, mod in model.named_modules():
        for bname, buf in list(mod.named_buffers(recurse=False)):
            if bname.endswith("_mask"):
                pname = bname[: -len("_mask")]
                key = f"{mod_name}.{pname}" if mod_name else pname
                masks[key] = buf.detach().to(torch.bool).clone()
                if remove:
                    prune.remove(mod, pname)
    return masks


class MaskHook:
    """Training hook that keeps pruned weights exactly zero: ``w *= mask`` after every optimizer step.

    The training loop's one mask hook: use it with :func:`pruninglab.train.train` (``hooks=[MaskHook(masks)]``).

    ``masks`` is either a fixed dict (saved in and restored from checkpoints) or a function
    ``model -> masks`` for masks that live in the model itself (as buffers, already checkpointed
    with the model). ``module`` (a function ``model -> module``, default the model itself) picks
    the module whose parameter names the masks use, e.g. ``lambda objective: objective.inr``.
    ``FixedMasks`` is the same class under its older name.

    Example::

        masks = global_magnitude_masks(model, 0.9)
        apply_masks(model, masks)
        train(model, loss_fn, loader, optimizer, steps=100, hooks=[MaskHook(masks)])
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | Callable[[nn.Module], Mapping[str, torch.Tensor]],
                 module: Callable[[nn.Module], nn.Module] | None = None):
        if callable(masks):
            self._masks_of = masks
            self.masks = None
        elif isinstance(masks, Mapping):
            self._masks_of = None
            self.masks = dict(masks)
        else:
            raise ValueError(f"masks: expected a dict of parameter name -> bool tensor or a function of the model, "
                             f"got {type(masks).__name__}")
        self._module_of = module

    def on_step_end(self, step: int, model: nn.Module) -> None:
        masks = self._masks_of(model) if self._masks_of is not None else self.masks
        if masks:
            apply_masks(self._module_of(model) if self._module_of is not None else model, masks)

    def state_dict(self) -> dict:
        if self._masks_of is not None:
            return {}
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if self._masks_of is not None:
            return
        self.masks = {n: m.to(self.masks[n].device) if n in self.masks else m for n, m in state["masks"].items()}


FixedMasks = MaskHook

