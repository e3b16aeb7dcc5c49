import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from golden import cases  # noqa: E402
from tiny_models import write_checkpoint_root  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    """A tiny genpercept-models-like root: unet_<task>_v2/ for every task + fp16 vae/."""
    return write_checkpoint_root(tmp_path_factory.mktemp("genpercept-models"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never touch the network; the hub client must answer from cache or fail fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    tensors run faster on one thread than on two fighting other processes for a busy 2-core box."""
    with cases.one_thread():
        yield
