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


def prepare_char_corpus(root, text: str):
    """`root` with `corpus.txt` holding `text` and `data/`, it prepared with a character tokenizer."""
    from lmforge.data.shards import prepare_dataset

    (root / "corpus.txt").write_text(text)
    prepare_dataset(str(root / "corpus.txt"), root / "data", tokenizer="char", progress=False)
    return root


def pytest_configure(config):
    # A data folder that is named but missing would turn every dataset test into a failure; treat it as
    # absent so those tests skip with their reason, and say so in the report header.
    import os

    root = os.environ.get("LMFORGE_DATA_DIR")
    if root and not os.path.isdir(root):
        os.environ.pop("LMFORGE_DATA_DIR")
        config._lmforge_missing_data_dir = root


def pytest_report_header(config):
    missing = getattr(config, "_lmforge_missing_data_dir", None)
    if missing:
        return f"LMFORGE_DATA_DIR={missing} does not exist: tests that need the shared datasets will skip"
    return None
