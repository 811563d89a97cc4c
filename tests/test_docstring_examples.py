"""Every ``Example`` in a docstring of pruninglab runs and prints what it shows (doctest).

The most used functions must have one; the examples are collected from every module, so an example
added anywhere later is run too.
"""
import doctest
import importlib
import pkgutil

import pytest
import torch

import pruninglab as pl

#: The functions a reader calls most; each carries a runnable ``Example`` section.
MOST_USED = [
    "limit_report",
    "actual_pruning_limit",
    "predicted_pruning_limit",
    "loss_noise_epsilon",
    "HessianOperator",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_spectrum",
    "layerwise_sharpness",
    "statistical_dimension_l1",
]


def _modules():
    names = ["pruninglab"]
    for info in pkgutil.walk_packages(pl.__path__, prefix="pruninglab."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):
                tests.append(test)
    return tests


DOCTESTS = _doctests()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", MOST_USED)
def test_most_used_functions_have_an_example(name):
    doc = getattr(pl, name).__doc__ or ""
    assert "Example\n    -------" in doc and ">>> " in doc, f"{name}: no runnable Example section"


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example_runs(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{test.name}: {result.failed} of {result.attempted} examples failed"


def test_examples_were_found():
    found = {t.name.rsplit(".", 1)[-1] for t in DOCTESTS}
    assert set(MOST_USED) <= found
