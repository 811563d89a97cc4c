"""The limit experiment on TinyImageNet (paper 1's ResNet18 / ResNet50 tasks) from a generated folder."""
import pytest

from pruninglab import cli
from pruninglab.data.tinyimagenet import write_tinyimagenet
from pruninglab.experiments import limit
from pruninglab.plan import plan_for
from test_experiments_skeleton import _isolated  # noqa: F401  (the same isolation, autouse)


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_full_presets_carry_the_cifar100_settings_of_the_network(model):
    cfg = limit.LimitConfig.full(model, "tinyimagenet")
    paper = limit.PAPER_SETTINGS[model]
    assert cfg.dataset == "tinyimagenet" and cfg.epochs == 200 and cfg.batch_size == 128 and cfg.augment
    assert (cfg.lr, cfg.l1, cfg.schedule, cfg.warmup_epochs) == (paper["lr"], paper["l1"], "cosine", 5)
    net = limit.build_model(model, (3, 64, 64), 200)
    assert net.fc.out_features == 200
    with pytest.raises(ValueError, match="vgg16 expects 3x32x32"):
        limit.build_model("vgg16", (3, 64, 64), 200)


def test_plan_of_the_resnet50_task():
    plan = plan_for("limit", limit.LimitConfig.full("resnet50", "tinyimagenet"))
    assert plan["steps"] == 200 * (100_000 // 128)
    assert plan["forward_flops_per_sample"] > 4 * 2 * 1.0e9  # 64x64 with the CIFAR stem: ~4x CIFAR's 1.3 G MACs


def test_cli_runs_resnet18_on_a_generated_folder(tmp_path, capsys):
    root = write_tinyimagenet(tmp_path / "tiny", num_classes=4, train_per_class=6, val_per_class=2)
    argv = ["limit", "--model", "resnet18", "--dataset", "tinyimagenet", "--data", str(root), "--epochs", "1",
            "--train-samples", "16", "--test-samples", "8", "--batch-size", "8", "--lanczos-steps", "3",
            "--hessian-samples", "8", "--hessian-batch-size", "8", "--grid", "4", "--zero-mass-rows", "0",
            "--limit-grid-step", "0.25",  # the strict rule's 999-point scan takes minutes on a CPU
            "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    import json

    (result,) = (tmp_path / "runs" / "limit").glob("*/result.json")
    m = json.loads(result.read_text())["metrics"]
    assert m["dataset"] == "tinyimagenet" and 0.0 <= m["predicted"] <= 1.0
    assert cli.main(["limit", "--model", "resnet18", "--dataset", "tinyimagenet",
                     "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
