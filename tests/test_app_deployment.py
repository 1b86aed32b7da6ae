"""A shared deployment of the app (issue 13): loopback bind unless configured, a login from the
environment, bounded jobs / epochs / shots / sessions / pixels, one concurrency group for the heavy
endpoints, internal errors as an id that the server log explains, fresh models (trained or
overwritten after start-up), data-root confinement of task files, datasets validated before
queuing.

Live checks go through gradio_client against ``python app.py`` (:class:`app_server.AppServer`);
the rest call the app's functions in-process."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio_client")
import gradio as gr  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from app_server import REPO, AppServer  # noqa: E402
from kmat_checkpoint import train_tiny_kmat, write_artefacts_checkpoint  # noqa: E402
from medot.checkpoint import Checkpoint, checkpoint_paths, load_checkpoint, save_checkpoint  # noqa: E402
from test_app_kmat_views import _array, _figure, _points_per_class  # noqa: E402
from test_kmat import write_tiny_task  # noqa: E402

USER, PASSWORD = "alice", "correct horse battery"
LABELS = "normal, nodule, opacity"
HIGH = "high"  # the Classify tab's modality value for w_H


def _error_text(call) -> str:
    with pytest.raises(Exception) as raised:
        call()
    return str(raised.value)


# --------------------------------------------------------------------------- address and login


def test_the_app_binds_loopback_unless_a_host_is_configured():
    from app.deployment import LOOPBACK, resolve_host
    from app.server import parse_args

    assert resolve_host(parse_args([]).host, {}) == LOOPBACK == "127.0.0.1"
    assert resolve_host(parse_args(["--host", "0.0.0.0"]).host, {}) == "0.0.0.0"
    assert resolve_host(None, {"MEDOT_HOST": "10.0.0.5"}) == "10.0.0.5"
    # a Hugging Face Space says where to listen; a bare GRADIO_SERVER_NAME elsewhere does not count
    assert resolve_host(None, {"SPACE_ID": "me/medot", "GRADIO_SERVER_NAME": "0.0.0.0"}) == "0.0.0.0"
    assert resolve_host(None, {"GRADIO_SERVER_NAME": "0.0.0.0"}) == LOOPBACK
    assert '"--host", "0.0.0.0"' in (REPO / "Dockerfile").read_text()  # the container says so itself


def test_credentials_come_from_the_environment_or_a_file_never_the_command_line(tmp_path):
    from app.deployment import DeploymentError, read_credentials
    from app.server import parse_args

    assert read_credentials({}) is None
    assert read_credentials({"MEDOT_AUTH": "alice:pa:ss, bob:x"}) == [("alice", "pa:ss"), ("bob", "x")]
    file = tmp_path / "users"
    file.write_text("# who may log in\ncarol:secret one\n\n")
    assert read_credentials({"MEDOT_AUTH_FILE": str(file)}) == [("carol", "secret one")]
    file.write_text("carol\n")
    with pytest.raises(DeploymentError, match="user:password"):
        read_credentials({"MEDOT_AUTH_FILE": str(file)})
    with pytest.raises(SystemExit):  # there is no flag that takes a password
        parse_args(["--auth", "alice:pw"])


# --------------------------------------------------------------------------- live app with a login


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A live app that asks for a login, with small job / epoch / shot limits, its home, data root
    and an authenticated client; no model exists when it starts."""
    home, data_root = tmp_path_factory.mktemp("deploy_home"), tmp_path_factory.mktemp("deploy_data")
    (home / "models").mkdir()
    server = AppServer(home, data_root, env={"MEDOT_AUTH": f"{USER}:{PASSWORD}"},
                       args=("--max-epochs", "50", "--max-shots", "8", "--max-session-jobs", "1"))
    try:
        yield server, Client(server.url, auth=(USER, PASSWORD), verbose=False), home, data_root
    finally:
        server.kill()


def test_a_login_is_required_when_credentials_are_set(locked):
    server, client, _, _ = locked
    with pytest.raises(Exception):  # noqa: B017 - gradio_client's own error types vary by version
        Client(server.url, verbose=False).predict(api_name="/jobs")
    with pytest.raises(Exception):  # noqa: B017
        Client(server.url, auth=(USER, "wrong"), verbose=False)
    assert "data" in client.predict(api_name="/jobs")


def test_epochs_and_shots_above_the_configured_maxima_are_refused_before_queuing(locked):
    _, client, home, _ = locked
    message = _error_text(lambda: client.predict("kmat", "synthetic", "", 4, 51, 1, 1.0, 1.0, "lite",
                                                 api_name="/submit_job"))
    assert "epochs must be at most 50" in message
    message = _error_text(lambda: client.predict("kmat", "synthetic", "", 9, 5, 1, 1.0, 1.0, "lite",
                                                 api_name="/submit_job"))
    assert "shots must be at most 8" in message
    assert not any(row and row[1] == "kmat" for row in client.predict(api_name="/jobs")["data"])  # nothing queued


