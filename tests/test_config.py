import os

import pytest

from medot.config import Settings, confine_path
from medot.errors import PathNotAllowedError


def test_settings_follow_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEDOT_DATA_ROOT", raising=False)
    monkeypatch.setenv("MEDOT_BACKBONE", "lite")
    settings = Settings.from_env()
    assert settings.home == (tmp_path / "home").resolve()
    assert settings.data_root == settings.home / "data"
    assert settings.backbone == "lite"
    monkeypatch.setenv("MEDOT_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert Settings.from_env().data_root == (tmp_path / "elsewhere").resolve()


def test_confine_path_accepts_inside_and_relative(tmp_path):
    root = tmp_path / "data"
    (root / "set" / "a").mkdir(parents=True)
    assert confine_path("set/a", root) == (root / "set" / "a").resolve()
    assert confine_path(str(root / "set"), root) == (root / "set").resolve()
    assert confine_path(".", root) == root.resolve()


@pytest.mark.parametrize("typed", ["../outside", "/etc", "set/../../outside", "", "bad\x00name"])
def test_confine_path_refuses_escapes(tmp_path, typed):
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    with pytest.raises(PathNotAllowedError):
        confine_path(typed, root)


def test_confine_path_refuses_symlink_escape(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(PathNotAllowedError, match="outside the data root"):
        confine_path("link", root)
