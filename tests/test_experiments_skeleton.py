"""The experiment skeleton: run identity, refusal to clobber, attempts, seeds, resume, --config, results store."""
import dataclasses
import json
import os
import stat

import pytest

from pruninglab import cli, runtime
from pruninglab.experiments import base, limit, phase, sapp, sapp_criteo, sapp_imagenet

TINY_LIMIT = ["limit", "--model", "mlp-8", "--epochs", "2", "--spectrum", "exact", "--train-samples", "300",
              "--test-samples", "120", "--report-tolerances", "none", "--grid", "5", "--no-progress"]
TINY_PHASE = ["phase", "--d", "16", "--num-m", "3", "--trials", "2", "--num-groups", "4", "--group-num-m", "3",
              "--group-num-k", "2", "--group-trials", "2", "--mc-samples", "50", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNINGLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNINGLAB_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PRUNINGLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PRUNINGLAB_DEVICE", "cpu")
    monkeypatch.delenv("PRUNINGLAB_DATA", raising=False)
    monkeypatch.delenv("PRUNINGLAB_SCALE", raising=False)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_folders(root, experiment):
    folder = root / experiment
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_rerun_is_refused_and_leaves_every_file_byte_identical(tmp_path, capsys):
    assert cli.main(TINY_LIMIT) == 0
    (name,) = run_folders(tmp_path / "runs", "limit")
    assert name.startswith("limit-") and name.endswith("-s0") and len(name.split("-")[1]) == 8
    run_dir = tmp_path / "runs" / "limit" / name
    assert {"config.json", "checkpoint.pt", "metrics.csv", "result.json"} <= {p.name for p in run_dir.iterdir()}
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli.main(TINY_LIMIT) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and "--resume" in err and "--new-attempt" in err
    assert snapshot(tmp_path) == before


def test_new_attempt_starts_beside_the_first(tmp_path):
    assert cli.main(TINY_LIMIT) == 0
    (name,) = run_folders(tmp_path / "runs", "limit")
    first = snapshot(tmp_path / "runs" / "limit" / name)
    assert cli.main(TINY_LIMIT + ["--new-attempt"]) == 0
    assert run_folders(tmp_path / "runs", "limit") == [name, f"{name}-a2"]
    assert snapshot(tmp_path / "runs" / "limit" / name) == first
    stored = runtime.recorded_runs("limit", "small")
    assert [r["run_id"] for r in stored] == [name, f"{name}-a2"]


def test_two_seeds_are_two_runs(tmp_path):
    assert cli.main(TINY_LIMIT + ["--seed", "0"]) == 0
    assert cli.main(TINY_LIMIT + ["--seed", "1"]) == 0
    names = run_folders(tmp_path / "runs", "limit")
    assert len(names) == 2 and names[0].endswith("-s0") and names[1].endswith("-s1")
    assert names[0].split("-")[1] != names[1].split("-")[1]  # the seed is part of the hashed config
    results = [base.RunResult.from_record(json.loads((tmp_path / "runs" / "limit" / n / "result.json").read_text()))
               for n in names]
    assert [r.seed for r in results] == [0, 1] and all(r.completed and r.scale == "small" for r in results)
    assert [r.run_id for r in results] == names
    stored = runtime.load_result("limit", "small", run_id=names[1])
    assert stored["metrics"] == json.loads(runtime.to_json(results[1].metrics))
    assert stored["paths"]["run_dir"] == results[1].paths["run_dir"]


def test_out_is_the_runs_root_and_overrides_the_environment(tmp_path):
    assert cli.main(TINY_PHASE + ["--out", str(tmp_path / "elsewhere")]) == 0
    assert len(run_folders(tmp_path / "elsewhere", "phase")) == 1
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    assert cli.main(TINY_LIMIT) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli.main(TINY_LIMIT + ["--resume"]) == 0
    assert "finished already" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert cli.main(TINY_LIMIT + ["--resume"]) == 2
    assert "--resume: no run limit-" in capsys.readouterr().err


def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    args = TINY_LIMIT + ["--checkpoint-every-epochs", "1"]
    assert cli.main(args + ["--out", str(tmp_path / "ref")]) == 0
    assert cli.main(args + ["--stop-after", "6"]) == 0  # a checkpoint at step 4 (one epoch)
    assert "--resume" in capsys.readouterr().out
    assert cli.main(args) == 2  # a started run is not silently restarted
    assert cli.main(args + ["--resume"]) == 0
    (name,) = run_folders(tmp_path / "runs", "limit")
    got = json.loads((tmp_path / "runs" / "limit" / name / "result.json").read_text())["metrics"]
    ref = json.loads((tmp_path / "ref" / "limit" / name / "result.json").read_text())["metrics"]
    for key in ("dense_accuracy", "predicted", "actual", "epsilon"):
        assert got[key] == ref[key], key


def test_config_reruns_a_recorded_run_exactly(tmp_path):
    assert cli.main(TINY_LIMIT + ["--lr", "0.07", "--seed", "3"]) == 0
    (name,) = run_folders(tmp_path / "runs", "limit")
    recorded = tmp_path / "runs" / "limit" / name / "config.json"
    assert cli.main(["limit", "--config", str(recorded), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    assert run_folders(tmp_path / "again", "limit") == [name]
    a = json.loads((tmp_path / "runs" / "limit" / name / "result.json").read_text())
    b = json.loads((tmp_path / "again" / "limit" / name / "result.json").read_text())
    assert a["config"] == b["config"] and a["config"]["config"]["lr"] == 0.07
    assert a["metrics"]["actual"] == b["metrics"]["actual"]


def test_config_with_resume_continues_that_run_folder(tmp_path, capsys):
    assert cli.main(TINY_LIMIT + ["--checkpoint-every-epochs", "1", "--stop-after", "5"]) == 0
    (name,) = run_folders(tmp_path / "runs", "limit")
    capsys.readouterr()
    recorded = tmp_path / "runs" / "limit" / name / "config.json"
    assert cli.main(["limit", "--config", str(recorded), "--resume", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "limit" / name / "result.json").exists()


@pytest.mark.parametrize("args, message", [
    (TINY_PHASE + ["--data", "x"], "--data: phase uses no dataset"),
    (TINY_PHASE + ["--resume"], "--resume: phase keeps no checkpoints"),
    (TINY_LIMIT + ["--data", "somewhere"], "--data: the digits are bundled"),
    (TINY_LIMIT + ["--resume", "--new-attempt"], "without --new-attempt"),
    (["limit", "--config", "nowhere.json", "--lr", "0.1"], "--config: re-runs a recorded run exactly"),
    (["limit", "--config", "nowhere.json"], "--config: no file"),
    (TINY_LIMIT + ["--lr", "inf"], "--lr: expected a finite number"),
    (TINY_LIMIT + ["--lr", "nan"], "--lr: expected a finite number"),
    (TINY_LIMIT + ["--lr", "-1"], "lr: expected a finite number > 0"),
    (TINY_LIMIT + ["--epochs", "two"], "--epochs: expected an integer"),
    (TINY_LIMIT + ["--bogus"], "unrecognized arguments: --bogus"),
])
def test_refused_options_end_in_one_line(tmp_path, capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_config_of_another_experiment_is_refused(tmp_path, capsys):
    assert cli.main(TINY_PHASE) == 0
    (recorded,) = (tmp_path / "runs" / "phase").glob("*/config.json")
    assert cli.main(["limit", "--config", str(recorded)]) == 2
    assert "records a run of 'phase'" in capsys.readouterr().err


def test_result_is_never_replaced_by_another_config(tmp_path):
    record = {"experiment": "demo", "config": {"lr": 0.1}}
    path = runtime.save_result("demo", {"acc": 0.9, "train_s": 1.0}, record, run_id="demo-aaaaaaaa-s0")
    text = path.read_text()
    with pytest.raises(ValueError, match=r"another config \(differs in: config.lr\)"):
        runtime.save_result("demo", {"acc": 0.9}, {"experiment": "demo", "config": {"lr": 0.2}},
                            run_id="demo-aaaaaaaa-s0")
    with pytest.raises(ValueError, match="different result of this config"):
        runtime.save_result("demo", {"acc": 0.5, "train_s": 1.0}, record, run_id="demo-aaaaaaaa-s0")
    assert path.read_text() == text
    # The same result again (timings aside) is rewritten; an explicit overwrite replaces it.
    runtime.save_result("demo", {"acc": 0.9, "train_s": 2.0}, record, run_id="demo-aaaaaaaa-s0")
    runtime.save_result("demo", {"acc": 0.5}, record, run_id="demo-aaaaaaaa-s0", overwrite=True)
    assert runtime.load_result("demo", run_id="demo-aaaaaaaa-s0")["metrics"] == {"acc": 0.5}


def test_two_configs_get_two_results(tmp_path):
    assert cli.main(TINY_PHASE) == 0
    assert cli.main(TINY_PHASE + ["--trials", "3"]) == 0
    stored = runtime.recorded_runs("phase", "small")
    assert len(stored) == 2 and {r["config"]["config"]["trials"] for r in stored} == {2, 3}


def test_result_json_is_strict_and_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        path = runtime.save_result("demo", {"nan": float("nan"), "inf": float("inf"), "x": [1.0, float("-inf")]},
                                   {}, out_dir=tmp_path)
    finally:
        os.umask(old)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["metrics"] == {"nan": None, "inf": None, "x": [1.0, None]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_unwritable_out_is_found_before_any_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(TINY_LIMIT + ["--out", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out (runs root): cannot write" in err
    assert not (tmp_path / "cache").exists()


def test_relative_and_absolute_data_paths_name_the_same_run(tmp_path, monkeypatch):
    from pruninglab.data.criteo import write_synthetic_criteo

    write_synthetic_criteo(tmp_path / "train.txt", 1200, seed=2)
    args = ["sapp-criteo", "--method", "magnitude", "--steps", "12", "--batch-size", "64", "--checkpoint-every", "5",
            "--eval-batch-size", "512", "--min-blocks", "10", "--no-progress"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(args + ["--data", "train.txt", "--stop-after", "6"]) == 0
    (name,) = run_folders(tmp_path / "runs", "sapp-criteo")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(args + ["--data", str(tmp_path / "train.txt"), "--resume"]) == 0
    assert run_folders(tmp_path / "runs", "sapp-criteo") == [name]
    rec = json.loads((tmp_path / "runs" / "sapp-criteo" / name / "result.json").read_text())
    assert rec["completed"] and rec["config"]["data"] == str(tmp_path / "train.txt")


def test_recorded_results_mean_std_over_seeds(tmp_path):
    for seed, acc in ((0, 0.70), (1, 0.74)):
        record = {"experiment": "limit", "seed": seed, "data": None, "config": {"model": "fc5", "seed": seed}}
        runtime.save_result("limit", {"actual": acc}, record, scale_name="full", run_id=f"limit-0000000{seed}-s{seed}",
                            extra={"seed": seed})
    summary = base.recorded_results("limit", {"model": "fc5"}, seeds=(0, 1, 2))
    assert summary["n"] == 2 and summary["seeds_missing"] == [2]
    assert summary["mean"]["actual"] == pytest.approx(0.72)
    assert summary["std"]["actual"] == pytest.approx(0.0282842712, rel=1e-6)
    assert base.format_recorded(summary, "actual", 3) == "0.720 ± 0.028 (2 seeds; seeds 2 missing)"
    none = base.recorded_results("limit", {"model": "fc12"})
    assert none["n"] == 0 and base.format_recorded(none, "actual") == "not recorded (seeds 0, 1, 2 missing)"


def test_launch_command():
    assert base.launch_command("sapp-criteo", block=10, sparsity=0.9, scale="full") == \
        "python -m pruninglab sapp-criteo --block 10 --sparsity 0.9 --scale full"
    assert base.launch_command("sapp-imagenet", nproc=8, data="/data/imagenet", seed=2).startswith(
        "torchrun --nproc_per_node=8 -m pruninglab sapp-imagenet --data /data/imagenet --seed 2")


# --------------------------------------------------------------------------- configs and presets


def test_every_config_flag_has_help_and_round_trips():
    for cls in (limit.LimitConfig, phase.PhaseConfig, sapp_criteo.CriteoConfig, sapp_imagenet.ImagenetConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), (cls.__name__, f.name)
        cfg = cls.small()
        assert cls.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        phase.PhaseConfig.from_dict({"nonsense": 1})


def test_full_presets_follow_the_papers_protocols():
    full = limit.LimitConfig.full("resnet18")
    assert full.limit_rule == "strict" and full.limit_grid_step == 0.001
    assert limit.LimitConfig.small("mlp-32").limit_rule == "at_least_bisect"
    crit = sapp_criteo.CriteoConfig.full()
    assert crit.acdc_pairs == 10 and crit.clip_attention and crit.logit_weight_decay > 0
    assert sapp_imagenet.ImagenetConfig.full().clip_attention
    with pytest.raises(ValueError, match="limit_rule"):
        limit.LimitConfig.small("mlp-32", limit_rule=">=")


def test_schedule_unit_iteration_counts_milestones_in_iterations():
    cfg = limit.LimitConfig.small("mlp-8", schedule="multistep", milestones=(2,), gamma=0.5)
    per_epoch = limit._lr_lambda(cfg, steps_per_epoch=10, total_steps=100)
    per_iter = limit._lr_lambda(dataclasses.replace(cfg, schedule_unit="iteration"), 10, 100)
    assert per_epoch(5) == 1.0 and per_epoch(20) == 0.5
    assert per_iter(1) == 1.0 and per_iter(2) == 0.5


def test_criteo_schedule_with_five_pairs_is_the_library_schedule():
    from pruninglab.pruners.schedule import criteo_phases

    for method in ("sapp", "acdc", "magnitude"):
        assert sapp.criteo_schedule(1000, method, 5) == criteo_phases(1000, method)
    ten = sapp.criteo_schedule(1000, "acdc", 10)
    assert [p.kind for p in ten].count("sparse") == 11 and ten[1].end - ten[1].start == 30


def test_logit_weight_decay_has_its_own_optimizer_group():
    from torch import nn

    from pruninglab.experiments.sapp import build_pruner, parameter_groups

    net = nn.Sequential(nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 2))
    build_pruner(net, "sapp", sparsity=0.5, block=4, total_steps=100, schedule="criteo", min_blocks=1,
                 clip_attention=True)
    groups = parameter_groups(net, 0.0, 1e-3)
    assert len(groups) == 2 and groups[1]["weight_decay"] == 1e-3 and groups[1]["params"]


def test_models_registry():
    from pruninglab.models import MODELS, build_model

    assert {"fc5", "resnet50", "resnet18_cifar", "criteo_mlp"} <= set(MODELS)
    assert build_model("fc_net", hidden=[4], num_classes=3, in_features=5)(__import__("torch").zeros(2, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="model: expected one of"):
        build_model("resnet1000")
