"""The SA++ driver: one training/pruning pipeline, two task specifications (ImageNet, Criteo).

A task (:class:`SappTask`, in :mod:`~pruninglab.experiments.sapp_imagenet` and
:mod:`~pruninglab.experiments.sapp_criteo`) says what differs between the paper's two settings:
the data, the model, the optimizer and schedule, the evaluation and the metrics that describe a run.
Everything else is here, once: the pruning methods of the paper's tables (:func:`build_pruner`),
the run through the shared training loop, finalizing the masks, and the result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import _checks, runtime
from ..masks import sparsity_report
from . import base
from .base import ExperimentConfig, option

#: ``dense`` is the unpruned baseline row of each table; the others are the paper's methods.
METHODS = ("dense", "sapp", "acdc", "magnitude", "powerprop")


@dataclass(frozen=True)
class SappConfig(ExperimentConfig):
    """The settings both SA++ tasks share; each task's config derives from this one.

    [P] = the paper's value, [R] = our choice where it is silent.
    """

    method: str = option("sapp", "dense|sapp|acdc|magnitude|powerprop")
    block: int = option(16, "block size B")
    sparsity: float = option(0.9, "nominal per-layer block sparsity")
    epochs: float = option(1.0, "epochs (ignored when --steps is given)")
    steps: int | None = option(None, "optimizer steps (overrides --epochs)")
    batch_size: int = option(256, "global batch (all processes, all micro-batches)")
    accumulate: int = option(1, "micro-batches per optimizer step (e.g. 8 on one GPU)")
    lr: float = option(0.1, "peak learning rate")
    weight_decay: float = option(0.0, "weight decay of the network's weights")
    eval_batch_size: int = option(256, "examples per evaluation batch and process")
    eval_every: int | None = option(None, "evaluate every N steps (default: the task's)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (and at phase changes)")
    min_blocks: int = option(100, "[P] layers with fewer blocks stay dense")
    ramp_c: float = option(4.0, "[P] SA++ sparsification ramp constant c")
    # Both tasks use these two at full scale; their small presets turn them off.
    clip_attention: bool = option(True, "[P] SA++: clamp the attention A to [1-s, 1/(1-s)] (App. C.1; our "
                                         "reading of its clipping rule)")
    logit_weight_decay: float = option(1e-4, "[P] SA++: weight decay on the attention logits (App. C.1; "
                                             "the value 1e-4 is ours [R])")
    workers: int = option(0, "DataLoader worker processes per GPU")
    amp: bool = option(True, "bf16 autocast on CUDA (ignored on CPU)")
    cpu_threads: int | None = option(None, "torch CPU threads during the run (default: leave as is)")
    seed: int = option(0, "random seed")

    def __post_init__(self):
        _checks.one_of(self.method, "method", METHODS)
        for name in ("block", "batch_size", "accumulate", "eval_batch_size", "checkpoint_every"):
            _checks.positive_int(getattr(self, name), name)
        for name in ("steps", "eval_every", "cpu_threads"):
            _checks.positive_int(getattr(self, name), name, allow_none=True)
        _checks.nonnegative_int(self.min_blocks, "min_blocks")
        _checks.nonnegative_int(self.workers, "workers")
        _checks.nonnegative_int(self.seed, "seed")
        _checks.fraction(self.sparsity, "sparsity")
        _checks.positive_float(self.epochs, "epochs")
        _checks.positive_float(self.lr, "lr")
        for name in ("weight_decay", "logit_weight_decay", "ramp_c"):
            _checks.nonnegative_float(getattr(self, name), name)
        self._check_task()

    def _check_task(self) -> None:
        """Checks of the task's own fields (overridden by each task's config)."""


def check_method(method: str) -> str:
    return _checks.one_of(method, "method", METHODS)


def criteo_schedule(total_steps: int, method: str, pairs: int = 10):
    """The Criteo phases with ``pairs`` sparse-dense pairs between 20% dense and 20% final sparse.

    ``pairs=5`` is :func:`pruninglab.pruners.schedule.criteo_phases`
    (ten phases of 6%); ``pairs=10`` reads the paper's "10 sparse-dense phases" as ten pairs of 3%
    each. SA++ (our reconstruction) turns each pair but the last into sparsify/sparse/dense thirds
    and the last into one sparsification; magnitude pruning does not use pairs.
    """
    from ..pruners.schedule import phases_from_fractions

    _checks.positive_int(pairs, "acdc_pairs")
    F = Fraction
    width = F(60, 100) / pairs
    if method == "magnitude":
        parts = [("dense", F(80, 100)), ("sparse", F(20, 100))]
    elif method == "acdc":
        parts = [("dense", F(20, 100))] + [(k, width / 2) for _ in range(pairs) for k in ("sparse", "dense")]
        parts += [("sparse", F(20, 100))]
    else:
        parts = [("dense", F(20, 100))] + [(k, width / 3) for _ in range(pairs - 1)
                                             for k in ("sparsify", "sparse", "dense")]
        parts += [("sparsify", width), ("sparse", F(20, 100))]
    return phases_from_fractions(total_steps, parts)


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
    clip_attention: bool = False,
    pairs: int = 5,
):
    """The pruner of ``method`` for a run of ``total_steps`` optimizer steps (None for ``dense``).

    ``schedule`` is ``"imagenet"`` or ``"criteo"`` (the paper's
    phase fractions; ``pairs`` sparse-dense pairs on Criteo, :func:`criteo_schedule`). Build the
    optimizer *after* this: SA++ and PowerProp add or replace parameters of the model.
    """
    check_method(method)
    if method == "dense":
        return None
    from ..pruners.schedule import imagenet_phases

    _checks.one_of(schedule, "schedule", ("imagenet", "criteo"))

    def phases_of(kind: str):  # raises a clear ValueError when the run is too short
        if schedule == "imagenet":
            return imagenet_phases(total_steps, kind)
        return criteo_schedule(total_steps, kind, pairs)

    common = dict(sparsity=sparsity, block_size=block, min_blocks=min_blocks, layers=layers)
    if method == "sapp":
        from ..pruners.sequential_attention import SequentialAttentionPruner

        return SequentialAttentionPruner(model, phases=phases_of("sapp"), ramp_c=ramp_c,
                                         clip_attention=clip_attention, **common)
    from ..pruners import acdc

    if method == "acdc":
        return acdc.ACDCPruner(model, phases=phases_of("acdc"), keep_values=acdc_keep_values, **common)
    if method == "magnitude":
        return acdc.BlockMagnitudePruner(model, phases=phases_of("magnitude"), **common)
    return acdc.PowerPropPruner(model, phases=phases_of("magnitude"), **common)


def parameter_groups(model: nn.Module, weight_decay: float, logit_weight_decay: float) -> list[dict]:
    """Optimizer groups: the network's weights with ``weight_decay``, SA++'s attention logits with ``logit_weight_decay``."""
    logits = [p for n, p in model.named_parameters() if n.endswith(".logits")]
    ids = {id(p) for p in logits}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": weight_decay}]
    if logits:
        groups.append({"params": logits, "weight_decay": logit_weight_decay})
    return groups


def experiment_name(prefix: str, method: str, block: int, sparsity: float) -> str:
    """One name per table row, e.g. ``sapp-criteo_sapp_b10_s90`` (``sapp-criteo_dense`` for the baseline)."""
    if method == "dense":
        return f"{prefix}_dense"
    pct = f"{sparsity * 100:g}".replace(".", "p")
    return f"{prefix}_{method}_b{block}_s{pct}"


def finish_pruning(model: nn.Module, pruner) -> dict[str, Any]:
    """Finalize the pruner (fold masks into plain weights) and describe the achieved sparsity.

    Returns ``{"masks", "pruned_layers", "layer_sparsity", "effective_sparsity"}``;
    ``effective_sparsity`` counts every conv/linear weight of the model (unpruned layers as dense),
    the quantity the paper's ImageNet table reports for large blocks.
    """
    if pruner is None:
        return {"masks": {}, "pruned_layers": 0, "layer_sparsity": {}, "effective_sparsity": 0.0}
    from ..pruners.blocks import effective_sparsity

    masks = pruner.finalize()
    report = sparsity_report(masks, targets=pruner.sparsity)
    return {"masks": masks, "pruned_layers": len(masks), "layer_sparsity": report.as_dict(),
            "effective_sparsity": effective_sparsity(model, masks)}


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskSetup:
    """What a task builds for one run: the model (``net``: the module whose weights are pruned),
    the training data (``len(train_data)`` micro-batches per epoch), the evaluation, the optimizer
    factory, the loss, and the stored extras."""

    net: nn.Module
    train_data: Any
    evaluate: Callable[[nn.Module], dict]
    make_optimizer: Callable[[nn.Module, int, int], tuple[torch.optim.Optimizer, Any]]
    loss_fn: Callable
    stored: dict
    data_metrics: Callable[[], dict]
    samples_name: str
    log_every_cap: int
    default_eval_every: Callable[[int], int]
    pruned_layers: list[str] | None = None
    model: nn.Module | None = None  # what the loop trains (e.g. with a channels-last hook); default net


@dataclass(frozen=True)
class SappTask:
    """One of the paper's SA++ settings: its name, config class, schedule and set-up.

    ``headline`` is the metric also recorded before finalizing; ``summary`` the format of the final
    line, filled with the metrics."""

    name: str
    config_cls: type
    schedule: str
    resolve_data: Callable[[str | None], Path]
    setup: Callable[[Any, Path, torch.device, int], TaskSetup]
    headline: str
    summary: str
    description: str


def _identity(task: SappTask, config, data: Path, sc: str) -> dict:
    return base.identity_record(task.name, sc, config, str(data))


def _train(task: SappTask, config, ctx: base.RunContext) -> dict:
    from ..train import dist_info, distributed_device, init_distributed, train

    root = task.resolve_data(ctx.data).resolve()
    dev = distributed_device(ctx.device)
    _, world = init_distributed(dev)
    runtime.seed_everything(config.seed)
    s = task.setup(config, root, dev, world)
    steps_per_epoch = len(s.train_data) // config.accumulate
    if steps_per_epoch < 1:
        raise ValueError(f"accumulate: {config.accumulate} micro-batches per step exceed the "
                         f"{len(s.train_data)} of an epoch")
    total_steps = config.steps or max(1, int(round(config.epochs * steps_per_epoch)))
    pruner = build_pruner(
        s.net, config.method, sparsity=config.sparsity, block=config.block, total_steps=total_steps,
        schedule=task.schedule, min_blocks=config.min_blocks, layers=s.pruned_layers, ramp_c=config.ramp_c,
        acdc_keep_values=getattr(config, "acdc_keep_values", False), clip_attention=config.clip_attention,
        pairs=getattr(config, "acdc_pairs", 5))
    model = s.model or s.net
    optimizer, scheduler = s.make_optimizer(model, total_steps, steps_per_epoch)
    stored = {**_identity(task, config, root, ctx.scale), "total_steps": total_steps, **s.stored}
    res = train(
        model, s.loss_fn, s.train_data, optimizer, steps=total_steps, scheduler=scheduler,
        hooks=[pruner] if pruner is not None else [], evaluate=s.evaluate,
        eval_every=config.eval_every or s.default_eval_every(steps_per_epoch),
        log_every=max(1, min(s.log_every_cap, steps_per_epoch)), out_dir=ctx.out_dir,
        checkpoint_every=config.checkpoint_every, resume=ctx.resume, config=stored, dev=dev, amp=config.amp,
        progress=ctx.progress, stop_after=ctx.stop_after, desc=ctx.run_id or task.name,
        accumulate=config.accumulate, distributed_eval=True,
    )
    info = {"experiment": task.name, "completed": res.step == total_steps, "run_dir": ctx.out_dir,
            "model": s.net, "masks": {}, "metrics": {}, "result_path": None, "config": stored,
            "pruner_layers": list(pruner.layouts) if pruner is not None else []}
    if res.step < total_steps:
        return info
    in_loop = dict(res.metrics)
    pruned = finish_pruning(s.net, pruner)
    final = s.evaluate(model)  # the finalized model: plain weights with exact zeros
    samples = res.steps_run * config.batch_size
    info["metrics"] = {
        **final,
        f"{task.headline}_before_finalize": in_loop.get(task.headline),
        "effective_sparsity": pruned["effective_sparsity"],
        "pruned_layers": pruned["pruned_layers"],
        "layer_sparsity": pruned["layer_sparsity"],
        "steps": total_steps,
        **s.data_metrics(),
        "world_size": world,
        f"train_{s.samples_name}_per_s": samples / res.train_time_s if res.steps_run and res.train_time_s else None,
    }
    info["masks"] = pruned["masks"]
    if pruned["masks"] and dist_info()[0] == 0:
        from ..masks import save_masks

        save_masks(pruned["masks"], ctx.out_dir / "masks.pt")  # masks of ResNet-50 are ~25 MB
    return info


def make_run(task: SappTask) -> Callable[..., dict]:
    """The notebook entry point of a task: train, prune, evaluate; write ``result.json`` in the run folder."""

    def run(config, data: str | None = None, *, out: str | None = None, resume: bool = False,
            seed: int | None = None, device: str | None = None, scale_name: str | None = None,
            progress: bool | None = None, stop_after: int | None = None) -> dict:
        if not isinstance(config, task.config_cls):
            raise ValueError(f"config: expected a {task.config_cls.__name__}, got {type(config).__name__}")
        if seed is not None:
            config = dataclasses.replace(config, seed=seed)
        sc = runtime.scale(scale_name)
        root = task.resolve_data(data).resolve()
        record = _identity(task, config, root, sc)
        rid = runtime.run_id(task.name, record, config.seed)
        run_dir = Path(out) if out is not None else runtime.runs_root() / task.name / rid
        ctx = base.RunContext(experiment=task.name, scale=sc, data=str(root), out_dir=run_dir, resume=resume,
                              device=device, progress=progress, stop_after=stop_after, run_id=rid)
        with base.cpu_threads(config.cpu_threads):
            info = _train(task, config, ctx)
        from ..train import dist_info

        if info["completed"] and dist_info()[0] == 0:
            info["result_path"] = runtime.save_result(
                task.name, info["metrics"], record, scale_name=sc, out_dir=run_dir, run_id=rid,
                extra={"seed": config.seed, "completed": True, "paths": {"run_dir": str(run_dir)}})
        return info

    run.__doc__ = (f"Train, prune and evaluate one {task.name} configuration; return ``{{experiment, completed, "
                   "metrics, result_path, run_dir, model, masks, pruner_layers, config}}``.\n\n"
                   "``out`` is the run folder (default: by the run-identity rule). With ``stop_after`` the run "
                   "may end early (``completed=False``, nothing stored), as a crash would; ``resume=True`` "
                   "continues it. ``seed`` overrides ``config.seed``.")
    return run


def make_experiment(task: SappTask) -> base.Experiment:
    """The command-line experiment of a task (``python -m pruninglab <task.name>``)."""

    def execute(config, ctx: base.RunContext) -> tuple[bool, dict]:
        with base.cpu_threads(config.cpu_threads):
            info = _train(task, config, ctx)
        return info["completed"], info["metrics"]

    return base.Experiment(name=task.name, description=task.description, config_cls=task.config_cls,
                           execute=execute, data="path", distributed=True,
                           summarize=lambda metrics: task.summary.format(**metrics),
                           resolve_data=lambda data, config: task.resolve_data(data))


def entry_points(task: SappTask):
    """``(run, experiment, main)`` of a task: the notebook function, the CLI experiment, the subcommand."""
    spec = make_experiment(task)

    def main(argv: list[str] | None = None) -> int:
        return base.main(spec, argv)

    main.__doc__ = f"``python -m pruninglab {task.name} --data PATH --method M --block B --sparsity S``."
    return make_run(task), spec, main
