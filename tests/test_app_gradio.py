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
    from medot.methods.pradot.data import hold_out_normals, load_anomaly_splits
    from medot.methods.pradot.detector import save_pradot
    from medot.methods.pradot.evaluation import calibrate
    from medot.methods.pradot.patchcore import PatchCoreModel
    from medot.methods.pradot.patchcore_io import save_patchcore
    from medot.methods.pradot.training import build_model, encode_tokens, train_pradot

    import torch

    backbone = create_backbone("lite", device="cpu")
    config = PradotConfig(layers=("stride16",), alphas=(0.0, 0.3), n_prototypes=2, epochs=1, batch_size=8,
                          sinkhorn_iterations=20)
    splits = load_anomaly_splits(data_root / "mvtec", "phantom")
    train, held_out = hold_out_normals(splits.train, 0.25)
    tokens, grids = encode_tokens(backbone, train, config.layers, progress=False)
    held_tokens, _ = encode_tokens(backbone, held_out, config.layers, progress=False)
    model = build_model(config, tokens, grids)
    train_pradot(model, tokens, config, progress=False)
    baseline = PatchCoreModel(config.layers, grids, PatchCoreConfig())
    baseline.fit(tokens)
    size = (backbone.preprocess.image_size,) * 2
    domain = {"dataset": str(data_root / "mvtec"), "class": "phantom", "train_images": len(train)}
    save_patchcore(out / "patchcore", baseline, backbone="lite", image_size=size[0], training=domain,
                   calibration=calibrate(lambda t: baseline(t, size), held_tokens, torch.device("cpu")))
    model.eval()
    return save_pradot(out / "model", model, backbone="lite", image_size=size[0], config=config, training=domain,
                       calibration=calibrate(lambda t: model(t, size), held_tokens, torch.device("cpu")))


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
    return client.predict(handle_file(str(path)), LABELS, "lite", "zero-shot", "high",
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


def _model_id(model: Path) -> str:
    """What the model dropdowns offer and the API takes: the checkpoint relative to MEDOT_HOME."""
    return model.relative_to(model.parents[2]).as_posix()  # <home>/models/<name>/<file>


def _detect(client: Client, image: Path, model: Path, threshold: float = 1.0):
    return client.predict(handle_file(str(image)), _model_id(model), 0.5, threshold, api_name="/detect_anomalies")


def test_the_pages_model_choices_are_ids_relative_to_medot_home(app):
    """Every model dropdown's values (what the API's ``model`` takes) are ids relative to MEDOT_HOME:
    neither the page's config nor the API description holds a server path of MEDOT_HOME."""
    import json

    server, client, model, _ = app
    values = [choice[1] for component in client.config["components"] if component.get("type") == "dropdown"
              for choice in component.get("props", {}).get("choices") or [] if isinstance(choice[1], str)]
    assert _model_id(model) in values  # the PRADOT list (PatchCore's appears when the Method radio says so)
    assert not any(Path(value).is_absolute() for value in values), values
    assert str(server.home) not in json.dumps(client.config)
    assert str(server.home) not in json.dumps(client.view_api(return_format="dict", print_info=False))


@pytest.mark.parametrize("kind", ["model", "patchcore"])
def test_anomaly_tab_shows_the_libraries_calibrated_score_and_verdict(app, kind):
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image
    from medot.methods.pradot.patchcore_io import load_anomaly_detector

    _, client, model, data_root = app
    path = model.with_name(f"{kind}.safetensors")
    detector = load_anomaly_detector(path)
    calibration = detector.calibration
    assert calibration is not None
    for image in sorted((data_root / "mvtec" / "phantom" / "test").rglob("*.png"))[-2:]:
        panel, score, verdict, summary, prototype = _detect(client, image, path)
        maps, expected = detector.predict([view_image(detector.backbone, read_image(image).rgb())])
        # the app shows the score to 4 decimals (gr.Number precision=4)
        assert float(expected[0]) == pytest.approx(float(maps[0].max()), rel=1e-6)
        assert score == pytest.approx(float(expected[0]), abs=5.1e-5)
        word = calibration.verdict(float(expected[0])).capitalize()
        assert verdict.startswith(f"### {word}\n")
        assert f"{calibration.percentile(float(expected[0])):.0f}th percentile among normal images" in verdict
        assert "99th" in verdict and prototype == ""
        assert "normal images of **phantom**" in summary
        if kind == "patchcore":
            assert "PatchCore baseline" in summary
        picture = np.asarray(Image.open(panel))
        assert picture.shape[0] == 224 and picture.shape[1] > 2 * 224  # image | overlay | colour bar
        np.testing.assert_allclose(picture[:, :224] / 255.0, view_image(detector.backbone, read_image(image).rgb()),
                                   atol=1 / 255 + 1e-6)  # the original beside the overlay


def test_anomaly_threshold_outlines_the_calibrated_region(app):
    """The outline follows the slider in units of the normals' 99th pixel percentile."""
    from app.anomaly import Detection, render
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image
    from medot.methods.pradot.patchcore_io import load_anomaly_detector
    from medot.viz.anomaly_panel import GAP

    _, _, model, data_root = app
    detector = load_anomaly_detector(model)
    image = sorted((data_root / "mvtec" / "phantom" / "test").rglob("*.png"))[-1]
    view = view_image(detector.backbone, read_image(image).rgb())
    maps, scores = detector.predict([view])
    detection = Detection(_model_id(model), view, maps[0].numpy(), float(scores[0]), detector.calibration.pixel_threshold,
                          True)
    low = float(np.quantile(detection.scaled_map, 0.5))
    outlined = render(detection, 0.5, low)[:, 224 + GAP : 2 * 224 + GAP]
    cyan = (outlined == np.array([0, 255, 255])).all(-1)
    assert cyan.any()
    assert detection.scaled_map[cyan].min() >= low  # the outline is the inner boundary of {map >= threshold}


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


def test_variant_options_are_checked_before_a_job_is_queued(app):
    """The CLI's variant options through the app's API: a bad value or a path outside the data root is
    refused with a one-line message, and nothing is queued."""
    _, client, _, _ = app
    before = len(client.predict(api_name="/jobs")["data"])
    stages = _error_text(lambda: client.predict("optiml", "synthetic", "", 4, 1, 1, 1.0, 1.0, "auto", "optiml",
                                                stages="3", api_name="/submit_job"))
    assert "stages must include 4" in stages and "\n" not in stages
    outside = _error_text(lambda: client.predict("kmat", "synthetic", "", 4, 1, 1, 1.0, 1.0, "auto", "kmat",
                                                 descriptions="/etc/passwd", api_name="/submit_job"))
    assert "outside the data root" in outside
    weight = _error_text(lambda: client.predict("kmat", "synthetic", "", 4, 1, 1, 1.0, 1.0, "auto", "kgcoop",
                                                kgcoop_lambda=-2, api_name="/submit_job"))
    assert "kgcoop_lambda must be at least 0" in weight
    assert len(client.predict(api_name="/jobs")["data"]) == before


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
    while (row := _job_row(client, job_id))[2] in ("queued", "running", "evaluating") and time.monotonic() < deadline:
        time.sleep(1)
    assert row[2] == "done", row
    assert row[7] == f"jobs/{job_id}/model.safetensors"  # relative to MEDOT_HOME, not the server's layout
    import json

    import torch

    home = app[0].home
    meta = json.loads((home / row[7]).with_suffix(".json").read_text())
    # the app's job, without a GPU: the CPU preset, one stride16 layer, trained on the normals not held out
    assert meta["training"]["preset"] == "auto" and meta["training"]["status"] == "completed"
    if not torch.cuda.is_available():
        assert meta["layers"] == ["stride16"] and meta["hyperparameters"]["n_prototypes"] == 4
    assert meta["training"]["train_images"] + meta["training"]["held_out_normals"] == 4
    assert len(meta["calibration"]["image_scores"]) == meta["training"]["held_out_normals"]
    assert 0.0 <= meta["metrics"]["image_auroc"] <= 1.0
    config = client.view_api(return_format="dict", print_info=False)
    assert config  # the API is still served
    from app.models import model_choices
    from medot.config import Settings

    listed = model_choices(Settings(home=home, data_root=app[3], backbone="lite"), ("pradot",))
    assert row[7] in [value for _, value in listed]  # the same id as the jobs table's


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
            # the component's own label mentions "%" too: wait for a class name, which only a result shows
            page.locator("#probabilities").get_by_text("opacity").first.wait_for(timeout=120_000)
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
    session = "restarted-app-session"  # a gradio_client session survives an app restart (its hash is its own)
    job = registry.create("pradot", {"dataset": "synthetic", "epochs": 1}, tmp_path / "jobs", owner=f"session:{session}")
    # a job the registry thinks is running, whose process died with the app
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from medot.jobs.processes import process_token

    registry.start_next(1, lambda record: (sleeper.pid, process_token(sleeper.pid)))
    sleeper.kill()
    sleeper.wait()
    server = AppServer(tmp_path, data_root)
    try:
        client = Client(server.url, verbose=False)
        client.session_hash = session
        assert _job_row(client, job.id)[2] == "interrupted"
        assert "launched by someone else" in _error_text(
            lambda: Client(server.url, verbose=False).predict(job.id, api_name="/resume_job"))
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
    detection = Detection(_model_id(model), view, maps[0].numpy(), float(scores[0]))
    size = detection.anomaly_map.shape[0]
    x, y = size - 1, 0  # top-right pixel -> patch (row 0, last column) of the 14x14 stride16 grid
    text = matched_prototype(detectors, settings, detection, 0, SimpleNamespace(index=(x, y)))
    match = detector.matched_prototypes([view], 0)
    patch = 13
    assert "patch (row 0, column 13) of the 14×14 grid" in text
    assert f"matched to prototype {int(match.index[0, patch])} " in text
    assert "Run the detection first" in matched_prototype(detectors, settings, None, 0, SimpleNamespace(index=(0, 0)))


def test_a_finished_job_shows_a_result_card_with_chance_levels(app):
    import json

    from medot.checkpoint import checkpoint_paths

    _, client, _, _ = app
    done = next(row for row in client.predict(api_name="/jobs")["data"] if row[2] == "done" and row[7])
    status, _, _ = client.predict(int(done[0]), api_name="/job_detail")
    meta = json.loads(checkpoint_paths(app[0].home / done[7])[1].read_text())
    assert f"### Result of job {done[0]}: pradot" in status
    assert f"| image AUROC | {meta['metrics']['image_auroc']:.3f} | 0.500 |" in status
    assert f"| AU-PRO up to FPR 0.3 | {meta['metrics']['au_pro@0.3']:.3f} | 0.150 |" in status
    assert f"**Model:** `{done[7]}`" in status


def test_a_cancelled_pradot_job_says_resume_starts_over_and_cancel_answers_at_once(app):
    _, client, _, _ = app
    job_id = _submit(client, epochs=500)
    deadline = time.monotonic() + JOB_WAIT_S
    while _job_row(client, job_id)[2] != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    client.predict(job_id, api_name="/cancel_job")
    status, _, _ = client.predict(job_id, api_name="/job_detail")
    assert "**cancelled**" in status and "PRADOT keeps no optimiser state" in status
    assert "continues from its last saved" not in status
    dependencies = client.config["dependencies"]
    stop = next(d for d in dependencies if d.get("api_name") == "cancel_job")
    notice = next(d for d in dependencies if d["id"] == stop["trigger_after"])
    assert notice["queue"] is False and notice["outputs"] == stop["outputs"]  # the message comes first, unqueued


def test_a_zipped_dataset_is_imported_into_the_data_root(app, tmp_path):
    import zipfile

    _, client, _, data_root = app
    png = _example("ct_normal.png").read_bytes()
    archive = tmp_path / "uploaded.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("cls_a/0.png", "cls_a/1.png", "cls_b/0.png", "cls_b/1.png"):
            bundle.writestr(f"uploaded/{name}", png)
    message, dataset = client.predict(handle_file(str(archive)), "", "pradot", api_name="/import_dataset")
    assert "Imported `uploaded` (class folders: cls_a, cls_b)" in message
    assert dataset["value"] == "uploaded" and (data_root / "uploaded" / "cls_b" / "1.png").read_bytes() == png
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../escape.png", png)
    assert "points outside the archive" in _error_text(
        lambda: client.predict(handle_file(str(archive)), "other", "pradot", api_name="/import_dataset"))
    assert not (data_root / "other").exists() and not (data_root.parent / "escape.png").exists()
