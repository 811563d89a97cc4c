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
