"""``python -m pruninglab``: one error path (one line, exit 2, no traceback), --debug, --version, pre-emption."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from pruninglab import __version__, cli
from pruninglab.experiments import phase
from pruninglab.train import PREEMPTED_EXIT_CODE, Preempted
from test_experiments_skeleton import TINY_PHASE, _isolated  # noqa: F401  (the same isolation, autouse)


def _cli(*args, tmp_path):
    env = {**os.environ, "PRUNINGLAB_CACHE": str(tmp_path / "cache"), "PRUNINGLAB_RUNS": str(tmp_path / "runs"),
           "PRUNINGLAB_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "pruninglab", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("args, names", [
    (["limit", "--lr", "inf"], "--lr"),
    (["limit", "--epochs", "nan"], "--epochs"),
    (["sapp-criteo", "--warmup-epochs", "1"], "--warmup-epochs"),  # an option this task does not have
    (["sapp-imagenet", "--warmup-epochs", "nan"], "--warmup-epochs"),
    (["sapp-criteo", "--data", "no-such-file.txt"], "no-such-file.txt"),
    (["phase", "--data", "x"], "--data"),
    (["limit", "--dataset", "cifar10", "--data", "empty-folder"], "empty-folder"),
    (["limit", "--out", "a-file/runs"], "--out"),
])
def test_user_errors_end_in_one_line_exit_2_without_traceback(tmp_path, args, names):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty-folder").mkdir()
    proc = _cli(*args, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line and "Warning" not in line and "warn" not in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"pruninglab {args[0]}: error: ") and names in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_debug_shows_the_traceback(tmp_path):
    proc = _cli("limit", "--lr", "inf", "--debug", tmp_path=tmp_path)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "pruninglab limit: error:" in proc.stderr


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pruninglab {__version__}"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["phase", "--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"pruninglab {__version__}"


def test_unknown_experiment_is_one_line(capsys):
    assert cli.main(["prune-everything"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown experiment 'prune-everything'" in err


def test_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x"))

    monkeypatch.setattr(phase, "EXPERIMENT_SPEC", dataclasses.replace(phase.EXPERIMENT_SPEC, execute=full))
    assert cli.main(TINY_PHASE) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err


def test_preempted_prints_the_resume_command_and_exits_75(tmp_path, monkeypatch, capsys):
    def preempt(config, ctx):
        raise Preempted(step=12, checkpoint=ctx.out_dir / "checkpoint.pt", signal_name="SIGTERM")

    monkeypatch.setattr(phase, "EXPERIMENT_SPEC", dataclasses.replace(phase.EXPERIMENT_SPEC, execute=preempt))
    assert cli.main(TINY_PHASE) == PREEMPTED_EXIT_CODE == 75
    err = capsys.readouterr().err
    (config,) = (tmp_path / "runs" / "phase").glob("*/config.json")
    assert "SIGTERM" in err and "step 12" in err
    assert f"python -m pruninglab phase --config {config} --resume" in err


def test_plan_prints_and_runs_nothing(tmp_path, capsys):
    assert cli.main(TINY_PHASE + ["--plan"]) == 0
    assert capsys.readouterr().out.strip() and not (tmp_path / "runs").exists()


def test_plan_of_a_full_preset_needs_no_data_and_takes_the_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PRUNINGLAB_DATA", raising=False)
    argv = ["sapp-criteo", "--scale", "full", "--plan", "--gpu", "a100", "--num-gpus", "4",
            "--out", str(tmp_path / "runs")]
    assert cli.main(argv) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["experiment"] == "sapp-criteo" and plan["gpu"] == "a100" and plan["num_gpus"] == 4
    assert plan["batch_size"] == 32768 and not (tmp_path / "runs").exists()
    assert cli.main(["phase", "--gpu", "a100", "--out", str(tmp_path / "runs")]) == 2
    assert "--gpu/--num-gpus: only used with --plan" in capsys.readouterr().err


def test_help_lists_every_experiment(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("limit", "phase", "inr", "sapp-imagenet", "sapp-criteo", "sapp-digits", "bsr-speed"):
        assert f"  {name}" in out
    assert "75 pre-empted" in out
