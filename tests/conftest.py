import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import write_checkpoint_root  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    """A tiny genpercept-models-like root: unet_<task>_v2/ for every task + fp16 vae/."""
    return write_checkpoint_root(tmp_path_factory.mktemp("genpercept-models"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never touch the network; the hub client must answer from cache or fail fast.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
