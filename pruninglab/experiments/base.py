"""The one skeleton every experiment uses: config pattern, command line, run identity, result.

Defined in book/limit_experiments.md.

* **Config**: a frozen dataclass deriving from :class:`ExperimentConfig`, one field per setting,
  each declared with :func:`option` (default and help text; ``[P]`` marks the paper's value, ``[R]``
  our choice where the paper is silent), with a ``seed`` field, presets :meth:`~ExperimentConfig.small`
  / :meth:`~ExperimentConfig.full`, :meth:`~ExperimentConfig.for_scale`, and validation in
  ``__post_init__`` through :mod:`pruninglab._checks`.
* **Command line**: :func:`main` gives every experiment the same options (``--scale --data --out
  --resume --new-attempt --config --plan --device --no-progress --overwrite-result --version``) and
  one ``--field-name`` per config field; options an experiment cannot use are refused.
* **Run identity**: a run is ``<runs root>/<experiment>/<experiment>-<hash8>-s<seed>``, where the hash
  covers the full resolved config (scale, seed, absolute data path) and the runs root is ``--out``,
  else ``$PRUNINGLAB_RUNS``, else ``./runs``. The folder holds ``config.json``, the checkpoints,
  ``metrics.csv`` and ``result.json``. The same command twice is refused; ``--resume`` continues the
  run, ``--new-attempt`` starts ``...-a2`` beside it, and ``--config <run>/config.json`` re-runs
  (or with ``--resume`` continues) a recorded run exactly.
* **Result**: :class:`RunResult` (experiment, run id, seed, config, metrics, completed, provenance,
  paths), written to the run folder and to the results store under the same identity.

An experiment module defines its config class, an ``execute(config, ctx) -> (completed, metrics)``
function and one :class:`Experiment` value; its ``main(argv)`` is ``base.main(EXPERIMENT, argv)``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import runtime

__all__ = [
    "ExperimentConfig", "option", "RunContext", "RunResult", "Experiment", "main", "add_config_arguments",
    "identity_record", "launch_command", "recorded_results", "format_recorded", "cpu_threads",
    "lr_lambda_cosine", "lr_lambda_exponential", "per_rank_batch",
]


# --------------------------------------------------------------------------- the config pattern


def option(default: Any = dataclasses.MISSING, help: str = "", **kw) -> Any:  # noqa: A002
    """A config field with its help text (``[P]`` the paper's value, ``[R]`` our choice)."""
    if isinstance(default, (list, dict, set)):
        raise ValueError("default: use a tuple (configs are frozen and hashed), not a mutable container")
    return field(default=default, metadata={"help": help}, **kw)


class ExperimentConfig:
    """Mixin of every experiment config (a frozen dataclass): presets, scale switch, (de)serialisation.

    Subclasses override :meth:`small` / :meth:`full` (both accept field overrides as keywords) and
    validate in ``__post_init__``.
    """

    @classmethod
    def small(cls, **overrides):
        """The CPU-sized preset (minutes on 2 cores)."""
        return cls(**overrides)

    @classmethod
    def full(cls, **overrides):
        """The paper's protocol (GPU)."""
        return cls(**overrides)

    @classmethod
    def for_scale(cls, scale: str | None, *args, **overrides):
        """``full(...)`` at ``scale == "full"``, else ``small(...)`` (``scale`` None: ``$PRUNINGLAB_SCALE``)."""
        preset = cls.full if runtime.scale(scale) == "full" else cls.small
        return preset(*args, **overrides)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """The config whose :meth:`as_dict` (after a JSON round trip) was ``values``; unknown keys are refused."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)} for {cls.__name__}; "
                             f"expected some of {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _from_json(v, hints.get(k)) for k, v in values.items()})


def _from_json(value: Any, hint: Any) -> Any:
    if isinstance(value, list) and "tuple" in str(hint):
        return tuple(_from_json(v, None) for v in value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _kind(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    for kind in ("tuple[int", "tuple[float", "tuple[str", "bool", "int", "float"):
        if kind in text:
            return kind
    return "str"


def _finite(text: str, name: str, cast: Callable) -> Any:
    if text.strip().lower() == "none":
        return None
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if cast is int else 'a number'}, "
                                         f"got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _arg_type(kind: str) -> Callable[[str], Any]:
    if kind.startswith("tuple"):
        inner = {"tuple[int": int, "tuple[float": float, "tuple[str": str}[kind]

        def parse(text: str):
            if text.strip().lower() == "none":
                return None
            parts = [p for p in text.split(",") if p.strip()]
            return tuple(p.strip() if inner is str else _finite(p, "", inner) for p in parts)
        return parse
    if kind in ("int", "float"):
        cast = int if kind == "int" else float
        return lambda text: _finite(text, "", cast)
    return lambda text: None if text.lower() == "none" else text


def _seed(text: str) -> int:
    value = _finite(text, "", int)
    if value is not None and not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {text!r}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--field-name`` option per field of ``config_cls`` (default None = the preset's value).

    Lists (tuple fields) are written comma-separated (``--milestones 60,120,160``), booleans as
    ``--flag`` / ``--no-flag``, and ``none`` clears an optional field.
    """
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"settings ({config_cls.__name__}; default: the --scale preset; "
                                      "[P] the paper's value, [R] our choice)")
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        helptext = (f.metadata.get("help", "") if f.metadata else "").replace("%", "%%")
        kind = _kind(hints.get(f.name, f.type))
        if f.name == "seed" and kind == "int":  # checked while parsing: before any data is looked for
            group.add_argument(flag, dest=f.name, type=_seed, default=None, help=helptext, metavar="SEED")
        elif kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=helptext)
        else:
            group.add_argument(flag, dest=f.name, type=_arg_type(kind), default=None, help=helptext,
                               metavar=f.name.upper() if not kind.startswith("tuple") else "A,B,...")