def test_an_internal_error_shows_an_id_that_the_server_log_explains(locked):
    server, client, home, _ = locked
    # a model whose sidecar is valid JSON of the wrong shape: the loader fails inside (TypeError)
    bad = write_artefacts_checkpoint(home / "models" / "odd" / "model")
    loaded = load_checkpoint(bad)
    save_checkpoint(bad, Checkpoint(loaded.tensors, {**loaded.meta, "class_names": 5}))
    message = _error_text(lambda: client.predict(str(bad), 0.2, 0.1, api_name="/coupling"))
    found = re.search(r"error id ([0-9a-f]{12})", message)
    assert found, message
    assert "TypeError" not in message and "int" not in message and str(home) not in message
    deadline = time.monotonic() + 10
    while found.group(1) not in (log := (home / "app.log").read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [line for line in log.splitlines() if found.group(1) in line]
    assert lines and "/coupling" in lines[0]
    assert "TypeError" in log[log.index(lines[0]):]  # the traceback follows the id's line


def test_models_written_after_start_up_are_accepted_by_the_manifold_and_coupling_views(locked):
    _, client, home, _ = locked
    stored = write_artefacts_checkpoint(home / "models" / "late" / "model", alpha=0.3, epsilon=0.2)
    figure = _figure(client.predict("models/late/model.safetensors", "", "tsne", False, api_name="/manifold"))
    assert sum(_points_per_class(figure).values()) == 4 * 3  # w_H, w_L and both anchors of 3 classes
    gamma = _figure(client.predict("models/late/model.safetensors", 0.3, 0.2, api_name="/coupling"))["data"][0]
    plan = load_checkpoint(stored).tensors["artefacts.fgw_plan"].double().numpy()
    np.testing.assert_allclose(_array(gamma["z"]).astype(np.float64), plan, atol=1e-5)
    # a path that is no listed checkpoint is still refused
    message = _error_text(lambda: client.predict(str(home / "app.log"), 0.3, 0.2, api_name="/coupling"))
    assert "choose a model from the list" in message


def _probabilities(label: dict) -> dict[str, float]:
    return {item["label"]: item["confidence"] for item in label["confidences"]}


def test_a_model_trained_after_start_up_classifies_and_an_overwritten_one_is_reloaded(locked, tmp_path):
    from medot.backbones import create_backbone
    from medot.data.io import read_image
    from medot.methods.kmat.predictor import load_kmat_predictor

    _, client, home, _ = locked
    backbone = create_backbone("lite", device="cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = checkpoint_paths(train_tiny_kmat(backbone, write_tiny_task(tmp_path / "task"),
                                                    home / "models" / "fresh", tmp_path / "cache"))
    finally:
        torch.set_num_threads(previous)
    image = REPO / "assets" / "examples" / "ct_nodule.png"

    def expected() -> dict[str, float]:
        predictor = load_kmat_predictor(model, backbone)
        probabilities = predictor.predict_proba([read_image(image)], "high")[0]
        return dict(zip(predictor.class_names, probabilities.tolist(), strict=True))

    def served(named: str = "models/fresh/model.safetensors") -> dict[str, float]:  # the id the list offers
        label, _, _ = client.predict(handle_file(str(image)), LABELS, "lite", named, HIGH, api_name="/classify")
        return _probabilities(label)

    first = served()
    assert first == pytest.approx(expected(), abs=1e-4)
    assert served(str(model)) == pytest.approx(first, abs=1e-6)  # older clients' absolute path inside MEDOT_HOME
    # the same file saved over with other prompts (as a resumed job or a retrained model does)
    checkpoint = load_checkpoint(model)
    generator = torch.Generator().manual_seed(0)
    changed = {name: tensor + torch.randn(tensor.shape, generator=generator) if name.startswith("prompts.") else tensor
               for name, tensor in checkpoint.tensors.items()}
    assert any(name.startswith("prompts.") for name in changed)
    save_checkpoint(model, Checkpoint(changed, checkpoint.meta))
    second = served()
    assert second == pytest.approx(expected(), abs=1e-4)
    assert second != pytest.approx(first, abs=1e-4)


def test_classify_refuses_model_names_that_leave_medot_home_with_one_readable_line(locked, tmp_path):
    """``..``, an absolute path outside MEDOT_HOME and a symlink inside it leading out are refused by
    /classify before anything is opened, with one line that names no server folder."""
    _, client, home, _ = locked
    foreign = write_artefacts_checkpoint(tmp_path / "foreign" / "model")  # a real model, outside MEDOT_HOME
    (home / "models" / "escape").symlink_to(foreign.parent, target_is_directory=True)
    image = REPO / "assets" / "examples" / "ct_nodule.png"
    expected = {
        "../x": "may not contain '..'",
        "models/../../x/model.safetensors": "may not contain '..'",
        str(foreign): "does not name a model inside MEDOT_HOME",
        "models/escape/model.safetensors": "does not name a model inside MEDOT_HOME",
    }
    try:
        for named, text in expected.items():
            message = _error_text(lambda named=named: client.predict(handle_file(str(image)), LABELS, "lite", named,
                                                                     HIGH, api_name="/classify"))
            assert text in message, (named, message)
            assert "\n" not in message.strip() and "Traceback" not in message and str(home) not in message
    finally:
        (home / "models" / "escape").unlink()


# --------------------------------------------------------------------------- in-process pieces


