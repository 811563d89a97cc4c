"""The public namespace: ``import pruninglab as pl`` reaches the main function of each area, lazily."""
import importlib
import inspect
import subprocess
import sys

import pytest

import pruninglab as pl

SUBPACKAGES = ["pruninglab.limits", "pruninglab.pruners", "pruninglab.sparse", "pruninglab.inr", "pruninglab.data",
               "pruninglab.experiments"]


def test_main_names_resolve():
    for name in ["hessian_eigenvalues", "statistical_dimension_l1", "SequentialAttentionPruner", "train",
                 "limit_report"]:
        assert callable(getattr(pl, name)), name
    # One of each area (masks, magnitude, sharpness, geometry, phase, limits, blocks, INR, loop).
    areas = ["apply_masks", "global_magnitude_masks", "HessianOperator", "hessian_trace", "hessian_spectrum",
             "statistical_dimension_group_l1", "solve_l1_batched", "phase_transition_grid",
             "predicted_pruning_limit", "actual_pruning_limit", "ACDCPruner", "PowerPropPruner", "to_block_sparse",
             "siren", "meta_train", "LimitReport"]
    for name in areas:
        assert name in pl.__all__ and getattr(pl, name) is not None, name


@pytest.mark.parametrize("package", ["pruninglab", *SUBPACKAGES])
def test_every_package_declares_all_and_every_name_resolves(package):
    mod = importlib.import_module(package)
    assert isinstance(mod.__all__, list) and mod.__all__
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    assert set(mod.__all__) <= set(dir(mod))


def test_exports_are_the_module_objects():
    from pruninglab.limits.report import limit_report
    from pruninglab.sharpness import hessian_eigenvalues

    assert pl.limit_report is limit_report and pl.hessian_eigenvalues is hessian_eigenvalues
    assert pl.limits.limit_report is limit_report
    with pytest.raises(AttributeError, match="no_such_name"):
        pl.no_such_name  # noqa: B018


def test_train_is_the_function_even_after_importing_the_module():
    code = ("import pruninglab.train, pruninglab as pl; from pruninglab.train import Preempted; "
            "import pruninglab.limits.pruning_limit; "  # imports the train module again, inside the package
            "assert callable(pl.train) and pl.train.__name__ == 'train', pl.train")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_is_light():
    code = "import sys, pruninglab; assert 'torch' not in sys.modules, 'import pruninglab loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_limit_report_signature():
    sig = inspect.signature(pl.limit_report)
    params = list(sig.parameters)
    assert params[:4] == ["model", "loss_fn", "train_data", "evaluate"]
    for kw in ["sparsities", "device", "progress", "rule", "max_hvp", "max_evaluations"]:
        assert sig.parameters[kw].kind is inspect.Parameter.KEYWORD_ONLY, kw
