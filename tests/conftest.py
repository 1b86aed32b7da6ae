"""Test-wide settings: no network, no analytics, caches in a temporary MEDOT_HOME."""

import os

import pytest

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
