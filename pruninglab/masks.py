"""Masks as plain boolean tensors keyed by parameter name.

Defined in book/intro.md (first use) and book/sharpness.md.

A mask is ``True`` where a weight is **kept** and ``False`` where it is pruned. Masks are a
``dict[str, torch.BoolTensor]`` whose keys are names from ``model.named_parameters()`` (or the
keys of a plain parameter dict, as in functional code). Masks alone change neither the speed
nor the size of a model; see book/block_sparse_speed.md for that.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .runtime import atomic_torch_save

Masks = dict[str, torch.Tensor]


class SparsityWarning(UserWarning):
    """A mask whose achieved sparsity is not what was asked, or that nearly empties a layer."""


#: A layer *collapses* when it keeps no weight, or keeps far fewer than the model's average share:
#: less than ``COLLAPSE_RELATIVE`` of what the global kept fraction would give it, or fewer than
#: ``COLLAPSE_MIN_KEPT`` weights while keeping under a tenth of that share. A collapsed layer
#: (e.g. ResNet-50's ``fc.weight`` at 90 % global magnitude sparsity at initialisation) makes the
#: network's output (nearly) constant.
COLLAPSE_MIN_KEPT = 8
COLLAPSE_RELATIVE = 0.01


def is_collapsed(kept: int, numel: int, global_density: float) -> bool:
    """Whether a layer that keeps ``kept`` of ``numel`` weights has collapsed (see :data:`COLLAPSE_MIN_KEPT`)."""
    if numel == 0 or kept >= numel:
        return False
    if kept == 0:
        return True
    expected = global_density * numel
    return kept < COLLAPSE_RELATIVE * expected or (kept < COLLAPSE_MIN_KEPT and kept < 0.1 * expected)


def collapsed_layers(masks: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the layers of ``masks`` that :func:`is_collapsed` (relative to the masks' global density)."""
    counts = {n: (int(m.sum()), m.numel()) for n, m in masks.items()}
    total = sum(c[1] for c in counts.values())
    density = sum(c[0] for c in counts.values()) / total if total else 1.0
    return [n for n, (k, t) in counts.items() if is_collapsed(k, t, density)]


def warn_collapsed(masks: Mapping[str, torch.Tensor], stacklevel: int = 3, min_kept: int = 0) -> list[str]:
    """Warn (:class:`SparsityWarning`) naming every collapsed layer of ``masks``; return their names.

    Layers that keep at least ``min_kept > 0`` weights (a floor the caller asked for) are not warned about.
    """
    names = collapsed_layers(masks)
    for n in names:
        m = masks[n]
        if min_kept and int(m.sum()) >= min(min_kept, m.numel()):
            continue
        warnings.warn(
            f"masks[{n!r}]: layer collapse: keeps {int(m.sum())} of {m.numel()} weights, far fewer than the "
            "model's average share; its output is (nearly) constant. Pass min_kept_per_layer=... to keep a "
            "minimum per layer, or prune layer-wise",
            SparsityWarning, stacklevel=stacklevel,
        )
    return names


