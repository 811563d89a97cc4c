"""What the two full SA++ pipelines (ImageNet ResNet-50, Criteo MLP) share.

Defined in book/sapp_imagenet.md.

* the pruning methods of the paper's tables, built as training hooks for
  :func:`pruninglab.train.train` (:func:`build_pruner`);
* a thin argparse bridge from a frozen config dataclass (one ``--field`` per field, presets from
  ``--scale``; :func:`config_from_args`);
* run folders, experiment names (one per table row) and the final result record.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import runtime
from ..masks import sparsity_report

#: ``dense`` is the unpruned baseline row of each table; the others are the paper's methods.
METHODS = ("dense", "sapp", "acdc", "magnitude", "powerprop")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    return method


def build_pruner(
    model: nn.Module,
    method: str,
    *,
    sparsity: float,
    block: int,
    total_steps: int,
    schedule: str,
    min_blocks: int = 100,
    layers: list[str] | None = None,
    ramp_c: float = 4.0,
    acdc_keep_values: bool = False,
):
    """The pruner of ``method`` for a run of ``total_steps`` optimizer steps (None for ``dense``).

    Defined in book/sapp_imagenet.md. ``schedule`` is ``"imagenet"`` or ``"criteo"`` (the paper's
    phase fractions, :mod:`pruninglab.pruners.schedule`). Build the optimizer *after* this: SA++
    and PowerProp add or replace parameters of the model.
    """
    check_method(method)
    if method == "dense":
        return None
    from ..pruners.schedule import criteo_phases, imagenet_phases

    if schedule not in ("imagenet", "criteo"):
        raise ValueError(f"schedule: expected 'imagenet' or 'criteo', got {schedule!r}")
    builder = imagenet_phases if schedule == "imagenet" else criteo_phases

    def phases_of(kind: str):
        return builder(total_steps, kind)  # raises a clear ValueError when the run is too short

    common = dict(sparsity=sparsity, block_size=block, min_blocks=min_blocks, layers=layers)
    if method == "sapp":
        from ..pruners.sequential_attention import SequentialAttentionPruner

        return SequentialAttentionPruner(model, phases=phases_of("sapp"), ramp_c=ramp_c, **common)
    from ..pruners import acdc

    if method == "acdc":
        return acdc.ACDCPruner(model, phases=phases_of("acdc"), keep_values=acdc_keep_values, **common)
    if method == "magnitude":
        return acdc.BlockMagnitudePruner(model, phases=phases_of("magnitude"), **common)
    return acdc.PowerPropPruner(model, phases=phases_of("magnitude"), **common)


def experiment_name(prefix: str, method: str, block: int, sparsity: float) -> str:
    """One name per table row, e.g. ``sapp-criteo_sapp_b10_s90`` (``sapp-criteo_dense`` for the baseline)."""
    if method == "dense":
        return f"{prefix}_dense"
    pct = f"{sparsity * 100:g}".replace(".", "p")
    return f"{prefix}_{method}_b{block}_s{pct}"


def default_run_dir(experiment: str, scale_name: str) -> Path:
    """Where checkpoints and the CSV log of a run go unless ``--out`` says otherwise.

    ``$PRUNINGLAB_RUNS/<scale>/<experiment>`` if set, else ``runs/<scale>/<experiment>`` in the
    checkout (git-ignored: checkpoints are large) or in the current folder.
    """
    base = os.environ.get("PRUNINGLAB_RUNS")
    root = Path(base) if base else (runtime.PROJECT_ROOT or Path.cwd()) / "runs"
    return root / scale_name / experiment


def finish_pruning(model: nn.Module, pruner) -> dict[str, Any]:
    """Finalize the pruner (fold masks into plain weights) and describe the achieved sparsity.

    Returns ``{"masks", "report", "pruned_layers", "layer_sparsity", "effective_sparsity"}``;
    ``effective_sparsity`` counts every conv/linear weight of the model (unpruned layers as dense),
    the quantity the paper's ImageNet table reports for large blocks.
    """
    if pruner is None:
        return {"masks": {}, "report": None, "pruned_layers": 0, "layer_sparsity": {}, "effective_sparsity": 0.0}
    from ..pruners.blocks import effective_sparsity

    masks = pruner.finalize()
    report = sparsity_report(masks, targets=pruner.sparsity)
    return {
        "masks": masks,
        "report": report,
        "pruned_layers": len(masks),
        "layer_sparsity": report.as_dict(),
        "effective_sparsity": effective_sparsity(model, masks),
    }


def store_result(
    experiment: str,
    metrics: dict,
    config: Any,
    *,
    scale_name: str,
    dev: torch.device,
    wall_time_s: float,
    run_dir: Path,
    masks: dict | None = None,
) -> Path:
    """Save ``result.json`` (metrics, config, provenance) through the results store, with the CSV log and masks.

    Full-scale results land in ``results/<experiment>/`` (small files, meant to be committed);
    small ones in the git-ignored cache.
    """
    from ..masks import save_masks

    path = runtime.save_result(experiment, metrics, config, scale_name=scale_name, dev=dev, wall_time_s=wall_time_s)
    log = run_dir / "metrics.csv"
    if log.exists():
        shutil.copyfile(log, path.parent / "metrics.csv")
    if masks:
        save_masks(masks, run_dir / "masks.pt")  # with the checkpoints: masks of ResNet-50 are ~25 MB
    return path


# --------------------------------------------------------------------------- config <-> argparse


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of ``config_cls`` (default None = take the preset's value)."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "") if f.metadata else ""
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif kind.startswith("int"):
            parser.add_argument(flag, dest=f.name, type=_int_or_none, default=None, help=helptext)
        elif kind.startswith("float"):
            parser.add_argument(flag, dest=f.name, type=_float_or_none, default=None, help=helptext)
        else:
            parser.add_argument(flag, dest=f.name, type=str, default=None, help=helptext)


def _int_or_none(s: str):
    return None if s.lower() == "none" else int(s)


def _float_or_none(s: str):
    return None if s.lower() == "none" else float(s)


def config_from_args(config_cls: type, args: argparse.Namespace, scale_name: str):
    """The preset of ``scale_name`` (``config_cls.small()`` / ``.full()``) with the given options replaced."""
    preset = config_cls.full() if scale_name == "full" else config_cls.small()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
               if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **changes)


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def check_fraction(name: str, value: Any, low: float = 0.0, high: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ValueError(f"{name}: expected a number in [{low}, {high}), got {value!r}")


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Use ``n`` torch CPU threads inside the block (None: leave the setting alone), then restore it."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def per_rank_batch(batch_size: int, world: int, accumulate: int) -> int:
    """The batch each process loads per micro-step so that ``world x accumulate x it = batch_size``."""
    if batch_size % (world * accumulate):
        raise ValueError(
            f"batch_size: {batch_size} is not divisible by {world} process(es) x accumulate {accumulate}; "
            "choose a batch size that is"
        )
    return batch_size // (world * accumulate)


def lr_lambda_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then a cosine from 1 to 0 at ``total_steps``."""
    import math

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def lr_lambda_exponential(total_steps: int, lr: float, lr_final: float) -> Callable[[int], float]:
    """Exponential decay from ``lr`` to ``lr_final`` over ``total_steps`` (as a multiplier of ``lr``)."""
    ratio = lr_final / lr

    def f(step: int) -> float:
        return ratio ** (min(step, total_steps) / max(1, total_steps))

    return f