def test_the_model_cache_reloads_a_checkpoint_saved_over_and_keeps_a_bounded_number(tmp_path):
    from app.models import ModelCache

    loads = []
    cache = ModelCache(size=2)

    def load(path):
        loads.append(path)
        return load_checkpoint(path).tensors["artefacts.w_high"].clone()

    first = write_artefacts_checkpoint(tmp_path / "a" / "model", seed=0)
    a0 = cache.get(first, lambda: load(first))
    assert cache.get(first, lambda: load(first)) is a0 and len(loads) == 1
    write_artefacts_checkpoint(tmp_path / "a" / "model", seed=1)  # saved over: new content, same path
    a1 = cache.get(first, lambda: load(first))
    assert len(loads) == 2 and not torch.equal(a0, a1)
    assert torch.equal(a1, load_checkpoint(first).tensors["artefacts.w_high"])
    for name in ("b", "c"):
        other = write_artefacts_checkpoint(tmp_path / name / "model")
        cache.get(other, lambda other=other: load(other))
    cache.get(first, lambda: load(first))
    assert len(loads) == 5  # 'a' was dropped as least recently used (size 2)


def test_models_are_offered_and_named_by_ids_relative_to_home_and_confined_to_it(tmp_path):
    """The dropdowns' values are ids relative to MEDOT_HOME; ``resolve_model`` (every tab's way from a
    request to a checkpoint) accepts an id or an absolute path inside MEDOT_HOME and refuses ``..``,
    paths leaving MEDOT_HOME (symlinks followed) and files that are no listed checkpoint."""
    import os

    from app.models import model_choices, resolve_model
    from medot.config import Settings
    from medot.errors import CheckpointError, PathNotAllowedError

    home, outside = (tmp_path / "home").resolve(), (tmp_path / "outside").resolve()
    settings = Settings(home=home, data_root=home / "data", backbone="lite")
    kept = write_artefacts_checkpoint(home / "models" / "kept" / "model")
    job = write_artefacts_checkpoint(home / "jobs" / "3" / "model", seed=1)
    foreign = write_artefacts_checkpoint(outside / "foreign" / "model", seed=2)
    # escapes: a folder symlink to a model outside, and a real sidecar whose tensor file links outside
    (home / "models" / "linked-folder").symlink_to(outside / "foreign", target_is_directory=True)
    (home / "models" / "linked-file").mkdir()
    (home / "models" / "linked-file" / "model.json").write_bytes(checkpoint_paths(foreign)[1].read_bytes())
    (home / "models" / "linked-file" / "model.safetensors").symlink_to(foreign)
    os.utime(kept, (1, 1))  # newest first: the job's model, then the kept one

    values = [value for _, value in model_choices(settings, ("kmat",))]
    assert values == ["jobs/3/model.safetensors", "models/kept/model.safetensors"]  # no escape is offered
    assert not any(Path(value).is_absolute() or str(home) in value for value in values)

    path, meta = resolve_model(settings, "jobs/3/model.safetensors", ("kmat",))
    assert path == job and meta["method"] == "kmat"
    assert resolve_model(settings, " models/kept/model.safetensors ", ("kmat",))[0] == kept
    assert resolve_model(settings, str(kept), ("kmat",))[0] == kept  # older clients: absolute inside home
    refusals = {
        "../outside/foreign/model.safetensors": (PathNotAllowedError, "may not contain '..'"),
        "models/kept/../kept/model.safetensors": (PathNotAllowedError, "may not contain '..'"),
        str(foreign): (PathNotAllowedError, "does not name a model inside MEDOT_HOME"),
        "models/linked-folder/model.safetensors": (PathNotAllowedError, "does not name a model inside MEDOT_HOME"),
        "models/linked-file/model.safetensors": (PathNotAllowedError, "does not name a model inside MEDOT_HOME"),
        "models/kept/model.json": (CheckpointError, "choose a model from the list"),  # inside, not a model
        "models/kept/model.safetensors\x00": (PathNotAllowedError, "not a model id"),
        "": (CheckpointError, "choose a model from the list"),
    }
    for named, (error, text) in refusals.items():
        with pytest.raises(error, match=re.escape(text)):
            resolve_model(settings, named, ("kmat",))
    with pytest.raises(CheckpointError, match="not a trained model of this tab"):  # listed, another tab's method
        resolve_model(settings, "jobs/3/model.safetensors", ("pradot",))


def test_heavy_endpoints_share_one_concurrency_group_of_the_configured_size(tmp_path):
    from app.deployment import HEAVY, Limits
    from app.server import build_app
    from medot.config import Settings

    settings = Settings(home=tmp_path, data_root=tmp_path / "data", backbone="lite")
    demo = build_app(settings, device="cpu", limits=Limits(concurrency=3))
    groups = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()
              if isinstance(fn.api_name, str)}
    for endpoint in ("classify", "detect_anomalies", "manifold", "coupling"):
        assert groups[endpoint] == (HEAVY, 3), endpoint
    assert groups["jobs"][0] != HEAVY  # the job table does not wait behind a model
    heavy_other = [fn for fn in demo.fns.values() if fn.concurrency_id == HEAVY
                   and fn.api_name not in ("classify", "detect_anomalies", "manifold", "coupling")]
    assert heavy_other, "the coupling sliders and the anomaly click run models too"


