"""The one training loop every chapter and every CLI experiment uses.

Defined in book/intro.md (first use); the full-scale features are shown in book/sapp_imagenet.md.

Features: step-based loop over a re-iterable data source, tqdm progress, CSV metrics log,
atomic checkpoints every N steps and at phase boundaries (model, optimizer, scheduler, hook
state, RNG states, step, config), ``resume=True`` that continues to the *identical* result as an
uninterrupted run (same seed, CPU), ``torch.distributed`` data parallelism when launched by
``torchrun`` (NCCL on GPU, gloo on CPU), and bf16/fp16 autocast on GPU.

Pruners plug in as *hooks*: objects with any of these methods

``on_step_start(step, model) -> bool``
    called before each step; return ``True`` at a phase boundary (the optimizer state is
    then reset and a checkpoint is written);
``loss_penalty(model) -> Tensor | None``
    a term added to the loss (e.g. an L1 penalty);
``on_step_end(step, model) -> None``
    called after each optimizer step (e.g. re-apply masks);
``state_dict()`` / ``load_state_dict(state)``
    saved in and restored from checkpoints.

``model`` passed to hooks is always the bare module (never the DDP wrapper).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .runtime import atomic_torch_save, device as default_device, progress_enabled

CHECKPOINT_NAME = "checkpoint.pt"

# Exit status of a command-line run stopped by SIGTERM/SIGINT after it wrote its checkpoint (EX_TEMPFAIL:
# "try again"); distinct from 1 (crash) and 2 (a user's mistake).
PREEMPTED_EXIT_CODE = 75


class Preempted(RuntimeError):
    """Raised by :func:`train` after a SIGTERM/SIGINT: the current step finished and a checkpoint was written.

    ``step`` is the number of completed steps, ``checkpoint`` the path of the checkpoint to resume from.
    """

    def __init__(self, step: int, checkpoint: "os.PathLike | str", signal_name: str = "SIGTERM"):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.signal_name = signal_name

LOG_NAME = "metrics.csv"


# --------------------------------------------------------------------------- distributed helpers


def dist_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (``(0, 0, 1)`` otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def init_distributed(dev: torch.device) -> tuple[int, int]:
    """Initialise the process group if launched by torchrun; return ``(rank, world_size)``."""
    rank, local, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
    return rank, world


def distributed_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device for this process: under torchrun on GPUs, ``cuda:LOCAL_RANK``."""
    dev = torch.device(prefer) if isinstance(prefer, torch.device) else default_device(prefer)
    _, local, world = dist_info()
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local)
    return dev


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all torchrun processes (returned as is on a single process).

    Defined in book/sapp_imagenet.md. Distributed evaluation sums per-rank totals (loss sums,
    counts, correct predictions) with this and divides afterwards, so the result equals a
    single-process evaluation over the same rows.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on ``(seed, epoch)`` and is split across torchrun ranks.

    Defined in book/intro.md. This is what makes a resumed run see exactly the batches an
    uninterrupted run would have seen, on one process or many.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset: is empty; there is nothing to train on")
    rank, _, world = dist_info()
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    per_rank = len(sampler)
    if drop_last and per_rank < batch_size:
        raise ValueError(
            f"batch_size: {batch_size} is larger than the {per_rank} samples each of the {world} process(es) gets"
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=int(batch_size), sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
        persistent_workers=False,
        # Its own generator: creating an iterator then draws no numbers from the global RNG,
        # so starting an epoch mid-way (on resume) leaves dropout etc. on the same stream.
        generator=torch.Generator().manual_seed(int(seed)),
    )


