"""Global magnitude pruning of torchvision resnet50 at 90%: ours vs torch.nn.utils.prune.global_unstructured.

Protocol (shared/BENCHMARKS.md):

* **time**: both in one process, interleaved (theirs, ours, theirs, ours, ...), ``--reps`` repetitions
  after one warm-up each, medians reported (min..max printed). Theirs runs on a fresh deep copy of the
  model each time (it re-parametrises the model: ``weight_orig`` + ``weight_mask``); only the
  ``global_unstructured`` call is timed. Ours (``global_magnitude_masks``) leaves the model untouched.
* **peak memory**: each method in a fresh ``subprocess`` (``--mem-reps`` each, interleaved): build the
  model, warm up the kernels both use on a small tensor, reset ``VmHWM`` (``echo 5 >
  /proc/self/clear_refs``), run the method once, report the rise of ``VmHWM`` over the RSS at the reset.
  Each side's peak includes what it returns: our masks are bool tensors (1 byte per weight); theirs are
  float ``weight_mask`` buffers plus a masked copy of every weight.
* **agreement**: fraction of weights on which the two masks agree. Ours prunes exactly
  ``floor(sparsity · N)`` weights, torch ``round(sparsity · N)``, so theirs may prune one more weight (the
  next smallest magnitude); ties at the threshold magnitude may also be broken differently. Both kinds of
  disagreement are counted and printed.

``torch.set_num_threads(--threads)`` (default 2) for both; ``/proc/loadavg`` is recorded at start and end.
Usage: ``python benchmarks/global_magnitude.py [--reps 5] [--mem-reps 3] [--sparsity 0.9]``.
The last printed line is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_model(seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet50()


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def theirs(model: nn.Module, sparsity: float) -> None:
    from torch.nn.utils import prune

    prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=sparsity)


def ours(model: nn.Module, sparsity: float):
    from pruninglab.pruners.magnitude import global_magnitude_masks

    return global_magnitude_masks(model, sparsity)


def their_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": m.weight_mask.to(torch.bool) for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def child(method: str, sparsity: float, threads: int) -> None:
    """One measurement in this (fresh) process: print the rise of VmHWM in MiB, and the seconds."""
    torch.set_num_threads(threads)
    model = build_model()
    # Warm-up of the kernels both sides use, so lazy allocations are not charged to either.
    w = torch.randn(10_000)
    torch.topk(w.abs(), 100, largest=False)
    torch.bincount((w.abs().view(torch.int32) >> 16), minlength=1 << 15)
    del w
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status_kib("VmRSS")
    t0 = time.perf_counter()
    if method == "ours":
        out = ours(model, sparsity)
    else:
        out = theirs(model, sparsity)
    secs = time.perf_counter() - t0
    peak = status_kib("VmHWM")
    del out
    print(json.dumps({"method": method, "extra_mib": (peak - base) / 1024, "base_mib": base / 1024, "seconds": secs}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for both sides (BENCHMARKS.md: 2; on a 2-core machine under other load, "
                             "1 avoids OpenMP spin-waits that swing per-operation times 10-100x)")
    parser.add_argument("--mem-reps", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--child", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.sparsity, args.threads)
        return 0

    torch.set_num_threads(args.threads)
    start_load = loadavg()
    print(f"loadavg at start: {start_load}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    # ---- peak memory, fresh process per run
    mem = {"ours": [], "theirs": []}
    for r in range(args.mem_reps):
        for method in ("theirs", "ours"):
            out = subprocess.run([sys.executable, __file__, "--child", method, "--sparsity", str(args.sparsity),
                                  "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            mem[method].append(rec["extra_mib"])
            print(f"  memory rep {r} {method:6s}: +{rec['extra_mib']:.1f} MiB over {rec['base_mib']:.0f} MiB "
                  f"({rec['seconds']:.2f} s)", flush=True)

    # ---- time and agreement, one process, interleaved
    model = build_model()
    n_weights = sum(m.weight.numel() for m, _ in prunable(model))
    ref_masks = None
    times = {"ours": [], "theirs": []}
    for r in range(args.reps + 1):  # rep 0 is the warm-up
        m_copy = copy.deepcopy(model)
        t0 = time.perf_counter()
        theirs(m_copy, args.sparsity)
        t_theirs = time.perf_counter() - t0
        t0 = time.perf_counter()
        masks = ours(model, args.sparsity)
        t_ours = time.perf_counter() - t0
        if r == 0:
            ref_masks = their_masks(m_copy)
            our_masks = masks
        else:
            times["theirs"].append(t_theirs)
            times["ours"].append(t_ours)
            print(f"  time rep {r}: theirs {t_theirs:.3f} s, ours {t_ours:.3f} s", flush=True)
        del m_copy

    # ---- agreement
    agree = 0
    mismatched_off_threshold = 0
    pruned_ours = pruned_theirs = 0
    threshold_hi = 0.0
    named = dict(model.named_parameters())
    for name, m in our_masks.items():
        pruned_ours += int((~m).sum())
        pruned_theirs += int((~ref_masks[name]).sum())
        if bool((~m).any()):
            threshold_hi = max(threshold_hi, float(named[name].detach().abs()[~m].max()))
    for name, m in our_masks.items():
        w = named[name].detach().abs()
        same = m == ref_masks[name]
        agree += int(same.sum())
        # a disagreement is legitimate only where |w| equals the common threshold (a tie)
        mismatched_off_threshold += int((~same & (w != threshold_hi)).sum())
    agreement = agree / n_weights

    end_load = loadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    mmed = {k: statistics.median(v) for k, v in mem.items()}
    print(f"resnet50: {n_weights:,} conv/linear weights, sparsity {args.sparsity}")
    print(f"  time (median of {args.reps}, min..max): theirs {med['theirs']:.3f} s "
          f"({min(times['theirs']):.3f}..{max(times['theirs']):.3f}), ours {med['ours']:.3f} s "
          f"({min(times['ours']):.3f}..{max(times['ours']):.3f}) -> speedup {med['theirs'] / med['ours']:.2f}x")
    print(f"  peak extra memory (median of {args.mem_reps}): theirs +{mmed['theirs']:.1f} MiB "
          f"({min(mem['theirs']):.1f}..{max(mem['theirs']):.1f}), ours +{mmed['ours']:.1f} MiB "
          f"({min(mem['ours']):.1f}..{max(mem['ours']):.1f}) -> ratio {mmed['ours'] / mmed['theirs']:.3f}")
    print(f"  pruned: ours {pruned_ours:,} (floor of sparsity x N), theirs {pruned_theirs:,} (torch rounds "
          f"sparsity x N); mask agreement {agreement:.8f}; disagreements away from our threshold magnitude: "
          f"{mismatched_off_threshold} (expected: the {abs(pruned_theirs - pruned_ours)} weight(s) of the count "
          f"convention, the next smallest magnitudes)")
    print(f"loadavg at end: {end_load}")
    if max(start_load[0], end_load[0]) > args.threads:
        print("NOTE: the 1-minute load exceeded the thread count; absolute times are suspect, ratios less so.")
    print(json.dumps({
        "speedup": med["theirs"] / med["ours"],
        "peak_memory_ratio": mmed["ours"] / mmed["theirs"],
        "mask_agreement": agreement,
        "seconds_ours": med["ours"],
        "seconds_theirs": med["theirs"],
        "peak_extra_mib_ours": mmed["ours"],
        "peak_extra_mib_theirs": mmed["theirs"],
        "pruned_ours": pruned_ours,
        "pruned_theirs": pruned_theirs,
        "disagreements_off_threshold": mismatched_off_threshold,
        "weights": n_weights,
        "threads": args.threads,
        "loadavg_start": start_load,
        "loadavg_end": end_load,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
