"""The app through its HTTP API (gradio_client) and in headless Chromium, against live servers
started by the tests (``python app.py --port <free>``) on a temporary MEDOT_HOME / MEDOT_DATA_ROOT.

One server is shared by the module; the restart test starts and kills its own."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import REPO, AppServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
LABELS = "normal, nodule, opacity"


def _train_tiny_pradot(data_root: Path, out: Path) -> Path:
    from medot.backbones import create_backbone
    from medot.methods.pradot.config import PatchCoreConfig, PradotConfig
    from medot.methods.pradot.data import load_anomaly_splits
    from medot.methods.pradot.detector import save_pradot
    from medot.methods.pradot.patchcore import PatchCoreModel
    from medot.methods.pradot.patchcore_io import save_patchcore
    from medot.methods.pradot.training import build_model, encode_tokens, train_pradot

    backbone = create_backbone("lite", device="cpu")
    config = PradotConfig(layers=("stride16",), alphas=(0.0, 0.3), n_prototypes=2, epochs=1, batch_size=8,
                          sinkhorn_iterations=20)
    splits = load_anomaly_splits(data_root / "mvtec", "phantom")
    tokens, grids = encode_tokens(backbone, splits.train, config.layers, progress=False)
    model = build_model(config, tokens, grids)
    train_pradot(model, tokens, config, progress=False)
    baseline = PatchCoreModel(config.layers, grids, PatchCoreConfig())
    baseline.fit(tokens)
    save_patchcore(out / "patchcore", baseline, backbone="lite", image_size=backbone.preprocess.image_size)
    return save_pradot(out / "model", model.eval(), backbone="lite", image_size=backbone.preprocess.image_size,
                       config=config)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from medot.data.synthetic import write_synthetic_benchmark

    home = tmp_path_factory.mktemp("app_home")
    data_root = tmp_path_factory.mktemp("app_data")
    write_synthetic_benchmark(data_root, size=64, n_per_class=4)
    model = _train_tiny_pradot(data_root, home / "models" / "pradot-phantom")  # before: the lists are built at start
    server = AppServer(home, data_root)
    try:
        client = Client(server.url, verbose=False)
        yield server, client, model, data_root
    finally:
        server.kill()


def _example(name: str) -> Path:
    from medot.data.examples import example_images

    return next(path for path in example_images() if path.name == name)


def _classify(client: Client, path: Path):
    return client.predict(handle_file(str(path)), LABELS, "lite", "zero-shot", "high-end prompts (w_H)",
                          api_name="/classify")


def _error_text(call) -> str:
    with pytest.raises(Exception) as raised:
        call()
    return str(raised.value)


def test_classify_example_gives_probabilities_over_the_typed_labels(app):
    _, client, _, _ = app
    label, preview, info = _classify(client, _example("xray_nodule.png"))
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert set(confidences) == {"normal", "nodule", "opacity"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-5)
    assert "Not a clinical model" in info
    assert np.asarray(Image.open(preview)).shape == (224, 224, 3)


def test_anomaly_localisation_with_a_trained_pradot_model(app):
    from medot.methods.pradot.detector import load_pradot

    _, client, model, data_root = app
    image = sorted((data_root / "mvtec" / "phantom" / "test").rglob("*.png"))[-1]
    overlay, score, summary, threshold = client.predict(
        handle_file(str(image)), str(model), 0.5, 1.0, api_name="/detect_anomalies"
    )
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image

    detector = load_pradot(model)
    _, expected = detector.predict([view_image(detector.backbone, read_image(image).rgb())])
    assert score == pytest.approx(float(expected[0]), rel=1e-4)
    assert threshold["value"] == threshold["maximum"] == pytest.approx(score, abs=1e-4)  # slider: map range, at its max
    assert f"{score:.4f}" in summary
    assert np.asarray(Image.open(overlay)).shape == (224, 224, 3)
    # the slider's range now follows this map; a second call in the same session with the API's
    # default threshold (above the map's range) is not refused (#13)
    _, again, _, threshold = client.predict(handle_file(str(image)), str(model), 0.5, 1.0, api_name="/detect_anomalies")
    assert again == pytest.approx(score, rel=1e-6) and threshold["value"] == pytest.approx(score, abs=1e-4)


def test_anomaly_localisation_with_the_patchcore_baseline(app):
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image
    from medot.methods.pradot.patchcore_io import load_patchcore

    server, _, model, data_root = app
    client = Client(server.url, verbose=False)  # a fresh session: the slider range of earlier detections is per session
    baseline = model.with_name("patchcore.safetensors")
    image = sorted((data_root / "mvtec" / "phantom" / "test").rglob("*.png"))[-1]
    overlay, score, summary, threshold = client.predict(
        handle_file(str(image)), str(baseline), 0.5, 1.0, api_name="/detect_anomalies"
    )
    detector = load_patchcore(baseline)
    maps, expected = detector.predict([view_image(detector.backbone, read_image(image).rgb())])
    assert score == pytest.approx(float(expected[0]), rel=1e-4)
    assert threshold["maximum"] == pytest.approx(float(maps[0].max()), rel=1e-4)
    assert "PatchCore baseline" in summary and f"{score:.4f}" in summary
    assert np.asarray(Image.open(overlay)).shape == (224, 224, 3)


def _huge_png() -> bytes:
    """A real small PNG whose IHDR (CRC fixed) claims 100000 x 100000 pixels."""
    png = bytearray(_example("xray_normal.png").read_bytes())
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _dicom_without_pixels(path: Path) -> Path:
    import pydicom

    dataset = pydicom.dcmread(_example("CT_small.dcm"))
    del dataset.PixelData
    dataset.save_as(path)
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("truncated.png", lambda p: p.write_bytes(_example("xray_normal.png").read_bytes()[:300]), "truncated"),
        ("notes.png", lambda p: p.write_text("these are not pixels\n" * 20), "not a"),
        ("huge.png", lambda p: p.write_bytes(_huge_png()), "pixels"),
        ("empty.dcm", _dicom_without_pixels, "pixel"),
    ],
)
def test_bad_uploads_give_a_readable_message_and_the_app_keeps_serving(app, tmp_path, name, make, expected):
    _, client, _, _ = app
    path = tmp_path / name
    make(path)
    message = _error_text(lambda: _classify(client, path))
    assert expected.lower() in message.lower(), message
    assert "Traceback" not in message
    label, _, _ = _classify(client, _example("ct_normal.png"))
    assert len(label["confidences"]) == 3


def test_training_job_outside_the_data_root_is_refused(app):
    _, client, _, _ = app
    message = _error_text(lambda: client.predict(
        "pradot", "synthetic", "/etc", 4, 1, 1, 1.0, 1.0, "lite", api_name="/submit_job"))
    assert "outside the data root" in message


def _job_row(client: Client, job_id: int) -> list:
    table = client.predict(api_name="/jobs")
    return next(row for row in table["data"] if int(row[0]) == job_id)


# The job tests assert outcomes, not speed: on a loaded 2-core machine one tiny PRADOT job (or the
# wait for its slot) can take minutes, so the deadline only guards against a job that never ends.
JOB_WAIT_S = 900


def _submit(client: Client, epochs: int) -> int:
    status = client.predict("pradot", "mvtec", "", 4, epochs, 0, 1.0, 1.0, "lite", api_name="/submit_job")
    return int(status.split()[1])


def test_training_job_finishes_and_its_model_is_listed(app):
    _, client, _, _ = app
    job_id = _submit(client, epochs=1)
    deadline = time.monotonic() + JOB_WAIT_S
    while (row := _job_row(client, job_id))[2] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    assert row[2] == "done", row
    assert row[7].endswith("model.safetensors")
    config = client.view_api(return_format="dict", print_info=False)
    assert config  # the API is still served
    from app.models import model_choices
    from medot.config import Settings

    home = app[0].home
    listed = model_choices(Settings(home=home, data_root=app[3], backbone="lite"), ("pradot",))
    assert row[7] in [path for _, path in listed]


def test_a_running_job_can_be_cancelled_and_resumed(app):
    _, client, _, _ = app
    job_id = _submit(client, epochs=500)
    deadline = time.monotonic() + JOB_WAIT_S
    while _job_row(client, job_id)[2] != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _job_row(client, job_id)[2] == "running"
    message = client.predict(job_id, api_name="/cancel_job")
    assert str(job_id) in message
    assert _job_row(client, job_id)[2] == "cancelled"
    resumed = client.predict(job_id, api_name="/resume_job")
    assert str(job_id) in resumed
    assert _job_row(client, job_id)[2] in ("queued", "running")
    client.predict(job_id, api_name="/cancel_job")
    assert _job_row(client, job_id)[2] == "cancelled"


def test_browser_classifies_an_upload(app):
    server = app[0]
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing on CI")
        pytest.skip(f"{CHROMIUM} is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.url)
            page.locator("#classify-upload input[type=file]").set_input_files(str(_example("ct_opacity.png")))
            page.wait_for_timeout(500)
            page.locator("#classify-button").click()
            page.locator("#probabilities").get_by_text("%").first.wait_for(timeout=60_000)
            text = page.locator("#probabilities").inner_text()
            page.screenshot(path=str(out / "app_classify.png"), full_page=True)
        finally:
            browser.close()
    percentages = [float(token.rstrip("%")) for token in text.split() if token.endswith("%")]
    assert {"normal", "nodule", "opacity"} <= set(text.split())
    assert sum(percentages) == pytest.approx(100.0, abs=1.5)


def test_job_registry_survives_the_app_dying(tmp_path):
    from medot.jobs import JobRegistry

    data_root = tmp_path / "data"
    (data_root / "mvtec").mkdir(parents=True)
    registry = JobRegistry(tmp_path / "jobs.sqlite3")
    job = registry.create("pradot", {"dataset": "synthetic", "epochs": 1}, tmp_path / "jobs")
    # a job the registry thinks is running, whose process died with the app
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from medot.jobs.processes import process_token

    registry.start_next(1, lambda record: (sleeper.pid, process_token(sleeper.pid)))
    sleeper.kill()
    sleeper.wait()
    server = AppServer(tmp_path, data_root)
    try:
        client = Client(server.url, verbose=False)
        assert _job_row(client, job.id)[2] == "interrupted"
        client.predict(job.id, api_name="/resume_job")
        assert registry.get(job.id).resume
    finally:
        server.kill()


def test_clicking_the_map_names_the_prototype_the_patch_was_matched_to(app):
    """The Anomaly tab's click handler, called in-process as Gradio calls it on a select event: the
    clicked pixel's patch and its matched prototype agree with PRADOT's own `matched_prototypes`."""
    from types import SimpleNamespace

    from app.anomaly import Detection, DetectorCache, matched_prototype
    from app.backbones import BackboneCache
    from medot.config import Settings

    server, _, model, data_root = app
    settings = Settings(home=server.home, data_root=data_root, backbone="lite")
    detectors = DetectorCache(BackboneCache(device="cpu"))
    detector = detectors.get(str(model), "lite")
    view = np.asarray(Image.open(_example("ct_nodule.png")).convert("RGB"), dtype=np.float32) / 255.0
    maps, scores = detector.predict([view])
    detection = Detection(str(model), view, maps[0].numpy(), float(scores[0]))
    size = detection.anomaly_map.shape[0]
    x, y = size - 1, 0  # top-right pixel -> patch (row 0, last column) of the 14x14 stride16 grid
    text = matched_prototype(detectors, settings, detection, 0, SimpleNamespace(index=(x, y)))
    match = detector.matched_prototypes([view], 0)
    patch = 13
    assert "patch (row 0, column 13) of the 14×14 grid" in text
    assert f"matched to prototype {int(match.index[0, patch])} " in text
    assert "Run the detection first" in matched_prototype(detectors, settings, None, 0, SimpleNamespace(index=(0, 0)))
