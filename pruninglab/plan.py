"""What a run will cost, before it is launched: FLOPs, memory, input rate, hours, checkpoint size.

:func:`plan_for` builds the exact model of an experiment's config, runs a few forward/backward passes
on this machine on synthetic inputs of the real shapes at a small batch, and extrapolates:

* ``forward_flops_per_sample``: counted by ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs =
  2 x multiply-adds of matmuls and convolutions; element-wise work is not counted);
* ``train_flops_per_step``: 3 x forward x batch (forward + backward of activations and weights),
  or counted directly where the step is not a plain forward/backward (MAML, Hessian products);
* ``peak_memory_gib_per_gpu``: parameters + gradients + optimizer state (fp32) + the bytes autograd
  saves for backward, measured per sample with ``saved_tensors_hooks`` at the small batch and scaled to
  the per-GPU micro-batch, + 10 % for allocator slack and workspaces. Measured in float32 on the CPU;
  under bf16 autocast most saved activations are half that size, so this is an upper bound;
* ``input_samples_per_s_per_worker``: measured here (decode + crop of generated 500x375 JPEGs for
  ImageNet, reads of prepared arrays for Criteo, decode of a signal for INR, in-memory slicing for
  the limit);
* ``projected_hours``: the larger of compute time (total FLOPs / (GPUs x peak bf16 FLOP/s x
  utilisation), :data:`GPU_PEAK_BF16`, utilisation by model family from :data:`UTILISATION`) and input time (samples / (input rate x
  workers x GPUs));
* ``checkpoint_disk_gib``: one checkpoint (fp32 weights + optimizer state + masks); runs keep the latest.

The mapping from experiment name to builder is :data:`BUILDERS`; a builder reads the config only
through attributes.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

#: Peak dense (non-sparse) tensor-core FLOP/s in bf16 (fp16 where the GPU has no bf16: V100, T4),
#: from the vendors' data sheets (SXM variants).
GPU_PEAK_BF16 = {
    "v100": 125e12, "t4": 65e12, "a10": 125e12, "a100": 312e12, "l4": 121e12, "l40s": 362e12,
    "h100": 989e12, "h200": 989e12, "b200": 2250e12, "cpu": 1e12,
}
#: Assumed share of peak a training step reaches (model FLOPs utilisation), by model family. Dense
#: matmul-bound work (MLPs, SIRENs) reaches 30-50 % of peak in bf16: we assume 40 %. Convolutional nets
#: with batch norm are bound by memory traffic: well-tuned ResNet-50 training (MLPerf-class, DALI input)
#: reaches about 3.5-4k images/s per H100, about 10 % of its dense bf16 peak: we assume 10 %.
UTILISATION = {"mlp": 0.40, "conv": 0.10}
GIB = 2.0**30


@dataclass
class _Spec:
    """What a builder returns: the model and how to feed it, plus the run's size."""

    model: nn.Module
    make_batch: Callable[[int], tuple[Any, Any]]  # batch size -> (inputs, targets)
    loss_fn: Callable[[Any, Any], torch.Tensor]
    batch_size: int  # global samples per optimizer step
    accumulate: int
    steps: int
    optimizer_state_per_param: int  # fp32 copies: SGD momentum 1, Adam 2
    measure_input: Callable[[], float]  # samples/s of one worker
    workers_per_gpu: int
    eval_flops: float = 0.0  # total FLOPs of evaluations over the run
    extra_flops: float = 0.0  # e.g. Hessian products of the limit
    train_flops_per_step: float | None = None  # when not 3 x forward x batch
    samples_per_step_input: int | None = None  # input samples read per step (default batch_size)
    mask_params: int = 0
    notes: list[str] = field(default_factory=list)
    family: str = "mlp"  # key of UTILISATION
    unique_samples: int | None = None  # data held in memory: read (decoded) once, not every step