def test_internal_errors_are_logged_under_the_id_the_user_sees(caplog):
    from app.deployment import guard_errors

    with gr.Blocks() as demo:
        box = gr.Textbox()
        button = gr.Button()
        button.click(lambda text: {}["no such key " + text], inputs=[box], outputs=[box], api_name="boom")
    assert guard_errors(demo) >= 1
    fn = next(fn for fn in demo.fns.values() if fn.api_name == "boom").fn
    with caplog.at_level(logging.ERROR, logger="medot.app"), pytest.raises(gr.Error) as raised:
        fn("/secret/path")
    ident = re.search(r"error id ([0-9a-f]{12})", raised.value.message).group(1)
    assert "/secret/path" not in raised.value.message and "KeyError" not in raised.value.message
    record = next(r for r in caplog.records if ident in r.getMessage())
    assert record.exc_info[0] is KeyError


def test_uploads_are_downscaled_after_decoding_and_refused_above_the_pixel_limit(tmp_path):
    from app.deployment import BYTES_PER_PIXEL, DECODE_SHARE, pixel_limit
    from app.feedback import MAX_SIDE, read_upload, set_upload_limits
    from medot.data.io import DEFAULT_MAX_PIXELS, box_downscale

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3000, 2100), dtype=np.uint8)
    path = tmp_path / "large.png"
    Image.fromarray(pixels).save(path)
    image = read_upload(str(path))
    assert image.pixels.shape == (1000, 700)  # factor ceil(3000 / 1024) = 3
    assert max(image.pixels.shape) <= MAX_SIDE
    np.testing.assert_allclose(image.pixels, box_downscale(pixels.astype(np.float32) / 255, 3), atol=1 / 255)  # one 8-bit step: Pillow rounds its box means
    assert image.metadata["downscaled_from"] == (3000, 2100)

    gib = 1 << 30
    assert pixel_limit(gib, 2) == int(gib * DECODE_SHARE / (2 * BYTES_PER_PIXEL))
    assert pixel_limit(1 << 50, 2) == DEFAULT_MAX_PIXELS and pixel_limit(None, 2) == DEFAULT_MAX_PIXELS
    set_upload_limits(2_000_000)
    try:
        with pytest.raises(gr.Error, match="6,300,000 pixels is more than the limit of 2,000,000"):
            read_upload(str(path))
    finally:
        set_upload_limits(DEFAULT_MAX_PIXELS)


def test_a_many_page_tiff_is_refused_without_walking_every_page():
    from medot.data.io import DEFAULT_MAX_FRAMES, read_image
    from medot.errors import ImageReadError

    page = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for pages, refused in ((DEFAULT_MAX_FRAMES + 1, True), (5, False)):
        buffer = io.BytesIO()
        page.save(buffer, format="TIFF", save_all=True, append_images=[page] * (pages - 1))
        if refused:
            with pytest.raises(ImageReadError, match=f"more than {DEFAULT_MAX_FRAMES} pages"):
                read_image(buffer.getvalue(), name="stack.tif")
        else:
            assert read_image(buffer.getvalue()).metadata["number_of_frames"] == 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sessions_are_bounded_and_expire(tmp_path, monkeypatch):
    from app.server import main

    monkeypatch.setenv("MEDOT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDOT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("MEDOT_BACKBONE", "lite")
    port = _free_port()
    demo = main(["--port", str(port), "--max-sessions", "3", "--session-ttl", "2"], block=False)
    try:
        for _ in range(6):  # six visitors, each its own session
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/jobs")
        holder = demo.state_holder
        assert 0 < len(holder.session_data) <= 3
        deadline = time.monotonic() + 15
        while holder.session_data and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not holder.session_data  # idle sessions were dropped after their 2 s
    finally:
        demo.medot_reaper.stop()
        demo.close()


def test_job_limits_per_session_and_per_deployment(tmp_path):
    from app.train import submit_job
    from medot.jobs import JobManager

    def sleeper(method, arguments, out_dir, resume):  # a job that waits until it is cancelled
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    manager = JobManager(tmp_path, tmp_path, max_parallel=1, command_for=sleeper, max_active=3,
                         max_active_per_owner=2, cancel_grace_s=2)

    def submit(owner):
        return submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "lite", owner=owner)

    first = int(submit("session:a").split()[1])
    submit("session:a")
    with pytest.raises(gr.Error, match="the most one user may have \\(2\\)"):
        submit("session:a")
    submit("session:b")
    with pytest.raises(gr.Error, match="the most this app allows \\(3\\)"):
        submit("session:c")
    manager.cancel(first)
    submit("session:a")  # a finished (here: cancelled) job no longer counts
    for job in manager.list_jobs():
        if job.status in ("queued", "running"):
            manager.cancel(job.id)


# --------------------------------------------------------------------------- job ownership and paths


def _owned_job_manager(home, data_root, command=None):
    from medot.jobs import JobManager

    return JobManager(home, data_root, command_for=command or _sleeper, cancel_grace_s=2)


