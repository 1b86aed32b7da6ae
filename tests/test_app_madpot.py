"""The Anomaly tab with MADPOT through the app's HTTP API (gradio_client): a trained MADPOT model's
map and score, the zero-shot map for a typed object name, and the partial-OT assignment view, each
equal to what the library computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import AppServer  # noqa: E402


def _train_tiny_madpot(data_root: Path, out: Path) -> Path:
    from medot.backbones import create_backbone
    from medot.methods.madpot.config import MadpotConfig
    from medot.methods.madpot.detector import save_madpot
    from medot.methods.madpot.runner import train_few_shot

    backbone = create_backbone("lite", device="cpu")
    config = MadpotConfig(layers=("stride16",), n_prompts=2, views=2, epochs=1, batch_size=4, ot_iterations=30)
    fitted, _, _ = train_few_shot("madpot", backbone, [(data_root / "mvfa", "Retina")], config, shots=2,
                                  progress=False, log=lambda _: None)
    return save_madpot(out / "model", fitted.model, backbone="lite", image_size=backbone.preprocess.image_size)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from medot.data.synthetic import write_synthetic_benchmark

    home = tmp_path_factory.mktemp("app_home")
    data_root = tmp_path_factory.mktemp("app_data")
    write_synthetic_benchmark(data_root, size=64, n_per_class=4, progress=False)
    model = _train_tiny_madpot(data_root, home / "models" / "madpot-retina")
    server = AppServer(home, data_root)
    try:
        yield server, model, data_root
    finally:
        server.kill()


def _view(detector, image_path):
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image

    return view_image(detector.backbone, read_image(image_path).rgb())


def test_trained_madpot_map_and_assignment_equal_the_librarys(app):
    from medot.methods.madpot.detector import load_madpot
    from medot.methods.madpot.viz import assignment_image, assignment_summary

    server, model, data_root = app
    client = Client(server.url, verbose=False)
    image = sorted((data_root / "mvfa" / "Retina_AD" / "test" / "Ungood" / "img").glob("*.png"))[0]
    overlay, score, _, summary, _ = client.predict(
        handle_file(str(image)), model.relative_to(server.home).as_posix(), 0.5, 1.0, api_name="/detect_anomalies"
    )
    detector = load_madpot(model)
    view = _view(detector, image)
    maps, expected = detector.predict([view])
    assert score == pytest.approx(float(expected[0]), rel=1e-4)
    assert "MADPOT for retinal OCT" in summary and maps.shape == (1, 224, 224)
    picture, line = client.predict("", api_name="/madpot_assignment")
    found = detector.assignments([view])
    expected_picture = assignment_image(found["prompt"][0], found["mass"][0], found["grid"], 2, view.shape[0])
    np.testing.assert_array_equal(np.asarray(Image.open(picture).convert("RGB")), expected_picture)
    assert line.endswith(assignment_summary(found["prompt"][0], found["mass"][0], 2))


def test_zero_shot_map_for_a_typed_object_equals_the_librarys(app):
    from medot.backbones import create_backbone
    from medot.methods.madpot.detector import zero_shot_detector

    server, _, data_root = app
    client = Client(server.url, verbose=False)
    image = sorted((data_root / "mvfa" / "Histo_AD" / "test" / "Ungood" / "img").glob("*.png"))[0]
    overlay, score, _, summary, _ = client.predict(
        handle_file(str(image)), "histopathology image", 0.5, 1.0, api_name="/zero_shot_anomalies"
    )
    detector = zero_shot_detector(create_backbone("lite", device="cpu"), "histopathology image")
    maps, expected = detector.predict([_view(detector, image)])
    assert score == pytest.approx(float(expected[0]), rel=1e-4) == pytest.approx(float(maps[0].max()), rel=1e-4)
    assert "histopathology image" in summary and np.asarray(Image.open(overlay)).shape[0] == 224
    fresh = Client(server.url, verbose=False)  # the threshold slider's range is per session
    with pytest.raises(Exception) as raised:
        fresh.predict(handle_file(str(image)), "  ", 0.5, 1.0, api_name="/zero_shot_anomalies")
    assert "object name" in str(raised.value), str(raised.value)


def test_train_tab_passes_madpot_abnormal_shots_under_the_data_root_only(app):
    """MVTec AD data (normal-only training) in a MADPOT job from the Train tab: a folder of abnormal
    shots outside the data root is refused before queuing; one under it reaches the job's command."""
    import shutil
    import time

    server, _, data_root = app
    client = Client(server.url, verbose=False)
    form = ("madpot", "mvtec", "", 1, 1, 1, 1.0, 1.0, "lite", "madpot")
    before = len(client.predict(api_name="/jobs")["data"])
    for folder in ("/etc", "../", "mvtec/phantom/test/nodule"):
        with pytest.raises(Exception) as refused:
            client.predict(*form, obj="phantom", abnormal_shots=folder, api_name="/submit_job")
        expected = "inside the test split" if "test" in folder else "outside the data root"
        assert expected in str(refused.value), str(refused.value)
    assert len(client.predict(api_name="/jobs")["data"]) == before  # nothing was queued
    shots = data_root / "phantom-defects"
    shots.mkdir()
    for image in sorted((data_root / "mvtec" / "phantom" / "test" / "nodule").glob("*.png"))[:2]:
        shutil.copy(image, shots / image.name)
    message = client.predict(*form, obj="phantom", abnormal_shots="phantom-defects", api_name="/submit_job")
    job_id = int(message.split()[1])
    deadline, log = time.monotonic() + 120, ""
    while "--abnormal-shots" not in log and time.monotonic() < deadline:
        status, log, _ = client.predict(job_id, api_name="/job_detail")
        time.sleep(0.5)
    command = next(line for line in log.splitlines() if line.startswith(f"=== medot job {job_id}"))
    assert "train madpot" in command and "--abnormal-shots=" in command and command.count("phantom-defects") == 1
    assert "--abnormal-shots phantom-defects" in status and str(data_root) not in status + command
    client.predict(job_id, api_name="/cancel_job")  # the command line was the point, not the training