def check_weight_dtype(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` unless ``t`` is a real floating-point tensor (not complex, int or bool)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.is_complex():
        raise ValueError(f"{name}: is complex ({t.dtype}); pruning ranks real weights, prune .real/.imag "
                         "or the magnitudes yourself")
    if not t.is_floating_point():
        raise ValueError(f"{name}: has dtype {t.dtype}; expected real floating-point weights")


def check_finite(named: Mapping[str, torch.Tensor], what: str = "params") -> None:
    """ValueError naming the first tensor of ``named`` with NaN/Inf entries (one host sync in all)."""
    bad = [(n, ~torch.isfinite(t.detach()).all()) for n, t in named.items()]
    if not bad:
        return
    if bool(torch.stack([b.to(bad[0][1].device) for _, b in bad]).any()):
        for n, b in bad:
            if bool(b):
                raise ValueError(f"{what}[{n!r}]: contains NaN or Inf values; cannot rank weights by magnitude")

#: Layer types whose ``weight`` is prunable by default (conv and linear weights; biases and norms are not).
PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(
    model: nn.Module,
    layer_types: tuple[type[nn.Module], ...] = PRUNABLE_LAYERS,
    include_bias: bool = False,
) -> dict[str, nn.Parameter]:
    """The parameters pruned by default: weights of conv/linear layers, in module order.

    Defined in book/sharpness.md. A tensor shared by several layers (tied weights) appears once, under
    the first name that reaches it; masks keyed by any of its names apply to it.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, layer_types):
            prefix = f"{mod_name}." if mod_name else ""
            # torch.nn.utils.prune renames weight -> weight_orig; accept both conventions.
            for pname in ("weight", "weight_orig") + (("bias", "bias_orig") if include_bias else ()):
                p = mod._parameters.get(pname)
                if p is None and parametrize.is_parametrized(mod, pname):
                    # torch.nn.utils.parametrize (e.g. the SA++ block attention): the stored tensor.
                    p = mod.parametrizations[pname].original
                if p is not None and id(p) not in seen:
                    # a tensor shared by two layers (tied weights) is listed once, under its first name
                    seen.add(id(p))
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
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in params.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"params[{name!r}]: expected a tensor, got {type(t).__name__}")
        if id(t) not in seen:  # the same tensor under two names: once
            seen.add(id(t))
            out[name] = t
    return out


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
    seen: dict[int, str] = {}
    for name, m in masks.items():
        if name not in named:
            raise ValueError(f"masks: names {name!r}, which is not a parameter of the model")
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(f"masks[{name!r}]: expected a bool tensor, got {getattr(m, 'dtype', type(m))}")
        if tuple(m.shape) != tuple(named[name].shape):
            raise ValueError(
                f"masks[{name!r}]: shape {tuple(m.shape)} does not match the parameter's {tuple(named[name].shape)}"
            )
        first = seen.setdefault(id(named[name]), name)
        if first != name and masks[first] is not m and not torch.equal(masks[first], m.to(masks[first].device)):
            raise ValueError(
                f"masks[{name!r}]: {name!r} and {first!r} are the same (tied) tensor but their masks differ"
            )


def _param_lookup(model: nn.Module) -> dict[str, torch.Tensor]:
    # remove_duplicate=False: a tied tensor is reachable under every name (embedding and output layer).
    named = dict(model.named_parameters(remove_duplicate=False))
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
def apply_masks(
    model: nn.Module | Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    *,
    allow_nonfinite: bool = False,
) -> None:
    """Set the pruned entries to exactly 0 in place, whatever they held (NaN and Inf included).

    Defined in book/intro.md.

    Pruned entries are overwritten (``masked_fill``), not multiplied: ``NaN * 0`` is NaN. A NaN or
    Inf among the *kept* entries is an error naming the parameter, unless ``allow_nonfinite=True``
    (which also skips the check's one host sync, as the training hooks do after every step). A
    tied tensor may be named by any of its names.
    """
    named = _param_lookup(model) if isinstance(model, nn.Module) else dict(model)
    check_masks(named, masks)
    keeps = {n: m.to(device=named[n].device) for n, m in masks.items()}
    if not allow_nonfinite and keeps:
        # Checked before anything changes, with one host sync for all parameters.
        bad = [(~torch.isfinite(named[n]) & k).any() for n, k in keeps.items()]
        if bool(torch.stack([b.cpu() if b.device != bad[0].device else b for b in bad]).any()):
            for n, b in zip(keeps, bad):
                if bool(b):
                    raise ValueError(
                        f"params[{n!r}]: has NaN or Inf values among its kept (unpruned) entries; "
                        "fix the weights, or pass allow_nonfinite=True"
                    )
    for n, k in keeps.items():
        named[n].masked_fill_(~k, 0)  # exactly 0, even where the weight was NaN (NaN * 0 would stay NaN)


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
    """

    rows: list[LayerSparsity] = field(default_factory=list)

    @property
    def collapsed(self) -> list[str]:
        """Layers that keep (almost) nothing (see :func:`is_collapsed`); marked in the table."""
        density = self.kept / self.numel if self.numel else 1.0
        return [r.name for r in self.rows if is_collapsed(r.kept, r.numel, density)]

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
        collapsed = set(self.collapsed)
        head = ["layer", "shape", "weights", "kept", "sparsity", "target", "note"]
        body = [
            [r.name, "×".join(map(str, r.shape)), f"{r.numel:,}", f"{r.kept:,}", f"{r.sparsity:.4f}",
             "" if r.target is None else f"{r.target:.4f}", "COLLAPSED" if r.name in collapsed else ""]
            for r in self.rows
        ]
        body.append(["total", "", f"{self.numel:,}", f"{self.kept:,}", f"{self.sparsity:.4f}", "",
                     f"{len(collapsed)} collapsed" if collapsed else ""])
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

    Defined in book/intro.md. Layers that keep (almost) nothing are marked ``COLLAPSED``.
    """
    _check_bool_masks(masks)
    rows = []
    for name, m in masks.items():
        if isinstance(targets, Mapping):
            tgt = targets.get(name)
        else:
            tgt = targets
        rows.append(LayerSparsity(name, tuple(m.shape), m.numel(), int(m.sum()), tgt))
    return SparsityReport(rows)


def _check_bool_masks(masks: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks: expected a dict of parameter name -> bool tensor, got {type(masks).__name__}")
    for name, m in masks.items():
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise ValueError(
                f"masks[{name!r}]: expected a bool tensor (True = kept), got {getattr(m, 'dtype', type(m).__name__)}"
            )


def global_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all masked entries that are pruned."""
    _check_bool_masks(masks)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def count_kept(masks: Mapping[str, torch.Tensor]) -> int:
    """Number of kept (unpruned) entries across all masks."""
    return sum(int(m.sum()) for m in masks.values())


def save_masks(masks: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save masks (moved to CPU) atomically with ``torch.save``; load them with :func:`load_masks`.

    Masks must be bool tensors (a float or int mask is refused rather than silently cast).
    """
    _check_bool_masks(masks)
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
    """Training hook that keeps pruned weights exactly zero after every optimizer step.

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
            # No finiteness check here: it would sync the host every step (the loop watches the loss).
            apply_masks(self._module_of(model) if self._module_of is not None else model, masks,
                        allow_nonfinite=True)

    def state_dict(self) -> dict:
        if self._masks_of is not None:
            return {}
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if self._masks_of is not None:
            return
        self.masks = {n: m.to(self.masks[n].device) if n in self.masks else m for n, m in state["masks"].items()}


FixedMasks = MaskHook