def test_only_who_launched_a_job_can_cancel_or_resume_it_and_see_its_details(tmp_path):
    from app.train import job_detail, job_rows, own_job_ids, resume_job, stop_job, submit_job

    from types import SimpleNamespace

    from app.train import session_owner

    # the owner: the login name when the app has a login, else the Gradio session; None: the operator
    assert session_owner(SimpleNamespace(username="alice", session_hash="h1")) == "user:alice"
    assert session_owner(SimpleNamespace(username=None, session_hash="h1")) == "session:h1"
    assert session_owner(None) is None
    manager = _owned_job_manager(tmp_path, tmp_path)
    alice, bob = "user:alice", "user:bob"
    job = int(submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "lite", owner=alice).split()[1])
    assert manager.get(job).owner == alice
    try:
        for act in (stop_job, resume_job):
            with pytest.raises(gr.Error, match=f"job {job} was launched by someone else: you can only "):
                act(manager, job, bob)
        assert manager.get(job).status == "running"  # bob's cancel did nothing
        row = job_rows(manager, bob)[0]
        assert row[0] == job and row[5] == "" and row[7] == "" and row[8] == "another user"
        assert job_rows(manager, "session:x")[0][8] == "another user"
        status, log, curve = job_detail(manager, job, bob)
        assert "launched by another user" in status and log == "" and curve is None
        assert own_job_ids(manager, bob) == [] and own_job_ids(manager, alice) == [job]
        mine = job_rows(manager, alice)[0]
        assert mine[5] == "synthetic" and mine[8] == "you"
        assert "sleep" not in job_detail(manager, job, bob)[1]
        assert stop_job(manager, job, alice) == f"Job {job} is cancelled."
        with pytest.raises(gr.Error, match="launched by someone else"):
            resume_job(manager, job, bob)
        assert manager.get(job).status == "cancelled"
        assert "again (resuming)" in resume_job(manager, job, alice)
        # the operator (the Python API, no owner) may act on any job; an operator's job is no user's
        assert manager.cancel(job).status == "cancelled"
        theirs = manager.submit("pradot", {"dataset": "synthetic", "epochs": 1})
        assert job_rows(manager, alice)[0][8] == "operator"
        with pytest.raises(gr.Error, match=f"job {theirs} was launched outside the app"):
            stop_job(manager, theirs, alice)
    finally:
        _cancel_all(manager)


def test_a_version_1_registry_gains_owners_and_its_jobs_stay_the_operators(tmp_path):
    import sqlite3

    from medot.jobs import JobRegistry
    from medot.jobs.registry import _SCHEMA

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as connection:  # the schema as version 1 wrote it: no owner column
        for statement in filter(str.strip, _SCHEMA.replace(",\n    owner TEXT", "").split(";")):
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
        connection.execute("INSERT INTO jobs (method, arguments, status, created_at, job_dir, log_path, events_path) "
                           "VALUES ('pradot', '{}', 'interrupted', '2026-01-01T00:00:00+00:00', 'd', 'l', 'e')")
    registry = JobRegistry(path)
    assert registry.get(1).owner is None
    assert registry.create("pradot", {}, tmp_path / "jobs", owner="user:alice").owner == "user:alice"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2