# --------------------------------------------------------------------------- helpers shared by drivers


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


# --------------------------------------------------------------------------- run, result, experiment


@dataclass
class RunContext:
    """What the skeleton hands an experiment's ``execute``: where the run lives and how to run it."""

    experiment: str
    scale: str
    data: str | None
    out_dir: Path
    resume: bool = False
    device: str | None = None
    progress: bool | None = None
    stop_after: int | None = None
    run_id: str = ""


@dataclass
class RunResult:
    """The one result type of every experiment run from the command line.

    ``config`` is the identity record (experiment, scale, seed, resolved
    data, config fields); ``provenance`` says where and how it ran; ``paths`` names the run folder and
    the files in it. Written as ``result.json`` in the run folder and in the results store, the same
    record in both (strict JSON: non-finite numbers are ``null``).
    """

    experiment: str
    run_id: str
    seed: int
    config: dict
    metrics: dict
    completed: bool
    scale: str = "small"
    provenance: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "RunResult":
        """The result of a stored ``result.json`` (see :func:`pruninglab.runtime.save_result`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass(frozen=True)
class Experiment:
    """How the skeleton runs one experiment.

    ``execute(config, ctx)`` runs it and returns ``(completed, metrics)``. ``data`` says what ``--data``
    is: ``"path"`` (a file or folder, resolved to an absolute path; ``data_env`` names the sub-path of
    ``$PRUNINGLAB_DATA`` used when it is omitted), ``"field"`` (the config field ``data``, a name or a
    path), or ``None`` (refused). ``resumable=False`` refuses ``--resume``. ``summarize(metrics)`` is
    the line printed at the end. ``resolve_data(data, config)`` finds the dataset of an omitted or
    partial ``--data`` (default: ``$PRUNINGLAB_DATA/<data_env>``), or refuses a ``--data`` the config
    cannot use; it returns the path or None.
    """

    name: str
    description: str
    config_cls: type
    execute: Callable[[Any, RunContext], tuple[bool, dict]]
    data: str | None = "path"
    data_env: str | None = None
    resumable: bool = True
    distributed: bool = False
    summarize: Callable[[dict], str] | None = None
    resolve_data: Callable[[str | None, Any], Any] | None = None


def identity_record(name: str, scale: str, config: ExperimentConfig, data: str | None) -> dict:
    """Everything a run's identity covers: experiment, scale, seed, resolved data and every config field."""
    return {"experiment": name, "scale": scale, "seed": config.seed, "data": data, "config": config.as_dict()}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become one ValueError line (through the CLI's one error path)."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")


def _parser(spec: Experiment) -> argparse.ArgumentParser:
    from .. import __version__

    p = _Parser(prog=f"python -m pruninglab {spec.name}", description=spec.description)
    p.add_argument("--version", action="version", version=f"pruninglab {__version__}")
    p.add_argument("--scale", choices=runtime.SCALES, default=None,
                   help="small (CPU, minutes) or full (the paper's protocol, GPU); default: $PRUNINGLAB_SCALE or small")
    p.add_argument("--data", default=None, help=argparse.SUPPRESS if spec.data is None else (
        "dataset file or folder (default: $PRUNINGLAB_DATA)" if spec.data == "path"
        else "signals: a name or a file/folder (default: $PRUNINGLAB_DATA or the preset's)"))
    p.add_argument("--out", default=None,
                   help="runs root: the run folder is OUT/<experiment>/<run id> (default: $PRUNINGLAB_RUNS or ./runs)")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS if not spec.resumable else
                   "continue the run of this config from its checkpoint (a finished run is left as it is)")
    p.add_argument("--new-attempt", action="store_true",
                   help="start another attempt of the same config beside the existing run (<run id>-a2, ...)")
    p.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="re-run the recorded run of this config.json exactly (with --resume: continue it)")
    p.add_argument("--plan", action="store_true",
                   help="print what the run will need (steps, memory, time, disk) and exit without running")
    p.add_argument("--gpu", default="h100",
                   help="with --plan: the GPU to project the time for (default: h100)")
    p.add_argument("--num-gpus", type=int, default=1, help="with --plan: how many GPUs (default: 1)")
    p.add_argument("--overwrite-result", action="store_true",
                   help="replace a stored result of the same identity that differs (never needed otherwise)")
    p.add_argument("--device", default=None,
                   help="auto, cpu, cuda, cuda:N or mps (default: $PRUNINGLAB_DEVICE or auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # simulate a crash (tests)
    add_config_arguments(p, spec.config_cls, skip=("data",) if spec.data == "field" else ())
    return p


_COMMON = ("scale", "data", "out", "resume", "new_attempt", "config", "plan", "gpu", "num_gpus",
           "overwrite_result", "device", "no_progress", "stop_after")


def _field_overrides(spec: Experiment, args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(spec.config_cls)
            if getattr(args, f.name, None) is not None}


def _resolve_data(spec: Experiment, data: str | None, config: Any) -> str | None:
    if spec.data != "path":
        return None
    if spec.resolve_data is not None:
        found = spec.resolve_data(data, config)
        return None if found is None else str(Path(found).expanduser().resolve())
    if data is None and os.environ.get("PRUNINGLAB_DATA"):
        data = str(Path(os.environ["PRUNINGLAB_DATA"]) / (spec.data_env or ""))
    return None if data is None else str(Path(data).expanduser().resolve())


def _config_from_file(spec: Experiment, path: str, args: argparse.Namespace) -> tuple[ExperimentConfig, str, str | None]:
    given = sorted(_field_overrides(spec, args)) + [k for k in ("scale", "data") if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--config: re-runs a recorded run exactly; expected no other settings, got {flags}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config: no file {file} (expected the config.json of a run folder)")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--config: {file} is not valid JSON ({err})") from None
    if not isinstance(record, dict) or not {"experiment", "scale", "config"} <= set(record):
        raise ValueError(f"--config: {file} is not a run's config.json (expected keys experiment, scale, config)")
    if record["experiment"] != spec.name:
        raise ValueError(f"--config: {file} records a run of {record['experiment']!r}, not {spec.name!r}")
    config = spec.config_cls.from_dict(record["config"])
    return config, runtime.scale(record["scale"]), record.get("data")


def _attempts(root: Path, base_id: str) -> list[Path]:
    folder = root.parent if root.name == base_id else root
    found = [p for p in folder.glob(f"{base_id}*") if p.name == base_id or
             (p.name.startswith(base_id + "-a") and p.name[len(base_id) + 2:].isdigit())]
    return sorted(found, key=lambda p: int(p.name[len(base_id) + 2:]) if p.name != base_id else 1)


def _started(run_dir: Path) -> bool:
    """A run folder counts as started once it holds more than its config.json."""
    return run_dir.is_dir() and any(p.name != runtime.CONFIG_NAME for p in run_dir.iterdir())


def _choose_run_dir(spec: Experiment, args, base_id: str, root: Path, exact: Path | None) -> Path:
    """The run folder of this command, or a ValueError saying why the command is refused."""
    folder = root / spec.name
    attempts = [p for p in _attempts(folder, base_id) if _started(p)]
    if args.resume:
        if args.new_attempt:
            raise ValueError("--resume: continues an existing run; expected it without --new-attempt")
        target = exact if exact is not None else (attempts[-1] if attempts else None)
        if target is None or not _started(target):
            raise ValueError(f"--resume: no run {base_id} in {folder} to continue; expected an existing run "
                             "(start it without --resume)")
        return target
    if args.new_attempt and _started(folder / base_id):
        n = 2
        while (folder / f"{base_id}-a{n}").exists() and _started(folder / f"{base_id}-a{n}"):
            n += 1
        return folder / f"{base_id}-a{n}"
    target = exact if exact is not None else folder / base_id
    if _started(target):
        state = "finished" if (target / runtime.RESULT_NAME).exists() else "unfinished"
        raise ValueError(
            f"run: {target.name} already exists ({state}) in {folder}; expected a new run: continue it with "
            f"--resume, or start another attempt beside it with --new-attempt (nothing was changed)")
    return target


def _command(spec: Experiment, run_dir: Path, resume: bool) -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    head = (f"torchrun --nproc_per_node={world} -m pruninglab" if world > 1 else "python -m pruninglab")
    tail = " --resume" if resume else ""
    return f"{head} {spec.name} --config {shlex.quote(str(run_dir / runtime.CONFIG_NAME))}{tail}"


def _plan(spec: Experiment, config: ExperimentConfig, gpu: str, num_gpus: int) -> int:
    from .. import plan as planner

    print(planner.format_plan(planner.plan_for(spec.name, config, gpu=gpu, num_gpus=num_gpus)))
    return 0


def _agree_across_ranks(run_dir: Path | None, error: str | None, dev_name: str | None):
    """Under torchrun: rank 0's decision (run folder or refusal) for every rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return run_dir, error
    from ..train import distributed_device, init_distributed

    init_distributed(distributed_device(dev_name))
    import torch.distributed as dist

    box = [(str(run_dir) if run_dir is not None else None, error)]
    dist.broadcast_object_list(box, src=0)
    folder, err = box[0]
    return (Path(folder) if folder else None), err


def main(spec: Experiment, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, name the run, refuse what must be refused, run it, write its result; return 0.

    Defined in book/sapp_imagenet.md. User errors are raised (ValueError, FileNotFoundError, OSError), for
    ``python -m pruninglab``'s one error path to report in one line.
    """
    args = _parser(spec).parse_args(list(sys.argv[1:] if argv is None else argv))
    if spec.data is None and args.data is not None:
        raise ValueError(f"--data: {spec.name} uses no dataset; expected no --data")
    if not spec.resumable and args.resume:
        raise ValueError(f"--resume: {spec.name} keeps no checkpoints (it is short); expected no --resume")
    if args.out is not None and not args.plan and int(os.environ.get("RANK", "0")) == 0:
        runtime.check_writable(runtime.runs_root(args.out), "--out (runs root)")  # before data is read
    exact = None
    if args.config is not None:
        config, sc, data = _config_from_file(spec, args.config, args)
        here = Path(args.config).expanduser().resolve().parent
        if args.out is None and here.parent.name == spec.name:
            exact = here
    else:
        sc = runtime.scale(args.scale)
        overrides = _field_overrides(spec, args)
        if spec.data == "field" and (args.data or os.environ.get("PRUNINGLAB_DATA")):
            raw = args.data or os.environ["PRUNINGLAB_DATA"]
            overrides["data"] = str(Path(raw).resolve()) if Path(raw).exists() else raw
        config = spec.config_cls.for_scale(sc, **overrides)
        if args.plan:  # the plan runs on synthetic inputs of the real shapes: no dataset needed
            return _plan(spec, config, args.gpu, args.num_gpus)
        data = _resolve_data(spec, args.data, config)
    if args.plan:
        return _plan(spec, config, args.gpu, args.num_gpus)
    if args.gpu != "h100" or args.num_gpus != 1:
        raise ValueError("--gpu/--num-gpus: only used with --plan; expected --plan")

    record = identity_record(spec.name, sc, config, data)
    base_id = runtime.run_id(spec.name, record, config.seed)
    root = exact.parent.parent if exact is not None else runtime.runs_root(args.out)
    rank = int(os.environ.get("RANK", "0"))
    run_dir, error = None, None
    if rank == 0:
        try:
            runtime.check_writable(root, "--out (runs root)")
            runtime.check_writable(runtime.results_dir(spec.name, sc), "results folder")
            run_dir = _choose_run_dir(spec, args, base_id, root, exact)
            if (run_dir / runtime.RESULT_NAME).exists() and args.resume:
                done = json.loads((run_dir / runtime.RESULT_NAME).read_text())
                if done.get("completed"):
                    print(f"{run_dir.name}: finished already; result in {run_dir / runtime.RESULT_NAME}; "
                          "nothing was changed")
                    run_dir = None
            if run_dir is not None:
                run_dir.mkdir(parents=True, exist_ok=True)
                if not (run_dir / runtime.CONFIG_NAME).exists():
                    runtime.atomic_write_text(run_dir / runtime.CONFIG_NAME, runtime.to_json(record))
        except (ValueError, OSError) as err:
            error = err
    run_dir, message = _agree_across_ranks(run_dir, None if error is None else str(error), args.device)
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(message)
    if run_dir is None:
        return 0

    run_id = run_dir.name
    ctx = RunContext(experiment=spec.name, scale=sc, data=data, out_dir=run_dir, resume=args.resume,
                     device=args.device, progress=False if args.no_progress else None,
                     stop_after=args.stop_after, run_id=run_id)
    t0 = time.perf_counter()
    from ..train import Preempted

    try:
        completed, metrics = spec.execute(config, ctx)
    except Preempted as err:
        err.resume_command = _command(spec, run_dir, resume=True)
        raise
    if rank != 0:
        return 0
    if not completed:
        print(f"{run_id}: stopped early; continue with: {_command(spec, run_dir, resume=True)}")
        return 0
    wall = time.perf_counter() - t0
    dev = runtime.device(args.device)
    result = RunResult(experiment=spec.name, run_id=run_id, seed=config.seed, config=record, metrics=metrics,
                       completed=True, scale=sc,
                       paths={"run_dir": str(run_dir), "config": str(run_dir / runtime.CONFIG_NAME)})
    save = dict(scale_name=sc, dev=dev, wall_time_s=wall, run_id=run_id,
                extra={"seed": result.seed, "completed": True, "paths": result.paths})
    stored = runtime.save_result(spec.name, metrics, record, overwrite=args.overwrite_result, **save)
    log = run_dir / "metrics.csv"
    if log.exists():
        shutil.copyfile(log, stored.parent / "metrics.csv")
    result.paths["stored"] = str(stored)
    # The run folder's copy: the same record (a run folder is written by its own run only).
    runtime.save_result(spec.name, metrics, record, out_dir=run_dir, overwrite=True, **save)
    if spec.summarize is not None:
        print(f"{run_id} [{sc}]: {spec.summarize(metrics)}")
    print(f"result: {run_dir / runtime.RESULT_NAME} (stored as {stored})")
    return 0


# --------------------------------------------------------------------------- chapters at full scale


def launch_command(experiment: str, nproc: int | None = None, **flags: Any) -> str:
    """The command that runs an experiment (``torchrun`` with ``nproc`` processes), e.g. for a chapter.

    Defined in book/limit_experiments.md. ``flags`` become ``--flag value`` (``True`` alone, tuples comma-separated).
    """
    parts = ([f"torchrun --nproc_per_node={nproc} -m pruninglab"] if nproc else ["python -m pruninglab"])
    parts.append(experiment)
    for key, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, (tuple, list)):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def recorded_results(experiment: str, match: Mapping[str, Any] | ExperimentConfig, *,
                     seeds: Sequence[int] = (0, 1, 2), scale: str = "full", metrics: Sequence[str] = ()) -> dict:
    """The recorded runs of ``experiment`` whose config has the values in ``match``: mean +- std over seeds.

    Defined in book/limit_experiments.md. Reads the results store (``results/<experiment>/<run id>/result.json``);
    the data path and the seed are not matched (``match`` names config fields, or is a config: all its
    fields but the seed). Returns ``{"runs",
    "seeds_present", "seeds_missing", "n", "mean", "std"}``; std is the sample standard deviation
    (None with fewer than two seeds). A later attempt of the same seed replaces an earlier one.
    """
    if isinstance(match, ExperimentConfig):
        match = {k: v for k, v in match.as_dict().items() if k != "seed"}
    match = json.loads(runtime.to_json(match))  # tuples as lists, as in the stored records
    by_seed: dict[int, dict] = {}
    for rec in runtime.recorded_runs(experiment, scale):
        cfg = (rec.get("config") or {}).get("config") or {}
        if all(cfg.get(k) == v for k, v in match.items()):
            seed = rec.get("seed", cfg.get("seed"))
            if seed in seeds:
                by_seed[seed] = rec
    runs = [by_seed[s] for s in sorted(by_seed)]
    names = list(metrics) or sorted({k for r in runs for k, v in r["metrics"].items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mean, std = {}, {}
    for name in names:
        vals = [float(r["metrics"][name]) for r in runs if isinstance(r["metrics"].get(name), (int, float))]
        if vals:
            mean[name] = sum(vals) / len(vals)
            std[name] = (math.sqrt(sum((v - mean[name]) ** 2 for v in vals) / (len(vals) - 1))
                         if len(vals) > 1 else None)
    return {"runs": runs, "seeds_present": sorted(by_seed), "n": len(runs),
            "seeds_missing": [s for s in seeds if s not in by_seed], "mean": mean, "std": std}


def format_recorded(summary: Mapping[str, Any], metric: str, digits: int = 4) -> str:
    """``"0.7512 +- 0.0031 (3 seeds)"`` / ``"0.75 (1 seed)"`` / ``"not recorded (seeds 0, 1, 2 missing)"``."""
    if metric not in summary["mean"]:
        missing = ", ".join(map(str, summary["seeds_missing"])) or "all"
        return f"not recorded (seeds {missing} missing)"
    m, s, n = summary["mean"][metric], summary["std"][metric], summary["n"]
    text = f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None else "")
    text += f" ({n} seed{'s' if n != 1 else ''}"
    if summary["seeds_missing"]:
        text += f"; seeds {', '.join(map(str, summary['seeds_missing']))} missing"
    return text + ")"
