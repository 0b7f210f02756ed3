import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The test models are tiny: splitting their matmuls across threads costs more than it
    # saves, and on a busy machine threads waiting for each other make it 10-100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port nobody holds now: concurrent test runs on one machine must not share a fixed port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