def test_users_of_a_live_app_with_a_login_cannot_touch_each_others_jobs(tmp_path, monkeypatch):
    from app.server import main
    from medot.jobs import JobManager

    monkeypatch.setitem(JobManager.__init__.__kwdefaults__, "command_for", _sleeper)
    monkeypatch.setenv("MEDOT_HOME", str(tmp_path))
    monkeypatch.setenv("MEDOT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("MEDOT_BACKBONE", "lite")
    monkeypatch.setenv("MEDOT_AUTH", "alice:pw-a,bob:pw-b")
    port = _free_port()
    demo = main(["--port", str(port)], block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        alice, bob = Client(url, auth=("alice", "pw-a"), verbose=False), Client(url, auth=("bob", "pw-b"), verbose=False)
        job = int(alice.predict("pradot", "synthetic", "", 4, 1, 1, 1.0, 1.0, "lite", api_name="/submit_job").split()[1])
        assert "launched by someone else" in _error_text(lambda: bob.predict(job, api_name="/cancel_job"))
        row = next(r for r in bob.predict(api_name="/jobs")["data"] if r[0] == job)
        assert row[2] == "running" and row[5] == "" and row[8] == "another user"
        assert next(r for r in alice.predict(api_name="/jobs")["data"] if r[0] == job)[8] == "you"
        assert alice.predict(job, api_name="/cancel_job") == f"Job {job} is cancelled."
        assert "launched by someone else" in _error_text(lambda: bob.predict(job, api_name="/resume_job"))
        assert "again (resuming)" in alice.predict(job, api_name="/resume_job")
    finally:
        for record in JobManager(tmp_path, tmp_path / "data", command_for=_sleeper).list_jobs():
            if record.status in ("queued", "running"):
                JobManager(tmp_path, tmp_path / "data", command_for=_sleeper, cancel_grace_s=2).cancel(record.id)
        demo.medot_reaper.stop()
        demo.close()


def test_the_jobs_table_and_errors_show_paths_relative_to_the_data_root_and_home(data_root, tmp_path):
    from app.feedback import redact_paths, set_private_paths
    from app.train import job_detail, job_rows, submit_job
    from medot.jobs import MODEL_FILE

    root, _ = data_root
    home = tmp_path / "home"

    def writes_a_model(method, arguments, out_dir, resume):  # a job that finishes at once with its model
        script = f"import sys, pathlib; pathlib.Path(sys.argv[1], {MODEL_FILE!r}).write_bytes(b'x')"
        return [sys.executable, "-c", script, str(out_dir)]

    def fails(method, arguments, out_dir, resume):  # a job whose error names a server path
        script = f"import sys; print('medot: error: no images in {root}/bench/empty', file=sys.stderr); sys.exit(2)"
        return [sys.executable, "-c", script]

    manager = _owned_job_manager(home, root, writes_a_model)
    owner = "session:me"
    submit_job(manager, "pradot", "synthetic", str(root / "bench" / "mvtec"), 4, 1, 0, 1.0, 1.0, "lite", owner=owner)
    manager.command_for = fails
    submit_job(manager, "pradot", "synthetic", "bench/mvtec", 4, 1, 0, 1.0, 1.0, "lite", owner=owner)
    deadline = time.monotonic() + 30
    while any(j.status in ("queued", "running") for j in manager.list_jobs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    failed, done = job_rows(manager, owner)
    assert done[2] == "done" and done[5] == "bench/mvtec" and done[7] == f"jobs/{done[0]}/{MODEL_FILE}"
    assert failed[2] == "failed" and failed[7].startswith("no images in $MEDOT_DATA_ROOT/bench/empty")
    status, log, _ = job_detail(manager, done[0], owner)
    assert f"`jobs/{done[0]}/{MODEL_FILE}`" in status and f"$MEDOT_HOME/jobs/{done[0]}" in log
    shown = " ".join(str(cell) for row in job_rows(manager, owner) for cell in row) + status + log
    assert str(root) not in shown and str(home) not in shown and sys.executable not in shown
    # a user error that names a server path shows it by name
    set_private_paths(home, root)
    try:
        message = _error_text(lambda: submit_job(manager, "pradot", "synthetic", str(root / "nowhere"), 4, 1, 0, 1.0,
                                                 1.0, "lite", owner=owner))
        assert str(root) not in message and "$MEDOT_DATA_ROOT/nowhere" in message
    finally:
        set_private_paths("/nonexistent-home", "/nonexistent-data")
    assert redact_paths(f"{home}/models/k.json", {str(home): "$MEDOT_HOME"}) == "$MEDOT_HOME/models/k.json"
    # a K-MaT job's log names the bundled descriptions file: the install folder is shown by name
    import medot
    from app.feedback import private_paths
    bundled = Path(medot.__file__).resolve().parent.parent / "assets" / "descriptions" / "chest.json"
    shown = redact_paths(f"descriptions: N_p = 22 ({bundled})", private_paths(home, root))
    assert shown == "descriptions: N_p = 22 ($MEDOT_INSTALL/assets/descriptions/chest.json)"


# --------------------------------------------------------------------------- data root and datasets


def _sleeper(method, arguments, out_dir, resume):  # a job command that waits until cancelled
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def _cancel_all(manager) -> None:
    for job in manager.list_jobs():
        if job.status in ("queued", "running"):
            manager.cancel(job.id)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root with the synthetic benchmark (K-MaT pair, MVTec phantom), a folder outside it."""
    from medot.data.synthetic import write_synthetic_benchmark

    base = tmp_path_factory.mktemp("confine")
    root, outside = base / "root", base / "outside"
    write_synthetic_benchmark(root / "bench", size=32, n_per_class=4, progress=False)
    write_synthetic_benchmark(outside, size=32, n_per_class=4, progress=False)
    return root, outside


def _task_file(path: Path, high: str, low: str, descriptions: str = "synthetic") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "t", "descriptions": descriptions,
                                "high": {"root": high, "split_file": f"{high}/split_ct.json"},
                                "low": {"root": low}}))
    return path


def test_a_task_file_inside_the_data_root_may_name_only_paths_inside_it(data_root, tmp_path):
    from medot.config import Settings
    from medot.methods.prompt_learning.crossmodal import TaskError, resolve_task

    root, outside = data_root
    settings = Settings(home=tmp_path, data_root=root, backbone="lite")
    good = _task_file(root / "tasks" / "good.json", "../bench/kmat/ct", "../bench/kmat/xray")
    assert resolve_task(good, settings).high.root == (root / "bench" / "kmat" / "ct").resolve()
    escapes = {
        "dotdot.json": ("../../outside/kmat/ct", "../bench/kmat/xray"),
        "absolute.json": (str(outside / "kmat" / "ct"), "../bench/kmat/xray"),
        "low.json": ("../bench/kmat/ct", str(outside / "kmat" / "xray")),
    }
    (root / "tasks" / "link").symlink_to(outside / "kmat", target_is_directory=True)
    escapes["symlink.json"] = ("link/ct", "../bench/kmat/xray")
    for name, (high, low) in escapes.items():
        task = _task_file(root / "tasks" / name, high, low)
        with pytest.raises(TaskError, match="outside the data root"):
            resolve_task(task, settings)
    descriptions = _task_file(root / "tasks" / "desc.json", "../bench/kmat/ct", "../bench/kmat/xray",
                              descriptions=str(outside / "descriptions.json"))
    with pytest.raises(TaskError, match="'descriptions' names .* outside the data root"):
        resolve_task(descriptions, settings)
    # a task file the CLI user keeps outside the data root is theirs to point anywhere
    mine = _task_file(outside / "mine.json", "kmat/ct", "kmat/xray")
    assert resolve_task(mine, settings).high.root == outside / "kmat" / "ct"


def test_a_job_dataset_is_checked_before_it_is_queued(data_root, tmp_path):
    from medot.jobs import JobError, JobManager

    root, outside = data_root
    manager = JobManager(tmp_path, root, command_for=_sleeper, cancel_grace_s=2)
    refused = {
        ("kmat", "bench/kmat/ct"): "is not a task folder",
        ("kmat", "chest"): "the 'chest' task needs its data under",
        ("kmat", "tasks/dotdot.json"): "outside the data root",
        ("pradot", "bench"): "does not follow a known dataset layout",
        ("pradot", "bench/kmat/ct"): "is a class-folder dataset; PRADOT needs an anomaly-detection layout",
        ("pradot", "multi"): "holds 2 mvtec classes (a, b); a PRADOT job trains on one",
    }
    _task_file(root / "tasks" / "dotdot.json", "../../outside/kmat/ct", "../bench/kmat/xray")
    (root / "multi").mkdir(exist_ok=True)
    for name in ("a", "b"):
        if not (root / "multi" / name).exists():
            (root / "multi" / name).symlink_to(root / "bench" / "mvtec" / "phantom", target_is_directory=True)
    try:
        for (method, dataset), reason in refused.items():
            with pytest.raises(JobError, match=re.escape(reason)):
                manager.submit(method, {"dataset": dataset, "epochs": 1})
        assert manager.list_jobs() == []  # nothing was queued
        for kind in ("ct", "xray"):
            (root / "kmat" / "chest" / kind).mkdir(parents=True, exist_ok=True)
        _task_file(root / "tasks" / "ok.json", "../bench/kmat/ct", "../bench/kmat/xray")
        accepted = [manager.submit("kmat", {"dataset": "chest", "epochs": 1}),
                    manager.submit("kmat", {"dataset": "tasks/ok.json", "epochs": 1}),
                    manager.submit("pradot", {"dataset": "bench/mvtec", "epochs": 1}),
                    manager.submit("pradot", {"dataset": "synthetic", "epochs": 1})]
        assert [manager.get(job).arguments["dataset"] for job in accepted] == [
            "chest", str((root / "tasks" / "ok.json").resolve()), str((root / "bench" / "mvtec").resolve()),
            "synthetic"]
    finally:
        _cancel_all(manager)


def test_the_dataset_list_follows_the_method(data_root, tmp_path):
    from app.train import dataset_choices
    from medot.config import Settings
    from medot.methods.prompt_learning.crossmodal import PAPER_TASKS

    root, _ = data_root
    _task_file(root / "tasks" / "listed.json", "../bench/kmat/ct", "../bench/kmat/xray")
    settings = Settings(home=tmp_path, data_root=root, backbone="lite")
    kmat = dataset_choices(settings, "kmat")
    assert kmat[0] == "synthetic" and set(PAPER_TASKS) <= set(kmat) and "tasks/listed.json" in kmat
    assert "bench/mvtec" in dataset_choices(settings, "pradot")


def test_a_failed_job_shows_the_reason_its_command_gave(tmp_path):
    from app.train import job_rows
    from medot.jobs import JobManager

    def failing(method, arguments, out_dir, resume):
        script = "import sys; print('loading'); print('medot: error: no class folders with images in /data/x', " \
                 "file=sys.stderr); sys.exit(2)"
        return [sys.executable, "-c", script]

    manager = JobManager(tmp_path, tmp_path, command_for=failing)
    job = manager.submit("pradot", {"dataset": "synthetic", "epochs": 1})
    deadline = time.monotonic() + 30
    while manager.get(job).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    record = manager.get(job)
    assert record.status == "failed"
    first_line = record.error.splitlines()[0]
    assert first_line.startswith("no class folders with images in /data/x (the training command exited with status 2)")
    assert job_rows(manager)[0][7] == first_line


# --------------------------------------------------------------------------- smaller defects (item 10)


def test_a_cancel_arriving_after_the_job_finished_leaves_it_done(tmp_path):
    from medot.jobs import MODEL_FILE, JobManager

    go = tmp_path / "go"

    def finishing(method, arguments, out_dir, resume):  # writes its model once told to, then exits 0
        script = (f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
                  f"pathlib.Path({str(out_dir / MODEL_FILE)!r}).write_bytes(b'model')\n")
        return [sys.executable, "-c", script]

    manager = JobManager(tmp_path, tmp_path, command_for=finishing)
    job = manager.submit("pradot", {"dataset": "synthetic", "epochs": 1})
    assert manager.get(job).status == "running"
    # the user's cancel is flagged just as the job writes its model and exits (before it is signalled)
    assert manager.registry.request_cancel(job)
    go.touch()
    deadline = time.monotonic() + 30
    while manager.get(job).status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    record = manager.get(job)
    assert record.status == "done" and record.checkpoint_path.name == MODEL_FILE


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--shots", "0"], "shots must be at least 1, got 0"),
    (["--epochs", "0"], "epochs must be at least 1, got 0"),
])
def test_bad_training_arguments_are_refused_before_any_data_or_backbone_is_loaded(tmp_path, monkeypatch, capsys,
                                                                                  flags, message):
    import medot.backbones
    from medot.cli import main

    monkeypatch.setenv("MEDOT_HOME", str(tmp_path))
    monkeypatch.setattr(medot.backbones, "create_backbone", lambda *a, **k: pytest.fail("a backbone was loaded"))
    assert main(["train", "kmat", "--task", "synthetic", "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "synthetic").exists()  # the synthetic task was not even written


def test_raw_internal_messages_become_readable_ones(tmp_path, monkeypatch, capsys):
    import medot.cli
    from app.train import submit_job
    from medot.config import confine_path
    from medot.errors import PathNotAllowedError
    from medot.jobs import JobManager
    from medot.zeroshot import MAX_LABELS, parse_labels

    with pytest.raises(PathNotAllowedError, match="cannot be used as a path: symlink loop"):
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        confine_path("loop", tmp_path)
    manager = JobManager(tmp_path, tmp_path, command_for=_sleeper, cancel_grace_s=2)
    try:
        with pytest.raises(gr.Error, match="file name too long"):
            submit_job(manager, "pradot", "synthetic", "x" * 300, 4, 1, 0, 1.0, 1.0, "lite")
        assert "queued" in submit_job(manager, "pradot", "synthetic", None, 4, 1, 0, 1.0, 1.0, "lite")  # API: no path
    finally:
        _cancel_all(manager)
    with pytest.raises(ValueError, match="at least two distinct class labels"):
        parse_labels(None)
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS} class labels, got 2000"):
        parse_labels(", ".join(f"label {i}" for i in range(2000)))

    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40000000000 bytes. Error code 12")

    monkeypatch.setattr(medot.cli, "_run", allocate)
    assert medot.cli.main(["train", "kmat", "--task", "synthetic"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("medot: error: out of memory") and "40000000000" not in error


def test_a_12_bit_jpeg_dicom_names_the_missing_decoder_package():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    from medot.data.io import read_image
    from medot.errors import ImageReadError

    path = get_testdata_file("JPEG-lossy.dcm")  # JPEG Extended, 12 bits stored: a valid file
    import pydicom

    if not get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).missing_dependencies:
        pytest.skip("every JPEG decoder is installed here: the file decodes")
    with pytest.raises(ImageReadError) as raised:
        read_image(path, name="ct.dcm")
    message = str(raised.value)
    assert "12 bits stored" in message and "pylibjpeg" in message
    assert "truncated" not in message and "re-export" not in message


def test_figure_labels_fit_on_one_line_over_their_figure(tmp_path):
    """Gradio draws an Image / Plot / Gallery label over the figure's top edge in one line: the
    anomaly panel's 108-character label was cut and hid the colour bar's top value."""
    from app.server import build_app
    from medot.config import Settings

    demo = build_app(Settings(home=tmp_path, data_root=tmp_path / "data", backbone="lite"), device="cpu")
    figures = [b for b in demo.blocks.values() if isinstance(b, (gr.Image, gr.Plot, gr.Gallery))]
    assert len(figures) >= 10
    too_long = [b.label for b in figures if b.show_label and len(b.label or "") > 70]
    assert too_long == []
    # the anomaly panel's colour bar reaches its top-right corner, where the share and full-screen
    # buttons hid its top value (">=2"): only the download button is left there
    panel = next(b for b in figures if b.elem_id == "anomaly-panel")
    assert list(panel.buttons) == ["download"]


def test_a_launched_job_is_selected_so_its_progress_and_result_card_show(tmp_path):
    """After 'Launch training job' the Job dropdown holds the new job (it said "Select a job." and
    showed nothing until the user picked it), and only the launcher's own job is selected."""
    from app.server import build_app
    from app.train import follow_job, submit_job
    from medot.config import Settings

    manager = _owned_job_manager(tmp_path, tmp_path)
    try:
        message = submit_job(manager, "pradot", "synthetic", "", 4, 1, 0, 1.0, 1.0, "lite", owner="session:a")
        job = int(message.split()[1])
        assert follow_job(manager, message, "session:a")["value"] == job
        assert "value" not in follow_job(manager, message, "session:b")  # someone else's job is not selected
        assert "value" not in follow_job(manager, "", "session:a")  # a refused launch selects nothing
    finally:
        manager.cancel(job)
    demo = build_app(Settings(home=tmp_path / "app", data_root=tmp_path / "data", backbone="lite"), device="cpu")
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Job (yours)")
    submit = next(i for i, fn in demo.fns.items() if fn.api_name == "submit_job")
    followers = [fn for fn in demo.fns.values() if getattr(fn, "trigger_after", None) == submit]
    assert any(dropdown in fn.outputs for fn in followers)
