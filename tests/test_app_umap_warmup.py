"""The app compiles UMAP in the background at start-up, caching numba's code under MEDOT_HOME."""

import threading

from medot.config import Settings


def test_umap_warm_up_runs_in_the_background_and_caches_under_medot_home(tmp_path, monkeypatch):
    import app.manifolds as manifolds

    ran = threading.Event()
    monkeypatch.setattr(manifolds, "warm_up_umap", ran.set)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv(manifolds.WARM_UMAP_ENV, raising=False)
    settings = Settings(home=tmp_path, data_root=tmp_path / "data", backbone="lite")
    thread = manifolds.start_umap_warm_up(settings)
    thread.join(timeout=30)
    assert ran.is_set() and thread.daemon
    import os

    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "numba")
    monkeypatch.setenv(manifolds.WARM_UMAP_ENV, "0")
    assert manifolds.start_umap_warm_up(settings) is None


def test_storage_notice_only_on_a_space_without_persistent_storage(tmp_path):
    from pathlib import Path

    from app.about import storage_notice

    assert storage_notice(tmp_path, {}) is None  # not a Space
    notice = storage_notice(tmp_path, {"SPACE_ID": "someone/medot"})
    assert "keeps nothing" in notice and str(tmp_path) in notice and "MEDOT_HOME=/data/medot" in notice
    on_disk = storage_notice(Path("/data/medot"), {"SPACE_ID": "someone/medot"})
    assert on_disk is None if Path("/data").is_dir() else "is not mounted" in on_disk


def test_share_flag_is_parsed():
    from app.server import parse_args

    assert parse_args(["--share"]).share is True and parse_args([]).share is False