def _epoch_batches(data: Iterable, epoch: int, skip: int) -> Iterable:
    """Batches of ``epoch``, skipping the first ``skip`` cheaply when possible.

    A data source with a ``batches(epoch, skip)`` method (e.g. the streaming Criteo reader) is
    asked for exactly that; a DataLoader whose dataset has ``set_epoch`` is told the epoch (for
    per-sample seeded augmentation that does not depend on worker processes).
    """
    if hasattr(data, "batches") and callable(data.batches):
        return data.batches(epoch, skip)
    if isinstance(data, torch.utils.data.DataLoader):
        if hasattr(data.dataset, "set_epoch"):
            data.dataset.set_epoch(epoch)
        sampler = data.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if skip and data.batch_sampler is not None:
            # Skip index batches without loading them, then load the rest in the same way.
            batches = list(data.batch_sampler)[skip:]
            return torch.utils.data.DataLoader(
                data.dataset, batch_sampler=batches, num_workers=data.num_workers,
                collate_fn=data.collate_fn, pin_memory=data.pin_memory, generator=data.generator,
            )
        return data
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    it = iter(data)
    for _ in range(skip):
        next(it)
    return it


# --------------------------------------------------------------------------- RNG state (weights_only-safe)


def rng_state() -> dict:
    """All RNG states as tensors and plain Python values, loadable with ``weights_only=True``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used to resume (truncated, corrupt, or from another config)."""


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a dataclass or a dict, got {type(config).__name__}")
    # Round-trip through JSON so the comparison on resume sees what was stored.
    return json.loads(json.dumps(config, default=str))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`train` with ``weights_only=True``; clear error if unusable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint: {path} is truncated or corrupt ({err.__class__.__name__}); refusing to resume from it. "
            "Delete it to start over."
        ) from err
    if not isinstance(ckpt, dict) or "step" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"checkpoint: {path} is not a pruninglab training checkpoint; refusing to resume")
    return ckpt


def _diff_configs(old: Mapping, new: Mapping) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k, "<missing>") != new.get(k, "<missing>")]


# --------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the final step, the last evaluation and where logs are."""

    step: int
    metrics: dict
    log_path: Path | None
    checkpoint_path: Path | None
    wall_time_s: float
    resumed_from: int | None = None
    train_time_s: float | None = None  # wall time minus evaluation and checkpoint writing
    steps_run: int = 0  # optimizer steps taken in this call (not counting resumed ones)


def _reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    # Phase boundaries reset momentum / Adam moments (SA++ and ACDC call this "crucial").
    optimizer.state.clear()


