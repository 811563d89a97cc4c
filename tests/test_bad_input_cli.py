"""Bad input through the real command line: ``python -m pruninglab <experiment> ...`` in a subprocess.

Every case asserts the exit code (2), that stderr carries one ``pruninglab <experiment>: error: ...``
line naming the offending input, that no traceback is printed, and that no file that existed before
the run was changed (the run's folder, a sentinel file, a pre-existing output file). Each run gets
its own working directory, so default output folders land there and not in the checkout.

Cases marked ``needs_error_path`` need the command line's single error path (every user error -> one
line, exit code 2, no traceback, output folder checked before any data is read); with
``CLI_ERROR_PATH_MERGED = True`` every case here runs and must pass.
Each case starts a fresh interpreter (a few seconds each on an idle machine); the timeout can be
raised with ``PRUNINGLAB_CLI_TIMEOUT`` on a loaded one.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_ERROR_PATH_MERGED = True
TIMEOUT = int(os.environ.get("PRUNINGLAB_CLI_TIMEOUT", "120"))  # seconds: each case must fail fast


def needs_error_path(*args):
    mark = pytest.mark.skipif(not CLI_ERROR_PATH_MERGED,
                              reason="pending the CLI's single error path (one line, exit 2)")
    return pytest.param(*args, marks=mark)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_cli(tmp_path: Path, experiment: str, args: list[str], names: str):
    """Run the CLI in ``tmp_path``; assert exit 2, one error line naming ``names``, no traceback,
    and that every file that existed before is unchanged."""
    (tmp_path / "sentinel.txt").write_text("must not change\n")
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRUNINGLAB_SCALE": "small", "OMP_NUM_THREADS": "1",
           "PRUNINGLAB_DATA": str(tmp_path / "no-data-here")}
    env.pop("PRUNINGLAB_DEVICE", None)
    proc = subprocess.run([sys.executable, "-m", "pruninglab", experiment, *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=TIMEOUT)
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err[-2000:]
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-2000:]
    assert lines[0] == err.strip().splitlines()[-1], err[-2000:]  # the last line, nothing after it
    assert re.fullmatch(rf"pruninglab {re.escape(experiment)}: error: \S.*", lines[0]), lines[0]
    assert re.search(names, lines[0]), (names, lines[0])
    after = _snapshot(tmp_path)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"files changed by a failed run: {changed}"
    return lines[0]


EXPERIMENTS = ["limit", "phase", "inr", "sapp-imagenet", "sapp-criteo"]


# ----------------------------------------------------------------------------- flags every experiment has


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cli_scale_not_a_choice(tmp_path, experiment):
    _run_cli(tmp_path, experiment, ["--scale", "huge"], r"--scale.*huge")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cli_seed_not_an_integer(tmp_path, experiment):
    _run_cli(tmp_path, experiment, ["--seed", "abc"], r"--seed.*abc")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_cli_unknown_flag(tmp_path, experiment):
    _run_cli(tmp_path, experiment, ["--sparsty", "0.9"], r"--sparsty")


@pytest.mark.parametrize("experiment, args, names", [
    ("limit", ["--dataset", "imagenet"], r"dataset.*imagenet"),
    ("limit", ["--spectrum", "full"], r"spectrum.*full"),
    ("phase", ["--which", "l2"], r"which.*l2"),
])
def test_cli_bad_choice(tmp_path, experiment, args, names):
    _run_cli(tmp_path, experiment, args, names)


@pytest.mark.parametrize("experiment", ["limit", "inr", "sapp-imagenet", needs_error_path("phase"),
                                        needs_error_path("sapp-criteo")])
def test_cli_seed_negative(tmp_path, experiment):
    _run_cli(tmp_path, experiment, ["--seed", "-1"], r"seed.*-1")


@pytest.mark.parametrize("experiment", ["limit", "inr", needs_error_path("phase"), needs_error_path("sapp-imagenet"),
                                        needs_error_path("sapp-criteo")])
def test_cli_seed_beyond_64_bits(tmp_path, experiment):
    _run_cli(tmp_path, experiment, ["--seed", str(2**64)], r"seed.*18446744073709551616")


@pytest.mark.parametrize("experiment", [needs_error_path(e) for e in EXPERIMENTS])
def test_cli_out_is_an_existing_file(tmp_path, experiment):
    # Checked before any training: the file is left as it was.
    target = tmp_path / "taken.txt"
    target.write_text("an existing file, not a folder\n")
    _run_cli(tmp_path, experiment, ["--out", str(target)], r"--out|out:.*taken\.txt|taken\.txt")


@pytest.mark.parametrize("experiment", [needs_error_path(e) for e in EXPERIMENTS])
def test_cli_out_below_a_file(tmp_path, experiment):
    # The run folder cannot be created (its parent is a file): an error before any training.
    (tmp_path / "plain").write_text("x\n")
    _run_cli(tmp_path, experiment, ["--out", str(tmp_path / "plain" / "run")], r"plain")


# ----------------------------------------------------------------------------- data folders


@pytest.mark.parametrize("experiment, extra", [
    needs_error_path("sapp-imagenet", []),
    needs_error_path("sapp-criteo", []),
    needs_error_path("inr", []),
])
def test_cli_data_missing(tmp_path, experiment, extra):
    _run_cli(tmp_path, experiment, ["--scale", "full", "--data", str(tmp_path / "nowhere"), *extra], r"nowhere")


def test_cli_limit_cifar_folder_missing(tmp_path):
    _run_cli(tmp_path, "limit", ["--dataset", "cifar10", "--data", str(tmp_path / "nowhere")], r"nowhere")


def test_cli_limit_crafted_cifar_pickle_is_refused(tmp_path):
    """A data_batch that would create a file when unpickled: refused, naming it; the file is not created."""
    import pickle

    from pruninglab.data.cifar import write_cifar

    folder = write_cifar(tmp_path / "data", train_per_file=4, num_test=4)
    victim = tmp_path / "created-by-pickle"

    class Crafted:
        def __reduce__(self):
            return (open, (str(victim), "w"))

    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": Crafted(), "labels": [0]}, protocol=2))
    _run_cli(tmp_path, "limit", ["--dataset", "cifar10", "--data", str(tmp_path / "data")], r"data_batch_2")
    assert not victim.exists()


def test_cli_limit_truncated_cifar_pickle(tmp_path):
    from pruninglab.data.cifar import write_cifar

    folder = write_cifar(tmp_path / "data", train_per_file=4, num_test=4)
    batch = folder / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:200])
    _run_cli(tmp_path, "limit", ["--dataset", "cifar10", "--data", str(tmp_path / "data")], r"data_batch_4")


# ----------------------------------------------------------------------------- numeric flags


@pytest.mark.parametrize("args, names", [
    needs_error_path(["--lr", "inf"], r"lr.*inf"),
    needs_error_path(["--lr", "nan"], r"lr.*nan"),
    needs_error_path(["--lr", "-0.1"], r"lr.*-0\.1"),
    needs_error_path(["--l1", "nan"], r"l1.*nan"),
    needs_error_path(["--epochs", "inf"], r"epochs.*inf"),
    (["--batch-size", "0"], r"batch.size.*0"),
    needs_error_path(["--tolerance", "nan"], r"tolerance.*nan"),
    needs_error_path(["--lanczos-steps", "0"], r"lanczos.steps.*0"),
    (["--train-samples", "-5"], r"train.samples.*-5"),
])
def test_cli_limit_numeric_flags(tmp_path, args, names):
    _run_cli(tmp_path, "limit", args, names)


@pytest.mark.parametrize("args, names", [
    (["--trials", "0"], r"trials.*0"),
    needs_error_path(["--threads", "0"], r"threads.*0"),
])
def test_cli_phase_numeric_flags(tmp_path, args, names):
    _run_cli(tmp_path, "phase", args, names)


def test_cli_inr_num_test_not_integer(tmp_path):
    _run_cli(tmp_path, "inr", ["--num-test", "many"], r"--num-test.*many")


@pytest.mark.parametrize("args, names", [
    (["--num-test", "0"], r"num.test.*0"),
])
def test_cli_inr_numeric_flags(tmp_path, args, names):
    _run_cli(tmp_path, "inr", args, names)


@pytest.mark.parametrize("args, names", [
    needs_error_path(["--sparsity", "1.5"], r"sparsity.*1\.5"),
    needs_error_path(["--sparsity", "nan"], r"sparsity.*nan"),
    needs_error_path(["--block", "0"], r"block.*0"),
    needs_error_path(["--lr", "inf"], r"lr.*inf"),
    needs_error_path(["--warmup-epochs", "nan"], r"warmup.epochs.*nan"),
    needs_error_path(["--momentum", "nan"], r"momentum.*nan"),
    needs_error_path(["--method", "prune-all"], r"method.*prune-all"),
])
def test_cli_sapp_imagenet_numeric_flags(tmp_path, args, names):
    _run_cli(tmp_path, "sapp-imagenet", args, names)


@pytest.mark.parametrize("args, names", [
    needs_error_path(["--sparsity", "nan"], r"sparsity.*nan"),
    needs_error_path(["--lr-final", "inf"], r"lr.final.*inf"),
    needs_error_path(["--train-fraction", "2"], r"train.fraction.*2"),
    needs_error_path(["--block", "-4"], r"block.*-4"),
    needs_error_path(["--on-error", "ignore"], r"on.error.*ignore"),
])
def test_cli_sapp_criteo_numeric_flags(tmp_path, args, names):
    _run_cli(tmp_path, "sapp-criteo", args, names)
