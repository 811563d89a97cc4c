"""``python -m pruninglab limit-moves``: one seed per run through the skeleton, read back by seed."""
import json

import pytest

from pruninglab import cli
from pruninglab.experiments.base import recorded_results
from pruninglab.experiments.limit_moves import LimitMovesConfig
from test_experiments_skeleton import _isolated  # noqa: F401  (the same isolation, autouse)

TINY = ["limit-moves", "--hidden", "8", "--epochs", "2", "--imp-rounds", "1", "--retrain-epochs", "1",
        "--lanczos-steps", "4", "--weight-decays", "0", "--scales", "1,2", "--sparsities", "0.9",
        "--hessian-samples", "200", "--no-progress"]


def test_presets_are_one_seed_per_run():
    assert LimitMovesConfig.small().seeds == (0,)
    full = LimitMovesConfig.full(seed=2)
    assert full.seeds == (2,) and full.model == "fc5" and full.dataset == "cifar10"
    with pytest.raises(ValueError, match="seeds: one run is one seed"):
        LimitMovesConfig.small(seeds=(0, 1))


def test_cli_runs_one_seed_and_the_store_reads_it(tmp_path, capsys):
    assert cli.main(TINY + ["--seed", "1"]) == 0
    (result,) = (tmp_path / "runs" / "limit-moves").glob("*/result.json")
    record = json.loads(result.read_text())
    assert record["seed"] == 1 and list(record["metrics"]["seeds"]) == ["1"]
    res = record["metrics"]["seeds"]["1"]
    assert {"imp", "l2", "scaling", "pruners"} <= set(res)
    assert all(0.0 <= row["actual"] <= 1.0 for row in res["imp"])
    found = recorded_results("limit-moves", {"hidden": [8], "epochs": 2}, scale="small")
    assert found["seeds_present"] == [1] and found["seeds_missing"] == [0, 2]
    assert cli.main(TINY + ["--seed", "1"]) == 2  # the same run again is refused
    assert "already exists" in capsys.readouterr().err


def test_cli_digits_takes_no_data(tmp_path, capsys):
    assert cli.main(TINY + ["--data", str(tmp_path)]) == 2
    assert "--data: the digits are bundled" in capsys.readouterr().err
