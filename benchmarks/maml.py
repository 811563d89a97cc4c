"""One MAML meta-training step: vmapped functional MAML against a per-signal loop of the same math.

Ours is ``pruninglab.inr.meta.meta_loss`` (``torch.func``: ``vmap`` over the meta-batch of signals,
``grad`` for the inner SGD steps, one ``.backward()``). The peer is how MAML is usually written, and
how the official Meta-SparseINR code runs it: a Python loop over the signals with
``torch.autograd.grad(create_graph=True)`` for the inner steps (``looped_meta_loss``). One step =
forward, second-order backward, Adam update, masks re-applied (``p = p * m``). Both get the same SIREN,
masks (50% pruned by magnitude), signals and settings (2 inner SGD steps of 1e-2, second order). The
gradients are compared (max abs difference, and relative to the largest gradient entry).
Protocol of BENCHMARKS.md: same process, interleaved A B A B, warm-up, >= 5 repetitions, medians.

    python benchmarks/maml.py [--res 25] [--width 64] [--channels 1] [--omega0 30] [--reps 7]
                              [--threads 2] [--device cpu|cuda] [--first-order] [--no-compile]

A third variant, ``compiled``, is ``torch.compile(meta_loss)``: the same functional meta-step (vmap over
signals, torch.func.grad inner steps) traced once, so SIREN's sine and element-wise work fuse; its
one-time compile time is reported separately, and its gradients are checked against the loop too.

The default is the book's small configuration (25x25 grey LFW faces, width 64, omega0 30); the
paper's is ``--res 178 --width 256 --channels 3 --omega0 200`` (GPU). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from pruninglab.inr.meta import looped_meta_loss, meta_loss
from pruninglab.inr.siren import coordinate_grid, siren
from pruninglab.masks import prunable_parameters
from pruninglab.pruners.magnitude import global_magnitude_masks
from pruninglab.runtime import device_name


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def make_step(fn, net, coords, signals, masks, first_order):
    params = dict(net.named_parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fn(net, params, coords, signals, masks, steps=2, lr=1e-2, first_order=first_order)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        return grads

    return step


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, default=25)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--omega0", type=float, default=30.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[3, 16])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args(argv)
    if args.reps < 5:
        raise SystemExit("--reps: at least 5 repetitions (BENCHMARKS.md)")
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    load0, t_start = loadavg(), time.perf_counter()
    print(f"device: {device_name(dev)}; SIREN 2-{args.width}x4-{args.channels}, omega0 {args.omega0:g}, "
          f"{args.res}x{args.res} signals; {'first' if args.first_order else 'second'}-order MAML, 2 inner steps; "
          f"threads {args.threads}; loadavg at start {load0}", flush=True)

    figures: dict = {"device": device_name(dev), "config": f"{args.res}x{args.res}x{args.channels}, width {args.width}",
                     "threads": args.threads, "second_order": not args.first_order}
    max_abs, max_rel = 0.0, 0.0
    for batch in args.batches:
        gen = torch.Generator().manual_seed(batch)
        coords = coordinate_grid(args.res).to(dev)
        signals = torch.rand(batch, args.res * args.res, args.channels, generator=gen).to(dev)
        base = siren(2, args.width, 4, args.channels, args.omega0, seed=0)
        masks = {n: m.to(dev) for n, m in global_magnitude_masks(dict(prunable_parameters(base)), 0.5).items()}
        names = ("vmap", "loop") if args.no_compile else ("vmap", "loop", "compiled")
        nets = {name: siren(2, args.width, 4, args.channels, args.omega0, seed=0).to(dev) for name in names}
        for net in nets.values():
            with torch.no_grad():
                for n, p in net.named_parameters():
                    if n in masks:
                        p.mul_(masks[n])
        steps = {"vmap": make_step(meta_loss, nets["vmap"], coords, signals, masks, args.first_order),
                 "loop": make_step(looped_meta_loss, nets["loop"], coords, signals, masks, args.first_order)}
        if "compiled" in nets:
            steps["compiled"] = make_step(torch.compile(meta_loss), nets["compiled"], coords, signals, masks,
                                          args.first_order)
        # Warm-up (and compilation), and the gradient check on the identical first step (same parameters).
        grads = {}
        for name, fn in steps.items():
            sync(dev)
            t0 = time.perf_counter()
            grads[name] = fn()
            sync(dev)
            if name == "compiled":
                figures[f"compile_s_b{batch}"] = round(time.perf_counter() - t0, 1)
        for other in [k for k in grads if k != "loop"]:
            for n in grads[other]:
                diff = float((grads[other][n] - grads["loop"][n]).abs().max())
                scale = float(grads["loop"][n].abs().max())
                max_abs = max(max_abs, diff)
                max_rel = max(max_rel, diff / scale if scale > 0 else diff)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.reps):
            for name in steps:  # interleaved
                sync(dev)
                t0 = time.perf_counter()
                steps[name]()
                sync(dev)
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        speedup = med["loop"] / med["vmap"]
        print(f"meta-batch {batch:>3}: loop {med['loop'] * 1e3:8.1f} ms [{min(times['loop']) * 1e3:.1f}, "
              f"{max(times['loop']) * 1e3:.1f}]  vmap {med['vmap'] * 1e3:8.1f} ms [{min(times['vmap']) * 1e3:.1f}, "
              f"{max(times['vmap']) * 1e3:.1f}]  speedup {speedup:5.2f}x", flush=True)
        figures[f"speedup_b{batch}"] = round(speedup, 3)
        figures[f"loop_ms_b{batch}"] = round(med["loop"] * 1e3, 2)
        figures[f"vmap_ms_b{batch}"] = round(med["vmap"] * 1e3, 2)
        if "compiled" in med:
            print(f"meta-batch {batch:>3}: compiled {med['compiled'] * 1e3:8.1f} ms [{min(times['compiled']) * 1e3:.1f}, "
                  f"{max(times['compiled']) * 1e3:.1f}]  vs loop {med['loop'] / med['compiled']:5.2f}x, vs eager vmap "
                  f"{med['vmap'] / med['compiled']:5.2f}x (compile {figures[f'compile_s_b{batch}']} s once)", flush=True)
            figures[f"compiled_ms_b{batch}"] = round(med["compiled"] * 1e3, 2)
            figures[f"compiled_vs_loop_b{batch}"] = round(med["loop"] / med["compiled"], 3)
            figures[f"compiled_vs_vmap_b{batch}"] = round(med["vmap"] / med["compiled"], 3)
    load1 = loadavg()
    suspect = load0 is not None and load1 is not None and max(load0[0], load1[0]) > args.threads
    figures.update(max_grad_diff=max_abs, max_grad_rel_diff=max_rel, loadavg_start=load0, loadavg_end=load1,
                   load_above_threads=suspect, wall_s=round(time.perf_counter() - t_start, 1))
    assert max_abs < 1e-5, f"gradients differ from the loop by {max_abs:.2e}"
    print(f"max gradient difference (vmap, compiled) vs loop: {max_abs:.2e} absolute, {max_rel:.2e} relative to the largest entry")
    print(f"loadavg start {load0} end {load1}" + ("  (1-min load above the thread count: figures suspect)" if suspect else ""))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
