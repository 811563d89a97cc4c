"""``python -m pruninglab <experiment> [options]``: one entry point for every experiment.

Each experiment lives in a module with a ``main(argv=None) -> int`` function (argparse over an
explicit argv, so a notebook can call it too). The table below maps subcommand names to those
modules; a subcommand is listed once its module exists.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, function, one-line help)
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "limit": ("pruninglab.experiments.limit", "main",
              "predicted vs actual pruning limit of a trained network (Zhang et al. 2024)"),
    "phase": ("pruninglab.experiments.phase", "main",
              "phase-transition grids of l1 / group-l1 recovery (convex geometry)"),
    "inr": ("pruninglab.experiments.inr", "main",
            "Meta-SparseINR and its baselines on images or SDFs (Lee et al. 2021)"),
    "sapp-imagenet": ("pruninglab.experiments.sapp_imagenet", "main",
                      "SA++ / ACDC / magnitude block pruning of ResNet-50 on an ImageNet folder"),
    "sapp-criteo": ("pruninglab.experiments.sapp_criteo", "main",
                    "SA++ / ACDC / magnitude block pruning of the Criteo MLP on a Criteo TSV"),
    "make-criteo": ("pruninglab.data.criteo", "make_criteo_main",
                    "write synthetic rows in the exact Criteo Kaggle TSV format"),
    "make-imagefolder": ("pruninglab.data.imagenet", "make_imagefolder_main",
                         "write real JPEG files in the ImageNet (ImageFolder) layout"),
    "bench": ("pruninglab.experiments.bench", "main",
              "run every benchmark in benchmarks/ and write one table"),
}


def available() -> dict[str, tuple[str, str, str]]:
    """The experiments whose module is present in this installation."""
    out = {}
    for name, (mod, fn, helptext) in EXPERIMENTS.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (mod, fn, helptext)
    return out


def _usage() -> str:
    exps = available()
    lines = [
        "usage: python -m pruninglab <experiment> [--scale small|full] [--data DIR] [--out DIR] [--resume] ...",
        "",
        "experiments:",
    ]
    if exps:
        width = max(len(n) for n in exps)
        lines += [f"  {n.ljust(width)}  {h}" for n, (_, _, h) in exps.items()]
    else:
        lines.append("  (none installed yet)")
    lines += ["", "Run `python -m pruninglab <experiment> --help` for the options of one experiment."]
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every experiment shares: scale, data, output folder, resume, seed, device, progress."""
    parser.add_argument("--scale", choices=["small", "full"], default=None,
                        help="small (CPU, minutes) or full (the paper's setting, GPU); default: $PRUNINGLAB_SCALE or small")
    parser.add_argument("--data", default=None, help="dataset folder or file (default: $PRUNINGLAB_DATA)")
    parser.add_argument("--out", default=None, help="run folder for checkpoints and logs (default: per experiment)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the run folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: $PRUNINGLAB_DEVICE or auto)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    exps = available()
    if name not in exps:
        print(f"pruninglab: unknown experiment {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    mod, fn, _ = exps[name]
    func = getattr(importlib.import_module(mod), fn)
    try:
        rc = func(rest)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear line, no traceback.
        print(f"pruninglab {name}: error: {err}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
