import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module with one torch thread (restored afterwards).

    The unit tests use many tiny tensors: a second intra-op thread only adds synchronisation waits,
    and on a busy 2-core machine it makes each op many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_run_and_result_folders(tmp_path_factory, monkeypatch):
    """Every test writes runs, results and caches into its own temporary folders, never into the checkout."""
    root = tmp_path_factory.mktemp("pruninglab")
    for var, sub in (("PRUNINGLAB_RUNS", "runs"), ("PRUNINGLAB_RESULTS", "results"), ("PRUNINGLAB_CACHE", "cache")):
        monkeypatch.setenv(var, str(root / sub))