class _CsvLog:
    def __init__(self, path: Path | None, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            if path.exists():
                path.unlink()
        elif path.exists():
            # Drop rows written after the checkpoint we resume from, so rows are not repeated.
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            fields = list(rows[0].keys()) if rows else None
            rows = [r for r in rows if int(r["step"]) <= resume_step]
            tmp = path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as fh:
                if fields:
                    w = csv.DictWriter(fh, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
            os.replace(tmp, path)
            self.fields = fields

    def write(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        if self.fields is None:
            self.fields = list(row.keys())
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
            return
        missing = [k for k in row if k not in self.fields]
        if missing:  # a new metric appeared: rewrite the header with the extra columns
            with self.path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            self.fields += missing
            tmp = self.path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, self.path)
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)


def train(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    scheduler: Any | None = None,
    hooks: Sequence[Any] = (),
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    log_every: int = 50,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    config: Any | None = None,
    dev: torch.device | str | None = None,
    amp: bool | None = None,
    grad_clip: float | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    accumulate: int = 1,
    distributed_eval: bool = False,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimizer steps; see the module docstring for hooks.

    Defined in book/intro.md.

    ``data`` yields ``(inputs, targets)`` batches and is re-iterated every epoch (use
    :func:`make_loader` for an order that depends only on the seed and epoch). ``out_dir``
    receives ``metrics.csv`` and ``checkpoint.pt``; ``resume=True`` continues from that
    checkpoint (and refuses one made with a different ``config``). ``stop_after`` ends the
    run early after that many steps, as a crash would (for tests of resume).

    ``accumulate=k`` makes each optimizer step consume ``k`` batches (gradient accumulation: the
    loss of each is divided by ``k``; under DDP gradients are all-reduced once per step), so a
    large global batch fits in memory; an epoch is then ``len(data) // k`` steps. With
    ``distributed_eval=True`` every torchrun process calls ``evaluate`` (which must combine its
    per-rank results, e.g. with :func:`all_reduce_sum`); otherwise only rank 0 evaluates.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    steps = int(steps)
    for name, val in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every), ("log_every", log_every),
                      ("accumulate", accumulate)):
        if val is not None and (isinstance(val, bool) or int(val) != val or val < 1):
            raise ValueError(f"{name}: expected a positive integer or None, got {val!r}")
    if resume and out_dir is None:
        raise ValueError("resume: needs out_dir, the folder that holds checkpoint.pt")

    dev = torch.device(dev) if dev is not None else next(model.parameters()).device
    rank, world = init_distributed(dev)
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    cfg = _config_dict(config)

    if amp is None:
        amp = dev.type == "cuda"
    amp_dtype = None
    scaler = None
    if amp and dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp_dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")

    ddp_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    start_step = 0
    resumed_from = None
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=dev)
        stored_cfg = ckpt.get("config_json")
        stored_cfg = json.loads(stored_cfg) if stored_cfg else {}
        diff = _diff_configs(stored_cfg, cfg)
        if diff:
            raise CheckpointError(
                f"resume: the checkpoint at {ckpt_path} was made with a different config "
                f"(differs in: {', '.join(diff)}); refusing to resume. Use another out_dir or the same config."
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        for i, h in enumerate(hooks):
            if hasattr(h, "load_state_dict") and f"hook{i}" in ckpt.get("hooks", {}):
                h.load_state_dict(ckpt["hooks"][f"hook{i}"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_step = int(ckpt["step"])
        resumed_from = start_step
        resumed_running = ckpt.get("running_loss")
    else:
        resumed_running = None

    overhead_s = 0.0  # evaluation and checkpoint time, excluded from train_time_s

    def save_checkpoint(step: int) -> None:
        nonlocal overhead_s
        if ckpt_path is None or not is_main:
            return
        t_save = time.perf_counter()
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "hooks": {f"hook{i}": h.state_dict() for i, h in enumerate(hooks) if hasattr(h, "state_dict")},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "config_json": json.dumps(cfg, sort_keys=True),
            # The running training loss since the last log row, so a resumed run logs the same mean.
            "running_loss": [float(running), int(running_n)],
        }
        atomic_torch_save(state, ckpt_path)
        overhead_s += time.perf_counter() - t_save

    log = _CsvLog(out / LOG_NAME if (out is not None and is_main) else None, resumed_from)
    t0 = time.perf_counter()
    last_metrics: dict = {}

    def run_eval(step: int, train_loss: float | None) -> dict:
        nonlocal overhead_s
        t_eval = time.perf_counter()
        if world > 1 and train_loss is not None:
            # Log the mean over all processes (each saw only its share of the global batch).
            local = torch.tensor([train_loss], dtype=torch.float64, device=dev)
            train_loss = float(all_reduce_sum(local)[0]) / world
        row: dict[str, Any] = {"step": step, "train_loss": "" if train_loss is None else f"{train_loss:.6g}"}
        metrics: dict = {}
        if evaluate is not None and (is_main or distributed_eval):
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = dict(evaluate(model))
            model.train(was_training)
            row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in metrics.items()})
        row["wall_s"] = f"{time.perf_counter() - t0:.2f}"
        log.write(row)
        overhead_s += time.perf_counter() - t_eval
        return metrics

    try:
        steps_per_epoch = len(data)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    if steps_per_epoch == 0:
        raise ValueError("data: yields no batches (is the dataset smaller than one batch?)")
    k = int(accumulate)
    if steps_per_epoch is not None:
        steps_per_epoch //= k  # leftover batches at the end of an epoch (fewer than k) are not used
        if steps_per_epoch == 0:
            raise ValueError(f"accumulate: {k} batches per step is more than the {len(data)} batches of an epoch")

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not (progress_enabled(progress) and is_main),
               dynamic_ncols=True)
    model.train()
    step = start_step
    end = steps if stop_after is None else min(steps, start_step + int(stop_after))
    running, running_n = 0.0, 0
    if resumed_running is not None:
        running, running_n = float(resumed_running[0]), int(resumed_running[1])
    if steps_per_epoch:
        epoch, skip = divmod(step, steps_per_epoch)
        skip *= k
    else:
        epoch, skip = 0, step * k  # plain iterables: one epoch means one pass; skip by position
    used = skip  # batches taken from the current epoch
    batches = iter(_epoch_batches(data, epoch, skip))

    def fetch():
        nonlocal batches, epoch, used
        if steps_per_epoch and used >= steps_per_epoch * k:
            epoch, used = epoch + 1, 0
            batches = iter(_epoch_batches(data, epoch, 0))
        try:
            batch = next(batches)
        except StopIteration:
            epoch, used = epoch + 1, 0
            batches = iter(_epoch_batches(data, epoch, 0))
            try:
                batch = next(batches)
            except StopIteration:
                raise ValueError("data: yields no batches") from None
        used += 1
        return batch

    while step < end:
        inputs, targets = fetch()
        boundary = False
        for h in hooks:
            if hasattr(h, "on_step_start") and h.on_step_start(step, model):
                boundary = True
        if boundary:
            _reset_optimizer_state(optimizer)
            save_checkpoint(step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(k):
            if micro > 0:
                inputs, targets = fetch()
            inputs = _to(inputs, dev)
            targets = _to(targets, dev)
            last = micro == k - 1
            # Under DDP, all-reduce gradients only on the last micro-batch of the step.
            sync = ddp_model.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext():
                    outputs = ddp_model(inputs)
                    loss = loss_fn(outputs, targets)
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"train: the loss became {loss.item()} at step {step}; lower the learning rate or check the data"
                    )
                total = loss / k if k > 1 else loss
                if last:
                    for h in hooks:
                        if hasattr(h, "loss_penalty"):
                            pen = h.loss_penalty(model)
                            if pen is not None:
                                total = total + pen
                if scaler is not None:
                    scaler.scale(total).backward()
                else:
                    total.backward()
            step_loss += float(loss.detach())  # one sync per batch; the loss is needed for the log and the bar
        if scaler is not None:
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for h in hooks:
            if hasattr(h, "on_step_end"):
                h.on_step_end(step, model)
        step += 1
        running += step_loss / k
        running_n += 1
        bar.update(1)
        if step % log_every == 0 or step == steps:
            bar.set_postfix(loss=f"{running / running_n:.4g}")
        do_eval = eval_every is not None and step % eval_every == 0
        if do_eval or (step == steps and evaluate is not None) or (step % log_every == 0 and evaluate is None):
            last_metrics = run_eval(step, running / max(running_n, 1))
            running, running_n = 0.0, 0
        if checkpoint_every is not None and step % checkpoint_every == 0:
            save_checkpoint(step)
    bar.close()
    if step == steps and steps > 0:
        save_checkpoint(step)
    if evaluate is not None and not last_metrics and (is_main or distributed_eval) and step == steps:
        last_metrics = run_eval(step, None)
    wall = time.perf_counter() - t0
    return TrainResult(
        step=step,
        metrics=last_metrics,
        log_path=log.path,
        checkpoint_path=ckpt_path,
        wall_time_s=wall,
        resumed_from=resumed_from,
        train_time_s=wall - overhead_s,
        steps_run=step - start_step,
    )


def _to(x: Any, dev: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dev, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, dev) for v in x)
    if isinstance(x, Mapping):
        return {k: _to(v, dev) for k, v in x.items()}
    return x


def l1_penalty(strength: float, params: Callable[[nn.Module], Iterable[torch.Tensor]] | None = None):
    """A hook adding ``strength * sum(|theta|)`` to the loss (all parameters by default), as in Zhang et al.

    Defined in book/limit_experiments.md.
    """
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or strength < 0 or math.isnan(strength):
        raise ValueError(f"strength: expected a non-negative number, got {strength!r}")

    class L1Penalty:
        def loss_penalty(self, model: nn.Module) -> torch.Tensor | None:
            if strength == 0:
                return None
            ps = params(model) if params is not None else model.parameters()
            return strength * sum(p.abs().sum() for p in ps)

    return L1Penalty()
