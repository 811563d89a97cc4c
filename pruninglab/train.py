"""The one training loop every chapter and every CLI experiment uses.

Defined in book/intro.md (first use); the full-scale features are shown in book/sapp_imagenet.md.

:func:`train` runs a step-based loop over a re-iterable data source in named steps: *restore*
(resume from a checkpoint, or refuse to overwrite a run), *step* (forward, backward, update), *log*
(``metrics.csv``, evaluation) and *checkpoint*. Its state between steps is one :class:`LoopState`.
The helpers live beside it: :mod:`pruninglab.distributed` (torchrun), :mod:`pruninglab.checkpoint`
(atomic checkpoints, RNG state, the config check) and :mod:`pruninglab.runlog` (the CSV log).

What a run can rely on:

- ``resume=True`` continues from the checkpoint in ``out_dir`` to the *identical* result of an
  uninterrupted run (same seed, CPU); a fresh start never overwrites an existing run.
- SIGTERM or SIGINT (how clusters pre-empt jobs; Ctrl-C) finishes the current step, writes a checkpoint
  and raises :class:`Preempted`; a command line exits with :data:`PREEMPTED_EXIT_CODE`.
- No host synchronisation per step: the loss is summed on the device and read every ``log_every``
  steps, where a non-finite loss is reported with the steps between which it appeared.
- ``torch.distributed`` data parallelism when launched by ``torchrun`` (NCCL on GPU, gloo on CPU),
  bf16/fp16 autocast and TF32 on GPU, optional ``torch.compile``.

Pruners plug in as *hooks* (:class:`TrainHook`): objects with any of ``on_step_start``,
``loss_penalty``, ``on_step_end``, ``state_dict`` / ``load_state_dict``. ``model`` passed to hooks is
always the bare module (never the DDP wrapper or the compiled one).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import torch
from torch import nn

from ._checks import nonnegative_float, nonnegative_int, positive_int
from .checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    RunExistsError,
    check_same_config,
    config_dict,
    load_checkpoint,
    remove_orphan_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import (
    all_reduce_max,
    all_reduce_sum,
    barrier,
    dist_info,
    distributed_device,
    init_distributed,
    make_loader,
)
from .masks import FixedMasks, MaskHook
from .runlog import LOG_NAME, TIMING_COLUMNS, RunLog, count_rows, peak_memory_gib
from .runtime import _jsonable, progress_enabled
from .runtime import tf32 as tf32_mode

__all__ = [
    "train",
    "TrainResult",
    "TrainHook",
    "LoopState",
    "Preempted",
    "PREEMPTED_EXIT_CODE",
    "l1_penalty",
    "MaskHook",
    "FixedMasks",
    # re-exported from the modules the loop was split into
    "make_loader",
    "dist_info",
    "init_distributed",
    "distributed_device",
    "all_reduce_sum",
    "CheckpointError",
    "RunExistsError",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "TIMING_COLUMNS",
]

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


# --------------------------------------------------------------------------- hooks


class TrainHook(Protocol):
    """What the loop calls on a hook. Every method is optional: implement only those you need.

    ``on_step_start(step, model) -> bool``
        before each step; return ``True`` at a phase boundary (the optimizer state is then reset and
        a checkpoint is written);
    ``loss_penalty(model) -> Tensor | None``
        a term added to the loss (e.g. an L1 penalty);
    ``on_step_end(step, model) -> None``
        after each optimizer step (e.g. :class:`~pruninglab.masks.MaskHook` re-applies masks);
    ``state_dict()`` / ``load_state_dict(state)``
        saved in and restored from checkpoints.
    """

    def on_step_start(self, step: int, model: nn.Module) -> bool: ...

    def loss_penalty(self, model: nn.Module) -> torch.Tensor | None: ...

    def on_step_end(self, step: int, model: nn.Module) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


class HookSet:
    """The hooks of one run; the one place that looks up which optional methods a hook has."""

    def __init__(self, hooks: Sequence[Any]):
        self.hooks = list(hooks)

        def having(name: str) -> list[tuple[int, Callable]]:
            return [(i, getattr(h, name)) for i, h in enumerate(self.hooks) if callable(getattr(h, name, None))]

        self._start = having("on_step_start")
        self._penalty = having("loss_penalty")
        self._end = having("on_step_end")
        self._save = having("state_dict")
        self._load = having("load_state_dict")

    def step_start(self, step: int, model: nn.Module) -> bool:
        """Call every ``on_step_start``; True if any marks a phase boundary."""
        boundary = False
        for _, fn in self._start:
            boundary = bool(fn(step, model)) or boundary
        return boundary

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        total = None
        for _, fn in self._penalty:
            pen = fn(model)
            if pen is not None:
                total = pen if total is None else total + pen
        return total

    def step_end(self, step: int, model: nn.Module) -> None:
        for _, fn in self._end:
            fn(step, model)

    def state_dict(self) -> dict:
        return {f"hook{i}": fn() for i, fn in self._save}

    def load_state_dict(self, state: Mapping) -> None:
        for i, fn in self._load:
            if f"hook{i}" in state:
                fn(state[f"hook{i}"])


def l1_penalty(strength: float, params: Callable[[nn.Module], Iterable[torch.Tensor]] | None = None):
    """A hook adding ``strength * sum(|theta|)`` to the loss (all parameters by default), as in Zhang et al.

    Defined in book/limit_experiments.md.
    """
    strength = nonnegative_float(strength, "strength")

    class L1Penalty:
        def loss_penalty(self, model: nn.Module) -> torch.Tensor | None:
            if strength == 0:
                return None
            ps = params(model) if params is not None else model.parameters()
            return strength * sum(p.abs().sum() for p in ps)

    return L1Penalty()


# --------------------------------------------------------------------------- data


def _epoch_batches(data: Iterable, epoch: int, skip: int) -> Iterable:
    """Batches of ``epoch``, skipping the first ``skip`` cheaply when possible.

    A data source with a ``batches(epoch, skip)`` method (e.g. the streaming Criteo reader) is
    asked for exactly that; a DataLoader whose dataset has ``set_epoch`` is told the epoch (for
    per-sample seeded augmentation that does not depend on worker processes).
    """
    if callable(getattr(data, "batches", None)):
        return data.batches(epoch, skip)
    if isinstance(data, torch.utils.data.DataLoader):
        for part in (data.dataset, data.sampler):
            if callable(getattr(part, "set_epoch", None)):
                part.set_epoch(epoch)
        if skip and data.batch_sampler is not None:
            # Skip index batches without loading them, then load the rest in the same way.
            batches = list(data.batch_sampler)[skip:]
            return torch.utils.data.DataLoader(
                data.dataset, batch_sampler=batches, num_workers=data.num_workers,
                collate_fn=data.collate_fn, pin_memory=data.pin_memory, generator=data.generator,
            )
        return data
    if callable(getattr(data, "set_epoch", None)):
        data.set_epoch(epoch)
    it = iter(data)
    for _ in range(skip):
        next(it)
    return it


class BatchStream:
    """The loop's batches: epoch after epoch of ``data``, starting where step ``start_step`` left off.

    ``wait_s`` adds up the time spent waiting for batches (the data-wait share in ``metrics.csv``).
    """

    def __init__(self, data: Iterable, accumulate: int, start_step: int):
        self.data, self.k = data, accumulate
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n == 0:
            raise ValueError("data: yields no batches (is the dataset smaller than one batch?)")
        self.steps_per_epoch = None if n is None else n // accumulate  # a leftover (< k batches) is unused
        if self.steps_per_epoch == 0:
            raise ValueError(f"accumulate: {accumulate} batches per step is more than the {n} batches of an epoch")
        if self.steps_per_epoch:
            self.epoch, skip = divmod(start_step, self.steps_per_epoch)
            skip *= accumulate
        else:
            self.epoch, skip = 0, start_step * accumulate  # plain iterables: one pass is an epoch
        self.used = skip  # batches taken from the current epoch
        self._it = iter(_epoch_batches(data, self.epoch, skip))
        self.wait_s = 0.0

    def _new_epoch(self) -> None:
        self.epoch, self.used = self.epoch + 1, 0
        self._it = iter(_epoch_batches(self.data, self.epoch, 0))

    def next(self) -> Any:
        t = time.perf_counter()
        if self.steps_per_epoch and self.used >= self.steps_per_epoch * self.k:
            self._new_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self._new_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                raise ValueError("data: yields no batches") from None
        self.used += 1
        self.wait_s += time.perf_counter() - t
        return batch


def _to(x: Any, dev: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dev, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, dev) for v in x)
    if isinstance(x, Mapping):
        return {k: _to(v, dev) for k, v in x.items()}
    return x


def _batch_len(x: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (host metadata, no sync)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, (list, tuple)) and x:
        return _batch_len(x[0])
    if isinstance(x, Mapping) and x:
        return _batch_len(next(iter(x.values())))
    return 0


# --------------------------------------------------------------------------- signals and precision


class _StopSignals:
    """SIGTERM/SIGINT handlers for the duration of a run: they only note the signal.

    The loop stops at the next step boundary it agrees on (see :meth:`_Loop.stop_requested`). A second
    SIGINT while stopping raises KeyboardInterrupt at once. Handlers can only be installed from the main
    thread; elsewhere signals keep their previous behaviour.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # pragma: no cover - platform without the signal
                    pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = int(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _precision(dev: torch.device, tf32_on: bool, benchmark: bool | None):
    """TF32 and cuDNN autotuning for the run (CUDA only); previous settings restored afterwards."""
    if dev.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    if benchmark is None:  # autotune for fixed shapes unless deterministic kernels were asked for
        benchmark = not torch.are_deterministic_algorithms_enabled()
    torch.backends.cudnn.benchmark = bool(benchmark)
    try:
        with tf32_mode(tf32_on):
            yield
    finally:
        torch.backends.cudnn.benchmark = before


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


@dataclasses.dataclass
class LoopState:
    """Everything that changes from step to step (besides model, optimizer, scheduler and hooks)."""

    step: int = 0  # optimizer steps completed
    start_step: int = 0  # where this call started (the resumed step, or 0)
    resumed_from: int | None = None
    loss_sum: torch.Tensor | None = None  # on the device: sum of per-step losses since the last row
    loss_steps: int = 0  # steps in loss_sum
    checked_step: int = 0  # the loss was last read (and finite) after this step
    last_saved: int | None = None  # step of the last checkpoint written in this call
    lr: Any = None  # learning rate of the last step (read only when a row is written)
    samples: int = 0  # samples this process trained on since the last row
    interval_t0: float = 0.0  # perf_counter at the last row
    interval_wait_s: float = 0.0  # data wait already counted at the last row
    interval_overhead_s: float = 0.0  # checkpoint time since the last row
    overhead_s: float = 0.0  # evaluation and checkpoint time in this call
    metrics: dict = dataclasses.field(default_factory=dict)  # the last evaluation


class _Loop:
    """One call of :func:`train`: its fixed parts as attributes, its changing parts in ``self.state``."""

    def __init__(self, model, loss_fn, data, optimizer, *, steps, scheduler, hooks, evaluate, eval_every,
                 log_every, out_dir, checkpoint_every, config, dev, amp, grad_clip, progress, stop_after, desc,
                 accumulate, distributed_eval, compile_model, stop_check_every):
        self.model, self.loss_fn, self.data, self.optimizer = model, loss_fn, data, optimizer
        self.steps, self.scheduler, self.hooks, self.evaluate = steps, scheduler, HookSet(hooks), evaluate
        self.eval_every, self.log_every, self.checkpoint_every = eval_every, log_every, checkpoint_every
        self.grad_clip, self.progress, self.stop_after, self.desc = grad_clip, progress, stop_after, desc
        self.k, self.distributed_eval, self.compile_model = accumulate, distributed_eval, compile_model
        self.stop_check_every = stop_check_every
        self.dev = torch.device(dev) if dev is not None else next(model.parameters()).device
        self.rank, self.world = init_distributed(self.dev)
        self.is_main = self.rank == 0
        self.out = Path(out_dir) if out_dir is not None else None
        self.ckpt_path = self.out / CHECKPOINT_NAME if self.out is not None else None
        self.log_path = self.out / LOG_NAME if (self.out is not None and self.is_main) else None
        self.cfg = config_dict(config)
        self.amp_dtype, self.scaler = None, None
        if (self.dev.type == "cuda") if amp is None else (amp and self.dev.type == "cuda"):
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        # float64 sums of the loss, except on MPS (no float64 there)
        self.acc_dtype = torch.float32 if self.dev.type == "mps" else torch.float64
        self.state = LoopState(loss_sum=torch.zeros((), dtype=self.acc_dtype, device=self.dev))
        self.log = RunLog(None)
        self.step_model: nn.Module = model
        self.t0 = time.perf_counter()

    # -- restore ---------------------------------------------------------------------------------

    def restore(self, resume: bool) -> TrainResult | None:
        """Load the checkpoint (``resume``) or check that the folder holds no run; a finished run's result."""
        if self.out is None:
            return None
        if not resume:
            self._refuse_existing_run()
            self.log = RunLog(self.log_path)
            return None
        if not self.ckpt_path.exists():
            rows = count_rows(self.out / LOG_NAME)
            extra = (f" ({LOG_NAME} has {rows} rows but the run stopped before its first checkpoint: delete "
                     "the folder to start over)") if rows else ""
            raise CheckpointError(
                f"resume: no checkpoint in {self.out} (expected {self.ckpt_path}){extra}; nothing to resume. "
                "Start without resume for a new run."
            )
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.dev)
        check_same_config(ckpt, self.cfg, self.ckpt_path)
        saved = int(ckpt["step"])
        if saved > self.steps:
            raise CheckpointError(
                f"resume: the checkpoint at {self.ckpt_path} is at step {saved}, past steps={self.steps}; "
                "refusing to resume"
            )
        self._load_state(ckpt)
        st = self.state
        st.step = st.start_step = st.checked_step = st.resumed_from = saved
        st.metrics = json.loads(ckpt.get("metrics_json") or "{}")
        if saved == self.steps:  # finished: report it, change nothing
            return TrainResult(step=saved, metrics=dict(st.metrics), log_path=self.log_path,
                               checkpoint_path=self.ckpt_path, wall_time_s=0.0, resumed_from=saved,
                               train_time_s=0.0, steps_run=0)
        self.log = RunLog(self.log_path, resume_step=saved)
        return None

    def _refuse_existing_run(self) -> None:
        found = []
        if self.ckpt_path.exists():
            found.append(f"{CHECKPOINT_NAME}")
        rows = count_rows(self.out / LOG_NAME)
        if rows:
            found.append(f"{LOG_NAME} with {rows} rows")
        if found:
            raise RunExistsError(
                f"out_dir: {self.out} already holds a run ({' and '.join(found)}); pass resume=True "
                "(--resume on the command line) to continue it, or choose another out_dir for a new run. "
                "Nothing was changed."
            )

    def _load_state(self, ckpt: Mapping) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.hooks.load_state_dict(ckpt.get("hooks", {}))
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        running = ckpt.get("running_loss")
        if isinstance(running, Mapping):  # one sum per process (see checkpoint())
            sums = running["sum"].reshape(-1)
            mine = sums[self.rank] if sums.numel() == self.world else sums.sum() / self.world
            self.state.loss_sum = mine.to(device=self.dev, dtype=self.acc_dtype)
            self.state.loss_steps = int(running["steps"])
        elif running is not None:  # older checkpoints: [float sum, count]
            self.state.loss_sum = torch.tensor(float(running[0]), dtype=self.acc_dtype, device=self.dev)
            self.state.loss_steps = int(running[1])

    # -- start -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Wrap the model for data parallelism / compilation and open the batch stream and the bar."""
        if self.out is not None and self.is_main:
            remove_orphan_temporaries(self.out)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.step_model = DDP(self.model, device_ids=[self.dev.index] if self.dev.type == "cuda" else None)
        if self.compile_model:  # True, or a dict of torch.compile options such as {"mode": "max-autotune"}
            options = dict(self.compile_model) if isinstance(self.compile_model, Mapping) else {}
            self.step_model = torch.compile(self.step_model, **options)
        st = self.state
        self.end = self.steps if self.stop_after is None else min(self.steps, st.start_step + self.stop_after)
        self.stream = BatchStream(self.data, self.k, st.start_step)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.steps, initial=st.start_step, desc=self.desc, dynamic_ncols=True,
                        disable=not (progress_enabled(self.progress) and self.is_main))
        self.model.train()
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)  # peak_mem_gib: the peak of this call
        self.t0 = st.interval_t0 = time.perf_counter()

    # -- step: forward, backward, update (no host synchronisation) ---------------------------------

    def train_step(self) -> None:
        st, model = self.state, self.model
        inputs, targets = self.stream.next()
        if self.hooks.step_start(st.step, model):
            # Phase boundary: reset momentum / Adam moments (SA++ and ACDC call this "crucial").
            self.optimizer.state.clear()
            self.checkpoint(force=True)
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), dtype=self.acc_dtype, device=self.dev)
        for micro in range(self.k):
            if micro > 0:
                inputs, targets = self.stream.next()
            inputs, targets = _to(inputs, self.dev), _to(targets, self.dev)
            st.samples += _batch_len(inputs)
            last = micro == self.k - 1
            # Under DDP, all-reduce gradients only on the last micro-batch of the step.
            no_sync = self.world > 1 and not last and hasattr(self.step_model, "no_sync")
            with self.step_model.no_sync() if no_sync else contextlib.nullcontext():
                autocast = (torch.autocast(self.dev.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                            else contextlib.nullcontext())
                with autocast:
                    loss = self.loss_fn(self.step_model(inputs), targets)
                total = loss / self.k if self.k > 1 else loss
                if last:
                    pen = self.hooks.penalty(model)
                    if pen is not None:
                        total = total + pen
                (self.scaler.scale(total) if self.scaler is not None else total).backward()
            step_loss += loss.detach().to(self.acc_dtype)
        self._update()
        self.hooks.step_end(st.step, model)
        st.step += 1
        st.loss_sum += step_loss / self.k
        st.loss_steps += 1
        self.bar.update(1)

    def _update(self) -> None:
        opt, params = self.optimizer, self.model.parameters()
        self.state.lr = opt.param_groups[0]["lr"]
        if self.scaler is not None:  # fp16: the scaler reads its found-inf flag (one sync per step)
            if self.grad_clip:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
        else:
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step()

    # -- log / evaluate ----------------------------------------------------------------------------

    def after_step(self) -> None:
        """Log, evaluate and checkpoint on their schedules."""
        s, final = self.state.step, self.state.step == self.steps
        evaluate_now = self.evaluate is not None and (final or bool(self.eval_every and s % self.eval_every == 0))
        if evaluate_now or (self.evaluate is None and (final or s % self.log_every == 0)):
            self.write_row(evaluate_now)
        elif s % self.log_every == 0:
            self.check_loss()
        if final or (self.checkpoint_every is not None and s % self.checkpoint_every == 0):
            self.checkpoint()

    def check_loss(self) -> float | None:
        """Read the mean loss since the last row (the host sync point) and stop if it is not finite."""
        st = self.state
        if st.loss_steps == 0:
            return None
        total = all_reduce_sum(st.loss_sum) / self.world if self.world > 1 else st.loss_sum
        mean = float(total) / st.loss_steps
        if not math.isfinite(mean):
            first, last = st.checked_step + 1, st.step
            where = f"at step {last}" if first == last else f"between steps {first} and {last}"
            raise FloatingPointError(
                f"train: the loss became non-finite ({mean}) {where} (it is read every {self.log_every} "
                "steps); lower the learning rate or check the data"
            )
        st.checked_step = st.step
        self.bar.set_postfix(loss=f"{mean:.4g}")
        return mean

    def write_row(self, evaluate_now: bool) -> None:
        st = self.state
        train_loss = self.check_loss()
        t_row = time.perf_counter()
        elapsed = max(t_row - st.interval_t0 - st.interval_overhead_s, 1e-12)
        lr = st.lr
        row: dict[str, Any] = {
            "step": st.step,
            "train_loss": train_loss,
            "lr": float(lr) if lr is not None else None,
            "samples_per_s": st.samples * self.world / elapsed,
            "data_wait_frac": min(1.0, (self.stream.wait_s - st.interval_wait_s) / elapsed),
            "peak_mem_gib": peak_memory_gib(self.dev),
        }
        if evaluate_now and (self.is_main or self.distributed_eval):
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                st.metrics = dict(self.evaluate(self.model))
            self.model.train(was_training)
            row.update(st.metrics)
        row["wall_s"] = f"{time.perf_counter() - self.t0:.2f}"
        self.log.write(row)
        st.loss_sum.zero_()
        st.loss_steps, st.samples, st.interval_overhead_s = 0, 0, 0.0
        st.interval_wait_s = self.stream.wait_s
        st.interval_t0 = time.perf_counter()
        st.overhead_s += st.interval_t0 - t_row

    # -- checkpoint --------------------------------------------------------------------------------

    def checkpoint(self, force: bool = False) -> Path | None:
        """Write the checkpoint for the current step (rank 0; every rank checks the loss first).

        Skipped if one was written at this step already, unless ``force`` (a phase boundary changed
        the hooks' and the optimizer's state since).
        """
        st = self.state
        if self.ckpt_path is None or (st.last_saved == st.step and not force):
            return self.ckpt_path
        t = time.perf_counter()
        self.check_loss()  # never write weights trained on a non-finite loss over a good checkpoint
        # Every process's running loss sum (each saw other rows), so each resumes with its own.
        sums = torch.zeros(self.world, dtype=self.acc_dtype, device=self.dev)
        sums[self.rank] = st.loss_sum
        sums = all_reduce_sum(sums)
        if self.is_main:
            save_checkpoint({
                "step": st.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "hooks": self.hooks.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(),
                "config_json": json.dumps(self.cfg, sort_keys=True),
                # The loss summed since the last row, so a resumed run logs the same mean.
                "running_loss": {"sum": sums.cpu(), "steps": st.loss_steps},
                "metrics_json": json.dumps(_jsonable(st.metrics)),
            }, self.ckpt_path)
        st.last_saved = st.step
        spent = time.perf_counter() - t
        st.overhead_s += spent
        st.interval_overhead_s += spent
        return self.ckpt_path

    # -- pre-emption -------------------------------------------------------------------------------

    def stop_requested(self, signals: _StopSignals) -> str | None:
        """The name of the signal to stop for, agreed by all processes at this step boundary, else None.

        One process: the handler's flag is read every step (free). Under torchrun: every
        ``stop_check_every`` steps the processes all-reduce (max) one integer, the received signal
        number, and read it back: one tiny collective and one host sync per check, so that every
        process stops after the same step even if only one of them was signalled.
        """
        received = signals.received
        if self.world > 1:
            if self.state.step % self.stop_check_every != 0:
                return None
            flag = torch.tensor([received], dtype=torch.int64, device=self.dev)
            received = int(all_reduce_max(flag)[0])
        return signal.Signals(received).name if received else None

    def preempt(self, signal_name: str) -> Preempted:
        path = self.checkpoint()
        barrier()  # no process exits before rank 0 has written the checkpoint
        return Preempted(self.state.step, path, signal_name)

    # -- result ------------------------------------------------------------------------------------

    def result(self) -> TrainResult:
        st = self.state
        wall = time.perf_counter() - self.t0
        return TrainResult(step=st.step, metrics=dict(st.metrics), log_path=self.log.path,
                           checkpoint_path=self.ckpt_path, wall_time_s=wall, resumed_from=st.resumed_from,
                           train_time_s=wall - st.overhead_s, steps_run=st.step - st.start_step)


def train(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    scheduler: Any | None = None,
    hooks: Sequence[TrainHook] = (),
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    log_every: int = 50,
    out_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    config: Any | None = None,
    dev: torch.device | str | None = None,
    device: torch.device | str | None = None,
    amp: bool | None = None,
    grad_clip: float | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    desc: str = "train",
    accumulate: int = 1,
    distributed_eval: bool = False,
    compile: bool | Mapping[str, Any] = False,
    cudnn_benchmark: bool | None = None,
    tf32: bool = True,
    handle_signals: bool = True,
    stop_check_every: int = 10,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimizer steps; see the module docstring for hooks.

    Defined in book/intro.md.

    ``data`` yields ``(inputs, targets)`` batches and is re-iterated every epoch (use
    :func:`make_loader` for an order that depends only on the seed and the epoch). ``out_dir``
    receives ``metrics.csv`` (columns in :mod:`pruninglab.runlog`) and ``checkpoint.pt``.

    Runs and folders: without ``resume`` the folder must not hold a run yet (a checkpoint or a
    non-empty ``metrics.csv``: :class:`RunExistsError`, nothing changed). ``resume=True`` continues
    from the checkpoint, refuses one made with a different ``config`` (naming the fields; paths are
    compared resolved) and, with no checkpoint, raises :class:`CheckpointError`; resuming a finished
    run returns its recorded result and changes no file. ``stop_after`` ends the run early after that
    many steps, as a crash would (for tests of resume).

    SIGTERM / SIGINT (with an ``out_dir`` and ``handle_signals``): the current step finishes, a
    checkpoint is written and :class:`Preempted` is raised. Under torchrun the processes agree on the
    step to stop at every ``stop_check_every`` steps (one all-reduce of one integer).

    The loss is summed on the device and read every ``log_every`` steps (and at rows and
    checkpoints); a non-finite loss raises ``FloatingPointError`` naming the steps between which it
    appeared. With ``evaluate``, a row is written every ``eval_every`` steps and at the end;
    without, every ``log_every`` steps and at the end.

    ``accumulate=k`` makes each optimizer step consume ``k`` batches (gradient accumulation: the
    loss of each is divided by ``k``; under DDP gradients are all-reduced once per step), so a
    large global batch fits in memory; an epoch is then ``len(data) // k`` steps. With
    ``distributed_eval=True`` every torchrun process calls ``evaluate`` (which must combine its
    per-rank results, e.g. with :func:`all_reduce_sum`); otherwise only rank 0 evaluates.

    GPU options: ``amp`` (default on CUDA: bf16 autocast, or fp16 with a gradient scaler),
    ``compile=True`` runs the forward through ``torch.compile`` (a dict passes options to it), ``cudnn_benchmark`` (default on
    CUDA unless deterministic algorithms were asked for) autotunes convolutions for fixed shapes,
    ``tf32`` (default on) lets float32 products use TF32 during training; all are restored afterwards.
    """
    # ``device=`` is the library's spelling; ``dev=`` stays as its older alias.
    if device is not None:
        if dev is not None and torch.device(dev) != torch.device(device):
            raise ValueError(f"device: given twice, as dev={dev!r} and device={device!r}")
        dev = device
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps!r}")
    for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        positive_int(value, name, allow_none=True)
    log_every, accumulate = positive_int(log_every, "log_every"), positive_int(accumulate, "accumulate")
    stop_check_every = positive_int(stop_check_every, "stop_check_every")
    stop_after = nonnegative_int(stop_after, "stop_after", allow_none=True)
    if grad_clip is not None:
        nonnegative_float(grad_clip, "grad_clip")
    if resume and out_dir is None:
        raise ValueError("resume: needs out_dir, the folder that holds checkpoint.pt")

    loop = _Loop(model, loss_fn, data, optimizer, steps=int(steps), scheduler=scheduler, hooks=hooks,
                 evaluate=evaluate, eval_every=eval_every, log_every=log_every, out_dir=out_dir,
                 checkpoint_every=checkpoint_every, config=config, dev=dev, amp=amp, grad_clip=grad_clip,
                 progress=progress, stop_after=stop_after, desc=desc, accumulate=accumulate,
                 distributed_eval=distributed_eval, compile_model=compile, stop_check_every=stop_check_every)
    with _precision(loop.dev, tf32, cudnn_benchmark), _StopSignals(handle_signals and out_dir is not None) as sig:
        recorded = loop.restore(resume)  # restore
        if recorded is not None:
            return recorded
        loop.start()
        try:
            while loop.state.step < loop.end:
                loop.train_step()  # step: forward, backward, update
                loop.after_step()  # log / evaluate, checkpoint
                stop = loop.stop_requested(sig)  # pre-emption: stop at an agreed step boundary
                if stop is not None:
                    raise loop.preempt(stop)
        finally:
            loop.bar.close()
    return loop.result()
