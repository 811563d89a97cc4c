import json
import subprocess
import sys

import pytest
import torch

from pruninglab import runtime
from pruninglab.cli import main as cli_main


def test_scale_default_and_env(monkeypatch):
    monkeypatch.delenv("PRUNINGLAB_SCALE", raising=False)
    assert runtime.scale() == "small"
    monkeypatch.setenv("PRUNINGLAB_SCALE", "FULL")
    assert runtime.scale() == "full"
    assert runtime.scale("small") == "small"


def test_scale_rejects_unknown_in_a_fresh_process():
    # The acceptance check, exactly as a user would type it.
    proc = subprocess.run(
        [sys.executable, "-c", "import pruninglab.runtime as r; r.scale()"],
        env={"PRUNINGLAB_SCALE": "huge", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "PRUNINGLAB_SCALE" in proc.stderr and "small, full" in proc.stderr


def test_device_choice(monkeypatch):
    monkeypatch.setenv("PRUNINGLAB_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")
    monkeypatch.delenv("PRUNINGLAB_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.device().type in (expected, "mps")


def test_seed_everything_reproduces():
    runtime.seed_everything(3)
    a = torch.randn(5)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.randn(5))


def test_results_store_roundtrip_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNINGLAB_RESULTS", str(tmp_path / "results"))
    path = runtime.save_result("demo", {"acc": 0.9, "t": torch.tensor(1.5)}, {"lr": 0.1}, wall_time_s=2.0)
    assert path == tmp_path / "cache" / "results" / "demo" / "result.json"
    rec = runtime.load_result("demo")
    assert rec["metrics"] == {"acc": 0.9, "t": 1.5}
    assert rec["config"] == {"lr": 0.1} and rec["scale"] == "small"
    for key in ("torch", "device", "date", "wall_time_s", "git_revision"):
        assert key in rec["provenance"]
    assert runtime.load_result("demo", "full") is None
    full = runtime.save_result("demo", {"acc": 0.8}, {}, scale_name="full")
    assert full.parent == tmp_path / "results" / "demo"


def test_failed_save_leaves_previous_result_intact(tmp_path):
    runtime.save_result("demo", {"acc": 0.9}, {}, out_dir=tmp_path)
    before = (tmp_path / "result.json").read_text()
    with pytest.raises(TypeError):
        runtime.save_result("demo", {"acc": object()}, {}, out_dir=tmp_path)
    assert (tmp_path / "result.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_cli_help_lists_experiments(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "experiments:" in out and "bench" in out


def test_cli_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "pruninglab", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: python -m pruninglab" in proc.stdout
