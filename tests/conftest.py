"""Test-wide settings: no network, no analytics, caches in a temporary MEDOT_HOME."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@pytest.fixture(autouse=True, scope="session")
def _medot_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("medot_home")
    previous = os.environ.get("MEDOT_HOME")
    os.environ["MEDOT_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("MEDOT_HOME", None)
    else:
        os.environ["MEDOT_HOME"] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' small matmuls run many times faster on one thread of a busy 2-core CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