def _count_flops(fn: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _saved_bytes(fn: Callable[[], Any], model: nn.Module) -> int:
    """Bytes of distinct tensor storages autograd saves for backward while ``fn`` runs, parameters excluded."""
    seen: dict[tuple, int] = {}
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    own |= {b.untyped_storage().data_ptr() for b in model.buffers()}

    def pack(t):
        try:
            st = t.untyped_storage()
            if st.data_ptr() in own:
                return t
            key = (st.data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            seen[(id(t),)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def _time_per_call(fn: Callable[[], Any], min_time: float = 0.5, max_calls: int = 50) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while n < max_calls and (n < 2 or time.perf_counter() - t0 < min_time):
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


# --------------------------------------------------------------------------- input measurements


def _jpeg_folder(root: str, n: int = 12, size=(375, 500)) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    d = os.path.join(root, "n00000000")
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        # Smooth structure plus mild noise: compresses like a photograph (about 60-100 KB at quality 90).
        base = 128 + 60 * np.sin(xx / (9 + i) + yy / 23)[..., None] * np.array([1.0, 0.7, 0.4])
        img = base + rng.normal(0, 12, (*size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i}.JPEG"), quality=90)


def measure_imagenet_input(image_size: int = 224, resize: int = 256, seconds: float = 2.0) -> float:
    """Images/s of one worker of the uint8 pipeline (decode + random-resized crop) on 500x375 JPEGs.
    """
    from .data.imagenet import Uint8ImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        _jpeg_folder(tmp)
        ds = Uint8ImageFolder(tmp, train=True, image_size=image_size, resize=resize)
        return len(ds) / _time_per_call(lambda: [ds[i] for i in range(len(ds))], min_time=seconds)


def measure_criteo_input(batch_size: int = 32768, num_buckets: int = 1000, seconds: float = 1.0) -> float:
    """Rows/s of one process reading prepared Criteo arrays (memory maps, page cache warm).
    """
    from .data.criteo import write_synthetic_criteo
    from .data.criteo_prepared import CriteoArrays, prepare_criteo

    rows = 20000
    b = min(int(batch_size), rows // 2)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_synthetic_criteo(os.path.join(tmp, "t.txt"), rows, seed=0)
        prepare_criteo(src, os.path.join(tmp, "p"), num_buckets=num_buckets, chunk_rows=rows)
        reader = CriteoArrays(os.path.join(tmp, "p"), b)
        return len(reader) * b / _time_per_call(lambda: list(reader), min_time=seconds)


def measure_signal_input(resolution: int, seconds: float = 1.0) -> float:
    """Signals/s of one worker: decode a ``resolution``-pixel JPEG and make its ``[H*W, 3]`` float target."""
    from .data.imagenet import decode_image_uint8

    with tempfile.TemporaryDirectory() as tmp:
        _jpeg_folder(tmp, n=4, size=(resolution, resolution))
        files = sorted(os.path.join(tmp, "n00000000", f) for f in os.listdir(os.path.join(tmp, "n00000000")))

        def load():
            for f in files:
                decode_image_uint8(f).permute(1, 2, 0).reshape(-1, 3).float().div_(255)

        return len(files) / _time_per_call(load, min_time=seconds)


def measure_in_memory_input(shape=(3, 32, 32), batch: int = 128, seconds: float = 0.5) -> float:
    """Samples/s of batches sliced from an in-memory uint8 dataset with crop and flip (the limit's CIFAR)."""
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (2048, *shape), dtype=torch.uint8, generator=g)

    def one():
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x = data[idx].float().div_(255)
        if len(shape) == 3:
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))[..., 2:2 + shape[1], 3:3 + shape[2]]
            x = torch.where(torch.rand(batch, 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
        return x

    return batch / _time_per_call(one, min_time=seconds)


# --------------------------------------------------------------------------- builders

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
CRITEO_ROWS = 45_840_617
CELEBA_IMAGES = 202_599


def _steps(config, samples_per_epoch: int) -> int:
    steps_per_epoch = max(1, samples_per_epoch // int(config.batch_size))
    return int(config.steps) if getattr(config, "steps", None) else max(1, round(float(config.epochs) * steps_per_epoch))


def _imagenet(config) -> _Spec:
    import torchvision

    model = getattr(torchvision.models, config.arch)(weights=None, num_classes=1000)
    s = int(config.image_size)
    steps = _steps(config, IMAGENET_TRAIN)
    spe = IMAGENET_TRAIN // int(config.batch_size)
    eval_every = config.eval_every or 10 * spe
    spec = _Spec(
        model=model,
        make_batch=lambda b: (torch.randn(b, 3, s, s), torch.randint(0, 1000, (b,))),
        loss_fn=lambda out, y: nn.functional.cross_entropy(out, y),
        batch_size=int(config.batch_size), accumulate=int(config.accumulate), steps=steps,
        optimizer_state_per_param=1,  # SGD momentum
        measure_input=lambda: measure_imagenet_input(s, int(config.resize)),
        workers_per_gpu=int(config.workers), family="conv",
    )
    spec.notes.append(f"ImageNet-1k: {IMAGENET_TRAIN:,} training images, {IMAGENET_VAL:,} validation; "
                      f"evaluation every {eval_every} steps")
    spec._eval = (steps // max(1, eval_every) + 1) * IMAGENET_VAL  # forward passes
    return spec


def _criteo(config) -> _Spec:
    from .models import CriteoMLP

    nb = int(config.num_buckets)
    model = CriteoMLP(num_buckets=nb, embed_dim=int(config.embed_dim))
    n_train = int(CRITEO_ROWS * float(config.train_fraction))
    steps = _steps(config, n_train)
    spec = _Spec(
        model=model,
        make_batch=lambda b: ((torch.randn(b, 13), torch.randint(0, nb, (b, 26))), torch.randint(0, 2, (b,)).float()),
        loss_fn=lambda out, y: nn.functional.binary_cross_entropy_with_logits(out, y),
        batch_size=int(config.batch_size), accumulate=int(config.accumulate), steps=steps,
        optimizer_state_per_param=2,  # Adam
        measure_input=lambda: measure_criteo_input(min(int(config.batch_size), 8192)),
        workers_per_gpu=1,
    )
    val = CRITEO_ROWS - n_train if config.val_rows is None else int(config.val_rows)
    spe = max(1, n_train // int(config.batch_size))
    evals = steps // int(config.eval_every or spe) + 1
    spec._eval = evals * val
    spec.notes.append(f"Criteo Kaggle: {CRITEO_ROWS:,} rows, {n_train:,} for training; embedding table "
                      f"{26 * nb:,} x {config.embed_dim} (lookups are memory-bound, not counted as FLOPs); "
                      "input rate = one process reading prepared arrays (prepare-criteo)")
    return spec


def _limit(config) -> _Spec:
    from .experiments.limit import build_model

    shapes = {"digits": ((64,), 10, 1437, 360), "cifar10": ((3, 32, 32), 10, 50_000, 10_000),
              "cifar100": ((3, 32, 32), 100, 50_000, 10_000),
              "tinyimagenet": ((3, 64, 64), 200, 100_000, 10_000)}
    in_shape, classes, n_train, n_test = shapes[config.dataset]
    n_train = int(config.train_samples or n_train)
    n_test = int(config.test_samples or n_test)
    model = build_model(config.model, in_shape, classes)
    steps = int(config.epochs) * max(1, n_train // int(config.batch_size))
    spec = _Spec(
        model=model,
        make_batch=lambda b: (torch.randn(b, *in_shape), torch.randint(0, classes, (b,))),
        loss_fn=lambda out, y: nn.functional.cross_entropy(out, y),
        batch_size=int(config.batch_size), accumulate=1, steps=steps, optimizer_state_per_param=1,
        measure_input=lambda: measure_in_memory_input(in_shape if len(in_shape) == 3 else (64,)),
        workers_per_gpu=1, family="conv" if len(in_shape) == 3 and not config.model.startswith(("fc", "mlp")) else "mlp",
        unique_samples=n_train + n_test,
    )
    spec._eval = (int(config.epochs) // int(config.eval_every_epochs) + 1) * n_test + int(config.grid) * 8 * n_test
    spec._hessian = dict(samples=int(config.hessian_samples or n_train),
                         products=(int(config.lanczos_steps) * int(config.slq_probes)
                                   if config.spectrum == "slq" else None) or 0,
                         rows=int(config.zero_mass_rows), exact=config.spectrum == "exact",
                         batch=int(config.hessian_batch_size))
    spec.notes.append(f"{config.model} on {config.dataset} ({n_train:,} training samples): training, then "
                      f"{'an exact Hessian' if config.spectrum == 'exact' else f'{config.lanczos_steps} Lanczos steps'}"
                      " over the Hessian samples (float32, TF32 off), then the actual-limit search")
    return spec


def _inr(config) -> _Spec:
    from .inr.meta import meta_loss
    from .inr.siren import coordinate_grid, siren

    res = int(config.resolution or 32)
    channels = 1 if str(config.data) == "sdf" else 3
    dim_in = 3 if str(config.data) == "sdf" else 2
    model = siren(dim_in, int(config.width), int(config.depth), channels, float(config.omega0), seed=0)
    points = res * res if dim_in == 2 else 200_000
    widths = config.narrow_widths or tuple(config.narrow_rounds)
    meta_steps = (int(config.dense_steps) + int(config.rounds) * int(config.round_steps)
                  + len(widths) * int(config.narrow_steps))
    spec = _Spec(
        model=model,
        make_batch=lambda b: (torch.rand(b, dim_in) * 2 - 1, torch.rand(b, channels)),
        loss_fn=lambda out, y: torch.mean((out - y) ** 2),
        batch_size=int(config.meta_batch), accumulate=1, steps=meta_steps, optimizer_state_per_param=2,
        measure_input=lambda: measure_signal_input(min(res, 256)),
        workers_per_gpu=1, samples_per_step_input=int(config.meta_batch),
        unique_samples=CELEBA_IMAGES if str(config.data) == "celeba" else None,
    )
    # The meta-step: counted directly on a slice of the coordinates (FLOPs are linear in their number).
    sub = min(points, 1024)
    coords = coordinate_grid(int(math.isqrt(sub)))[:sub] if dim_in == 2 else torch.rand(sub, 3)
    signals = torch.rand(int(config.meta_batch), len(coords), channels)
    params = dict(model.named_parameters())

    def step():
        meta_loss(model, params, coords, signals, steps=int(config.inner_steps), lr=float(config.inner_lr),
                  first_order=bool(config.first_order)).backward()

    spec.train_flops_per_step = _count_flops(step) * points / len(coords)
    spec._inner_steps = int(config.inner_steps)
    spec._points = points
    spec._sub_points = len(coords)
    tests = int(config.num_test) * int(config.test_steps) * len(getattr(config, "methods", ())) * int(config.rounds)
    spec._eval_per_point_steps = tests
    spec.notes.append(f"meta-batch {config.meta_batch} signals of {points:,} points; {meta_steps:,} meta-steps "
                      f"(dense + {config.rounds} rounds x {config.round_steps} + {len(widths)} narrow widths x "
                      f"{config.narrow_steps}); batch = signals, per-sample = per signal point")
    return spec


def _phase(config) -> _Spec:
    spec = _Spec(model=nn.Identity(), make_batch=lambda b: (torch.zeros(b, 1), torch.zeros(b, 1)),
                 loss_fn=lambda out, y: out.sum() * 0, batch_size=1, accumulate=1, steps=0,
                 optimizer_state_per_param=0, measure_input=lambda: float("nan"), workers_per_gpu=0)
    spec.notes.append("convex programs solved with cvxpy on the CPU: no network, no GPU; cost grows with "
                      f"d={getattr(config, 'd', '?')} and the number of trials")
    return spec


#: Experiment name -> builder. The one place that knows which config belongs to which experiment.
BUILDERS: dict[str, Callable[[Any], _Spec]] = {
    "sapp-imagenet": _imagenet,
    "sapp-criteo": _criteo,
    "limit": _limit,
    "inr": _inr,
    "phase": _phase,
}


# --------------------------------------------------------------------------- the plan


def plan_for(experiment_name: str, config, *, gpu: str = "h100", num_gpus: int = 1,
             utilisation: float | None = None, measure_batch: int = 2) -> dict:
    """The plan of one run: size, FLOPs, memory, input rate and projected time on ``num_gpus`` x ``gpu``.

    See the module docstring for each number's method. Runs a few
    passes of the real model at ``measure_batch`` samples on this machine (seconds to a minute on a CPU).
    """
    from ._checks import fraction, one_of, positive_int

    one_of(experiment_name, "experiment_name", tuple(BUILDERS))
    one_of(gpu, "gpu", tuple(GPU_PEAK_BF16))
    positive_int(num_gpus, "num_gpus")
    positive_int(measure_batch, "measure_batch")
    if utilisation is not None:
        fraction(utilisation, "utilisation", low_open=True, high_open=False)
    t_start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = BUILDERS[experiment_name](config)
        util = UTILISATION[spec.family] if utilisation is None else float(utilisation)
        plan = _measure(experiment_name, spec, gpu, int(num_gpus), util, int(measure_batch))
    plan["plan_seconds"] = round(time.perf_counter() - t_start, 1)
    return plan


def _measure(name: str, spec: _Spec, gpu: str, num_gpus: int, util: float, b: int) -> dict:
    model = spec.model
    params = sum(p.numel() for p in model.parameters())
    peak = GPU_PEAK_BF16[gpu]
    plan: dict[str, Any] = {"experiment": name, "params": int(params)}
    if spec.steps == 0:  # nothing to train on a GPU
        plan.update(forward_flops_per_sample=0, train_flops_per_step=0, total_flops=0, steps=0,
                    peak_memory_gib_per_gpu=0.0, input_samples_per_s_per_worker=None, projected_hours=None,
                    gpu=None, num_gpus=0, checkpoint_disk_gib=0.0, notes=spec.notes)
        return plan
    model.train()
    inputs, targets = spec.make_batch(b)
    fwd = _count_flops(lambda: model(inputs)) / b
    # Activation memory: what autograd keeps from the forward for the backward, per sample.
    # Saved bytes at b and 2b samples: the slope is per sample, the rest (e.g. weight-shaped tensors of a
    # double backward) does not grow with the batch.
    inputs2, targets2 = spec.make_batch(2 * b)
    s1 = _saved_bytes(lambda: spec.loss_fn(model(inputs), targets), model)
    s2 = _saved_bytes(lambda: spec.loss_fn(model(inputs2), targets2), model)
    act, fixed = max(s2 - s1, 0) / b, max(2 * s1 - s2, 0)
    # A few real training steps on this machine (forward, backward, SGD) at the small batch.
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        spec.loss_fn(model(inputs), targets).backward()
        opt.step()

    cpu_s = _time_per_call(step, min_time=0.3, max_calls=3)
    train_step = spec.train_flops_per_step if spec.train_flops_per_step is not None else 3 * fwd * spec.batch_size
    total = train_step * spec.steps
    eval_fwd = getattr(spec, "_eval", 0) * fwd
    if hasattr(spec, "_hessian"):  # Hessian-vector products of the limit: count one, per sample
        h = spec._hessian
        ps = [p for p in model.parameters() if p.requires_grad]

        def hvp(x, y):
            loss = spec.loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, ps, create_graph=True)
            dot = sum((g * torch.ones_like(g)).sum() for g in grads)
            torch.autograd.grad(dot, ps)

        hvp_flops = _count_flops(lambda: hvp(inputs, targets)) / b
        h1 = _saved_bytes(lambda: hvp(inputs, targets), model)
        h2 = _saved_bytes(lambda: hvp(inputs2, targets2), model)
        hvp_act, hvp_fixed = max(h2 - h1, 0) / b, max(2 * h1 - h2, 0)
        products = (params if h["exact"] else h["products"]) + h["rows"]
        spec.extra_flops = products * h["samples"] * hvp_flops
        plan["hessian_products"] = int(products)
        plan["hessian_flops"] = spec.extra_flops
        plan["hessian_peak_memory_gib"] = round(1.1 * (params * 8 + hvp_fixed + hvp_act * h["batch"]) / GIB, 2)
    if hasattr(spec, "_eval_per_point_steps"):  # INR test-time fitting: 3 x forward per point and step
        eval_fwd = 3 * fwd * spec._points * spec._eval_per_point_steps
        # torch.func refuses saved-tensor hooks: a signal's meta-step keeps about (2 x inner steps + 1)
        # forward graphs (inner steps with their second-order graphs, then the outer loss).
        act = act * spec._points * (2 * spec._inner_steps + 1)
    total += eval_fwd + spec.extra_flops
    micro = max(1, math.ceil(spec.batch_size / num_gpus / spec.accumulate))
    state_bytes = params * 4 * (2 + spec.optimizer_state_per_param)  # weights, grads, optimizer state
    peak_bytes = 1.10 * (state_bytes + fixed + act * micro)
    if "hessian_peak_memory_gib" in plan:
        peak_bytes = max(peak_bytes, plan["hessian_peak_memory_gib"] * GIB)
    rate = float(spec.measure_input())
    samples_in = (spec.samples_per_step_input or spec.batch_size) * spec.steps
    if spec.unique_samples is not None:  # held in (device) memory after one read
        samples_in = spec.unique_samples
    workers = max(1, spec.workers_per_gpu)
    hours_compute = total / (num_gpus * peak * util) / 3600
    hours_input = samples_in / (rate * workers * num_gpus) / 3600 if rate and rate == rate else 0.0
    ckpt = params * 4 * (1 + spec.optimizer_state_per_param) + params  # + bool masks, at most one per weight
    needed = spec.batch_size * spec.steps / max(hours_compute * 3600, 1e-9) / num_gpus
    plan.update(
        forward_flops_per_sample=fwd,
        train_flops_per_step=train_step,
        steps=int(spec.steps),
        batch_size=int(spec.batch_size),
        micro_batch_per_gpu=int(micro),
        total_flops=total,
        peak_memory_gib_per_gpu=round(peak_bytes / GIB, 4),
        activation_mib_per_sample=round(act / 2**20, 3),
        memory_method="1.1 x (fp32 weights + grads + optimizer state + autograd-saved bytes: per sample "
                      "(slope between two measured batches, float32) x micro-batch per GPU + the batch-independent "
                      "rest); bf16 autocast roughly halves the activations; the Hessian phase of the limit is "
                      "estimated the same way at its chunk size and the larger of the two is reported",
        loadavg_during_plan=_loadavg(),
        input_samples_per_s_per_worker=round(rate, 1) if rate == rate else None,
        input_workers_per_gpu=int(spec.workers_per_gpu),
        input_samples_per_s_needed_per_gpu=(round(needed, 1) if spec.samples_per_step_input is None
                                            and spec.unique_samples is None else None),
        input_read_once=spec.unique_samples is not None,
        projected_hours_compute=round(hours_compute, 2),
        projected_hours_input=round(hours_input, 2),
        projected_hours=round(max(hours_compute, hours_input), 2),
        gpu=gpu,
        num_gpus=num_gpus,
        gpu_peak_bf16_flops=peak,
        utilisation=util,
        checkpoint_disk_gib=round(ckpt / GIB, 6),
        cpu_seconds_per_step_measured=round(cpu_s, 3),
        cpu_measure_batch=b,
        notes=spec.notes,
    )
    return plan


def _loadavg() -> float | None:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _human(v: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def plan_markdown(plan: dict) -> str:
    """The key numbers of a plan as a Markdown table (it wraps on a narrow page); ``plan["notes"]`` say how.

    Defined in book/sapp_imagenet.md.
    """
    rows = [("parameters", f"{plan['params']:,}"),
            ("forward FLOPs / sample", _human(plan["forward_flops_per_sample"])),
            ("train FLOPs / step", f"{_human(plan['train_flops_per_step'])} (batch {plan['batch_size']:,})"),
            ("steps", f"{plan['steps']:,}"),
            ("peak memory / GPU", f"{plan['peak_memory_gib_per_gpu']} GiB at micro-batch "
                                  f"{plan['micro_batch_per_gpu']:,} (fp32 upper bound)"),
            ("input / worker", f"{plan['input_samples_per_s_per_worker']:,} samples/s, measured on this machine"),
            ("projected time", f"{plan['projected_hours']} h on {plan['num_gpus']} x {plan['gpu']} (compute "
                               f"{plan['projected_hours_compute']} h at {plan['utilisation']:.0%} of peak; "
                               f"input {plan['projected_hours_input']} h)"),
            ("checkpoint", f"{plan['checkpoint_disk_gib']:.3g} GiB")]
    return "| quantity | plan |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def format_plan(plan: dict) -> str:
    """A readable table of a plan, then one line of JSON (the same numbers, for scripts).
    """
    rows = [
        ("experiment", plan["experiment"]),
        ("parameters", f"{plan['params']:,}"),
    ]
    if plan.get("steps"):
        rows += [
            ("forward FLOPs / sample", _human(plan["forward_flops_per_sample"])),
            ("train FLOPs / step", f"{_human(plan['train_flops_per_step'])} (batch {plan['batch_size']:,})"),
            ("steps", f"{plan['steps']:,}"),
            ("total FLOPs", _human(plan["total_flops"]) + (f" (incl. Hessian {_human(plan['hessian_flops'])})"
                                                           if "hessian_flops" in plan else "")),
            ("peak memory / GPU", f"{plan['peak_memory_gib_per_gpu']} GiB at micro-batch "
                                  f"{plan['micro_batch_per_gpu']:,}"),
            ("input / worker", f"{plan['input_samples_per_s_per_worker']} samples/s (measured here), "
                               f"{plan['input_workers_per_gpu']} worker(s) per GPU"
                               + ("; data read once, then held in memory" if plan.get("input_read_once") else
                                  f"; {plan.get('input_samples_per_s_needed_per_gpu')}/s needed per GPU")),
            ("projected time", f"{plan['projected_hours']} h on {plan['num_gpus']} x {plan['gpu']} "
                               f"(compute {plan['projected_hours_compute']} h at {plan['utilisation']:.0%} of "
                               f"{_human(plan['gpu_peak_bf16_flops'])}FLOP/s, input {plan['projected_hours_input']} h)"),
            ("checkpoint", f"{plan['checkpoint_disk_gib']} GiB (latest kept)"),
            ("measured on", f"this machine, 1-minute load {plan['loadavg_during_plan']} (input rates scale with it)"),
        ]
    rows += [("note", n) for n in plan.get("notes", [])]
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
    clean = {k: v for k, v in plan.items() if k != "notes"}
    return text + "\n" + json.dumps(clean)


__all__ = ["plan_for", "format_plan", "BUILDERS", "GPU_PEAK_BF16", "UTILISATION", "measure_imagenet_input",
           "measure_criteo_input"]
