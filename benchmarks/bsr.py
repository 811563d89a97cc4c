"""Block-sparse (BSR) Linear layers against dense matmul, per block size and sparsity.

The peer is what a user runs without pruninglab: the dense ``nn.Linear`` with the masked weight
(masks alone change nothing), and torch's own BSR weight fed to ``F.linear``. Ours is
``pruninglab.sparse.bsr.BlockSparseLinear`` (``W_bsr @ x^T``). Protocol of benchmarks/BENCHMARKS.md:
same process, interleaved, >= 5 repetitions, medians, load recorded, the answer checked.

    python benchmarks/bsr.py [--scale small|full] [--threads 2] [--device cpu|cuda]

Last line: one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from pruninglab.sparse.bsr import (
    BlockSparseLinear,
    break_even_sparsity,
    random_block_mask,
    time_dense_vs_bsr,
    time_interleaved,
    triton_bsr_eligible,
)
from pruninglab.runtime import device_name, scale


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


CONFIGS = {
    # (out, in, batch), block sizes, sparsities, reps
    "small": dict(shape=(1024, 1024, 256), blocks=(8, 16, 32, 64), sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98), reps=5),
    "full": dict(shape=(4096, 4096, 256), blocks=(8, 16, 32, 64, 128), sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98), reps=7),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=["small", "full"], default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every method (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = ap.parse_args(argv)
    cfg = CONFIGS[scale(args.scale)]
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    out_f, in_f, batch = cfg["shape"]
    blocks = [b for b in cfg["blocks"] if dev.type != "cuda" or triton_bsr_eligible(b, dtype)]
    load0, t0 = loadavg(), time.perf_counter()
    print(f"device: {device_name(dev)}; dtype {args.dtype}; W {out_f}x{in_f}, x {batch}x{in_f}; "
          f"threads {args.threads}; loadavg at start {load0}", flush=True)

    rows = []
    for b in blocks:
        for s in cfg["sparsities"]:
            t = time_dense_vs_bsr(out_f, in_f, batch, b, s, reps=cfg["reps"], device=dev, dtype=dtype,
                                  threads=args.threads)
            rows.append(t)
            print(f"block {b:>3}  sparsity {t.sparsity:.3f}  dense {t.dense_median * 1e3:8.3f} ms "
                  f"[{min(t.dense_s) * 1e3:.3f}, {max(t.dense_s) * 1e3:.3f}]  BSR {t.bsr_median * 1e3:8.3f} ms "
                  f"[{min(t.bsr_s) * 1e3:.3f}, {max(t.bsr_s) * 1e3:.3f}]  speedup {t.speedup:6.2f}x", flush=True)

    # The answer must be right: BSR output vs the dense masked layer, at the sparsest and densest setting.
    gen = torch.Generator().manual_seed(1)
    max_rel_diff = 0.0
    for b in blocks:
        for s in (cfg["sparsities"][0], cfg["sparsities"][-1]):
            mask = random_block_mask(out_f, in_f, b, s, generator=gen)
            lin = nn.Linear(in_f, out_f)
            with torch.no_grad():
                lin.weight.mul_(mask)
            lin = lin.to(dev, dtype)
            bsr = BlockSparseLinear.from_linear(lin, mask.to(dev), b)
            x = torch.randn(batch, in_f, generator=gen).to(dev, dtype)
            with torch.no_grad():
                ref, got = lin(x).double(), bsr(x).double()
            max_rel_diff = max(max_rel_diff, float((got - ref).abs().max() / ref.abs().max()))

    # Conversion cost and the F.linear path, at one representative setting.
    b_rep = 32 if 32 in blocks else blocks[0]
    gen = torch.Generator().manual_seed(2)
    mask = random_block_mask(out_f, in_f, b_rep, 0.9, generator=gen)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.mul_(mask)
    lin = lin.to(dev, dtype)
    mask = mask.to(dev)
    x = torch.randn(batch, in_f, generator=gen).to(dev, dtype)
    w_bsr = lin.weight.detach().to_sparse_bsr((b_rep, b_rep))
    times = time_interleaved(
        {
            "dense": lin,
            "ours": BlockSparseLinear.from_linear(lin, mask, b_rep),
            "torch_F_linear_bsr": lambda z: torch.nn.functional.linear(z, w_bsr, lin.bias),
            "convert_ours": lambda _: BlockSparseLinear.from_linear(lin, mask, b_rep),
            "convert_torch_to_sparse_bsr": lambda _: lin.weight.detach().to_sparse_bsr((b_rep, b_rep)),
        },
        x, reps=cfg["reps"], threads=args.threads,
    )
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    load1 = loadavg()

    speedups = {f"{r.block_size[0]}@{r.sparsity:.2f}": round(r.speedup, 3) for r in rows}
    break_even = {}
    for b in blocks:
        sel = [r for r in rows if r.block_size[0] == b]
        be = break_even_sparsity([r.sparsity for r in sel], [r.speedup for r in sel])
        break_even[str(b)] = None if be is None else round(be, 3)
    at90 = {str(r.block_size[0]): round(r.speedup, 3) for r in rows if abs(r.sparsity - 0.9) < 0.01}
    suspect = load0 is not None and load1 is not None and max(load0[0], load1[0]) > args.threads
    figures = {
        "device": device_name(dev),
        "dtype": args.dtype,
        "shape": f"W {out_f}x{in_f}, x {batch}x{in_f}",
        "threads": args.threads,
        "speedup_at_0.9": at90,
        "break_even_sparsity": break_even,
        "dense_ms": round(sorted(r.dense_median for r in rows)[len(rows) // 2] * 1e3, 3),
        "conversion_in_dense_matmuls": round(med["convert_ours"] / med["dense"], 2),
        "torch_to_sparse_bsr_in_dense_matmuls": round(med["convert_torch_to_sparse_bsr"] / med["dense"], 2),
        "F_linear_bsr_vs_ours": round(med["torch_F_linear_bsr"] / med["ours"], 2),
        "max_rel_diff": max_rel_diff,
        "loadavg_start": load0,
        "loadavg_end": load1,
        "load_above_threads": suspect,
        "wall_s": round(time.perf_counter() - t0, 1),
        "speedups": speedups,
        "times_ms": {f"{r.block_size[0]}@{r.sparsity:.2f}": [round(r.dense_median * 1e3, 4), round(r.bsr_median * 1e3, 4)]
                     for r in rows},
    }
    print(f"at block {b_rep}, 90%: conversion {med['convert_ours'] * 1e3:.2f} ms "
          f"({figures['conversion_in_dense_matmuls']} dense matmuls; torch's to_sparse_bsr "
          f"{figures['torch_to_sparse_bsr_in_dense_matmuls']}); F.linear(x, W_bsr) is "
          f"{figures['F_linear_bsr_vs_ours']}x the time of W_bsr @ x^T")
    print(f"break-even sparsity per block size: {break_even}; max relative output difference {max_rel_diff:.2e}")
    print(f"loadavg start {load0} end {load1}" + ("  (1-min load above the thread count: figures suspect)" if suspect else ""))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
