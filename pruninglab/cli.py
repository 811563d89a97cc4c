"""``python -m pruninglab <experiment> [options]``: one entry point for every experiment.

Each experiment lives in a module with a ``main(argv=None) -> int`` function (argparse over an
explicit argv, so a notebook can call it too). The table below maps subcommand names to those
modules; a subcommand is listed once its module exists, and its module is imported only when run.

Exit codes: 0 done (or nothing to do), 2 a user error (one line on stderr, ``--debug`` adds the
traceback), 75 pre-empted (SIGTERM/SIGINT; a checkpoint was written and the resume command printed).
"""
from __future__ import annotations

import errno
import importlib
import importlib.util
import pickle
import sys
import traceback
import zipfile

# name -> (module, function, one-line help)
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "limit": ("pruninglab.experiments.limit", "main",
              "predicted vs actual pruning limit of a trained network (Zhang et al. 2024)"),
    "limit-moves": ("pruninglab.experiments.limit_moves", "main",
                    "what moves the pruning limit: IMP, l2, weight scaling, pruners (Zhang et al. 2024)"),
    "phase": ("pruninglab.experiments.phase", "main",
              "phase-transition grids of l1 / group-l1 recovery (convex geometry)"),
    "inr": ("pruninglab.experiments.inr", "main",
            "Meta-SparseINR and its baselines on images or SDFs (Lee et al. 2021)"),
    "sapp-imagenet": ("pruninglab.experiments.sapp_imagenet", "main",
                      "SA++ / ACDC / magnitude block pruning of ResNet-50 on an ImageNet folder"),
    "sapp-criteo": ("pruninglab.experiments.sapp_criteo", "main",
                    "SA++ / ACDC / magnitude block pruning of the Criteo MLP on a Criteo TSV"),
    "sapp-digits": ("pruninglab.experiments.sapp_digits", "main",
                    "SA++ vs ACDC vs magnitude block pruning of a digits MLP (the SA++ chapter's comparison)"),
    "bsr-speed": ("pruninglab.experiments.bsr_speed", "main",
                  "time block-sparse (BSR) against dense matrix products over block sizes and sparsities"),
    "prepare-criteo": ("pruninglab.experiments.prepare_criteo", "main",
                       "prepare the Criteo Kaggle TSV for training (index, checks)"),
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
        "usage: python -m pruninglab <experiment> [--scale small|full] [--data PATH] [--out RUNS] [--resume] ... [--debug]",
        "",
        "experiments:",
    ]
    if exps:
        width = max(len(n) for n in exps)
        lines += [f"  {n.ljust(width)}  {h}" for n, (_, _, h) in exps.items()]
    else:
        lines.append("  (none installed yet)")
    lines += ["", "Run `python -m pruninglab <experiment> --help` for the options of one experiment.",
              "Exit codes: 0 done, 2 user error (one line; --debug shows the traceback), 75 pre-empted."]
    return "\n".join(lines)


def _checkpoint_error() -> type:
    try:
        from .checkpoint import CheckpointError  # type: ignore[attr-defined]
    except ImportError:
        from .train import CheckpointError
    return CheckpointError


def _message(err: BaseException) -> str:
    """One line that names the input and what was expected."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        text = f"no space left on the device{where}; expected free disk space (free some, or use --out elsewhere)"
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile)):
        text = f"corrupt or truncated data file ({type(err).__name__}: {err}); expected a complete file"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run one experiment by name; every user error ends in one line on stderr and exit code 2."""
    from . import __version__
    from .train import PREEMPTED_EXIT_CODE, Preempted

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"pruninglab {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    exps = available()
    if name not in exps:
        print(f"pruninglab: error: unknown experiment {name!r}; expected one of {', '.join(exps)}", file=sys.stderr)
        return 2
    mod, fn, _ = exps[name]
    user_errors = (ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, _checkpoint_error())
    try:
        func = getattr(importlib.import_module(mod), fn)
        rc = func(rest)
    except Preempted as err:
        if debug:
            traceback.print_exc()
        command = getattr(err, "resume_command", None)
        print(f"pruninglab {name}: pre-empted ({getattr(err, 'signal_name', None) or 'signal'}) at step "
              f"{getattr(err, 'step', '?')}; checkpoint written. Resume with:\n  "
              f"{command or 'the same command with --resume'}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except user_errors as err:
        if debug:
            traceback.print_exc()
        print(f"pruninglab {name}: error: {_message(err)}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
