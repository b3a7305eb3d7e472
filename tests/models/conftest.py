"""Model tests run tiny matmuls: extra threads only add synchronisation (and stall on a shared 2-core box)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