def test_the_zero_shot_button_sits_with_the_detect_button_beside_the_map_it_fills(tmp_path):
    """The zero-shot button sat in an accordion at the foot of the Anomaly tab while its map and score
    appear at the top right: it now sits in the controls column right under "Detect anomalies",
    beside the results column (no tall component between the two buttons), outside any accordion."""
    import gradio as gr

    from app.anomaly import build_anomaly_tab
    from app.backbones import BackboneCache
    from medot.config import Settings

    with gr.Blocks() as page:
        build_anomaly_tab(BackboneCache(), Settings(home=tmp_path, data_root=tmp_path, backbone="lite"))

    def find(kind, test):
        return next(b for b in page.blocks.values() if isinstance(b, kind) and test(b))

    def ancestors(block):
        while block.parent is not None:
            block = block.parent
            yield block

    zero = find(gr.Button, lambda b: b.value == "Zero-shot map")
    detect = find(gr.Button, lambda b: b.value == "Detect anomalies")
    panel = find(gr.Image, lambda b: b.elem_id == "anomaly-panel")
    column = next(a for a in ancestors(detect) if isinstance(a, gr.Column))
    assert column in list(ancestors(zero)) and not any(isinstance(a, gr.Accordion) for a in ancestors(zero))
    results = next(a for a in ancestors(panel) if isinstance(a, gr.Column))
    assert column.parent is results.parent and isinstance(column.parent, gr.Row)  # controls | results
    def place(block):  # which of the column's children holds ``block``
        return next(i for i, child in enumerate(column.children) if child is block or block in _descendants(child))

    assert place(zero) == place(detect) + 1  # the zero-shot field and button come right after "Detect anomalies"


def _descendants(block):
    for child in getattr(block, "children", []):
        yield child
        yield from _descendants(child)
