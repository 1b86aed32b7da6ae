"""The first screen and the model lists, against a live ``python app.py`` (gradio_client): lists
filled on page load and by each tab's refresh button (models written after the app started), the
header (description, intended use, disclaimer, backbone line; download recipes folded), the About
tab's papers, and the example gallery's neutral names."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from app_server import AppServer  # noqa: E402
from kmat_checkpoint import write_artefacts_checkpoint  # noqa: E402

MODEL_LISTS = ("classify-model", "manifold-model", "manifold-second", "coupling-model", "anomaly-model",
               "correspondence-model")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    home, data_root = tmp_path_factory.mktemp("first_home"), tmp_path_factory.mktemp("first_data")
    server = AppServer(home, data_root)  # no model yet: every list starts empty
    try:
        client = Client(server.url, verbose=False)
        yield server, client
    finally:
        server.kill()


def _components(client: Client) -> dict[int, dict]:
    return {component["id"]: component for component in client.config["components"]}


def _by_elem_id(client: Client, elem_id: str) -> dict:
    return next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def _values(update) -> list:
    """The choice values of a dropdown update as gradio_client returns it."""
    return [choice[1] for choice in update["choices"]] if isinstance(update, dict) else update


def test_every_model_list_is_filled_on_page_load_with_models_written_after_start(live):
    server, client = live
    write_artefacts_checkpoint(server.home / "models" / "late" / "model")
    model = "models/late/model.safetensors"  # the lists offer ids relative to MEDOT_HOME, not server paths
    ids = {_by_elem_id(client, elem_id)["id"]: elem_id for elem_id in MODEL_LISTS}
    on_load = [d for d in client.config["dependencies"] if any(t[1] == "load" for t in d["targets"])]
    filled = {ids[i] for d in on_load for i in d["outputs"] if i in ids}
    assert filled == set(MODEL_LISTS)
    (fill,) = [d for d in on_load if d.get("api_name") == "model_lists"]
    order = [ids[i] for i in fill["inputs"]]
    current = {"classify-model": "zero-shot", "manifold-second": ""}
    lists = dict(zip(order, client.predict(*[current.get(name) for name in order], api_name="/model_lists"),
                     strict=True))
    classify, first, second, coupling, anomaly = (lists[name] for name in MODEL_LISTS[:5])
    assert model in _values(classify) and "zero-shot" in _values(classify)
    assert model in _values(first) and model in _values(coupling)
    assert "" in _values(second) and model in _values(second)
    assert model not in _values(anomaly) and model not in _values(lists["correspondence-model"])  # other kinds
    assert (classify["value"], first["value"], second["value"]) == ("zero-shot", model, "")
    # no list offers a server path (the values are what the API's ``model`` takes)
    assert not any(value.startswith("/") or str(server.home) in value for update in lists.values()
                   for value in _values(update) if isinstance(value, str))


@pytest.mark.parametrize(("endpoint", "inputs"), [
    ("/refresh_classify_models", ("zero-shot",)),
    ("/refresh_manifold_models", (None, "")),
    ("/refresh_coupling_models", (None,)),
])
def test_each_tab_has_a_refresh_button_that_lists_new_models(live, endpoint, inputs):
    server, client = live
    name = f"refresh{endpoint.replace('/', '-')}"
    write_artefacts_checkpoint(server.home / "models" / name / "model")
    model = f"models/{name}/model.safetensors"
    refreshed = client.predict(*inputs, api_name=endpoint)
    first = refreshed[0] if isinstance(refreshed, (tuple, list)) else refreshed
    assert model in _values(first)


def test_first_screen_describes_medot_and_folds_the_download_recipe(live):
    _, client = live
    header = _by_elem_id(client, "medot-header")["props"]["value"]
    assert "Not a medical device" in header and "Intended use" in header
    assert "**Backbone in use:** lite" in header and "not a clinical model" in header
    assert "Download these files" not in header and "huggingface.co" not in header
    accordion = _by_elem_id(client, "backbone-recipes")["props"]
    assert accordion["open"] is False
    about = _by_elem_id(client, "about")["props"]["value"]
    for arxiv in ("2603.06340", "2508.12927", "2507.06733", "2404.11868"):
        assert f"arXiv:{arxiv}" in about


def test_examples_are_a_thumbnail_gallery_whose_names_do_not_give_the_class_away(live):
    from app.examples import gallery_examples
    from medot.data.examples import example_images
    from medot.data.synthetic import LESION_CLASSES

    _, client = live
    galleries = [c for c in client.config["components"] if c["type"] == "gallery"]
    assert galleries
    for gallery in galleries:
        captions = [item["caption"] for item in gallery["props"]["value"]]
        assert len(captions) == len(example_images())
        assert not any(lesion in caption.lower() for caption in captions for lesion in LESION_CLASSES)
    for example in gallery_examples():  # what a click loads: the same bytes under a neutral name
        assert example.file.read_bytes() == example.source.read_bytes()
        assert not any(lesion in example.file.name for lesion in LESION_CLASSES)


def _dicom_with_modality(path, modality: str):
    import pydicom
    from pydicom.data import get_testdata_file

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.Modality = modality
    dataset.save_as(path)
    return str(path)


def test_modality_radio_names_the_models_modalities_and_follows_the_dicom_tag(live, tmp_path):
    """The Classify tab's input handler, as Gradio calls it on a model or upload change."""
    from app.classify import ZERO_SHOT, shown_inputs
    from medot.config import Settings

    server, _ = live
    settings = Settings(home=server.home, data_root=tmp_path, backbone="lite")
    model = str(write_artefacts_checkpoint(server.home / "models" / "modality" / "model"))  # ct / xray
    labels, backbone, radio = shown_inputs(settings, ZERO_SHOT, None, "high")
    assert (labels["visible"], backbone["visible"], radio["visible"]) == (True, True, False)
    labels, backbone, radio = shown_inputs(settings, model, _dicom_with_modality(tmp_path / "a.dcm", "DX"), "high")
    assert (labels["visible"], backbone["visible"], radio["visible"]) == (False, False, True)
    assert radio["choices"] == [("CT", "high"), ("X-ray", "low")] and radio["value"] == "low"
    assert shown_inputs(settings, model, _dicom_with_modality(tmp_path / "b.dcm", "CT"), "low")[2]["value"] == "high"
    assert shown_inputs(settings, model, _dicom_with_modality(tmp_path / "c.dcm", "MR"), "low")[2]["value"] == "low"


def test_dicom_viewer_shows_the_full_image_its_metadata_presets_and_frames(live, tmp_path):
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    from medot.data.io import read_image
    from medot.data.windows import CT_PRESETS
    from test_dicom_view import write_multiframe_ct

    _, client = live
    path = write_multiframe_ct(tmp_path / "multi.dcm")
    full, table, presets, frame = client.predict(handle_file(str(path)), "file's own", 0, api_name="/view_upload")
    assert np.asarray(Image.open(full)).shape[:2] == (128, 128)  # the whole file, not the 224-px crop
    assert "| Modality | CT |" in table and "| Rescale (slope, intercept) | 1, -1024 |" in table
    assert "| Frame | 2 of 3 |" in table
    assert [choice[1] for choice in presets["choices"]] == ["file's own", "lung", "mediastinum", "bone"]
    assert (frame["visible"], frame["maximum"], frame["value"]) == (True, 2, 1)
    full, table, _, _ = client.predict(handle_file(str(path)), "lung", 2, api_name="/view_window")
    expected = read_image(path, frame=2, window=CT_PRESETS["lung"]).pixels
    shown = np.asarray(Image.open(full).convert("L"), dtype=np.float64) / 255
    np.testing.assert_allclose(shown, expected, atol=1 / 255 + 1e-6)
    assert "| Window applied (centre / width) | -600 / 1500 (chosen) |" in table and "| Frame | 3 of 3 |" in table


def test_classify_reads_the_frame_and_window_chosen_in_the_viewer(live, tmp_path):
    from gradio_client import handle_file

    from medot.backbones import create_backbone
    from medot.data.io import read_image
    from medot.data.windows import CT_PRESETS
    from medot.zeroshot import zero_shot_probabilities
    from test_dicom_view import write_multiframe_ct

    _, client = live
    path = write_multiframe_ct(tmp_path / "multi.dcm")
    labels = ["normal lung", "nodule", "bone"]
    label, _, _ = client.predict(handle_file(str(path)), ", ".join(labels), "lite", "zero-shot", "high", "bone", 0,
                                 api_name="/classify")
    image = read_image(path, frame=0, window=CT_PRESETS["bone"])
    expected = zero_shot_probabilities(create_backbone("lite", device="cpu"), [image], labels)[0].tolist()
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    for name, probability in zip(labels, expected, strict=True):
        assert confidences[name] == pytest.approx(probability, abs=1e-4)


def test_browser_first_load_lists_a_model_written_after_start_and_screenshots(live, tmp_path):
    """In headless Chromium: a fresh page's FGW-coupling list holds a model written after the app
    started; screenshots of every tab go to test-output/ for a person to read."""
    import os
    from pathlib import Path

    from app_server import REPO

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{chromium} is missing on CI")
        pytest.skip(f"{chromium} is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    from medot.data.examples import example_images

    server, _ = live
    model = write_artefacts_checkpoint(server.home / "models" / "browser-late" / "model", dim=16)
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server.url)
            page.get_by_role("tab", name="FGW coupling").click()
            page.locator("#coupling-model input").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => { const i = document.querySelector('#coupling-model input'); return i && i.value.length > 0; }",
                timeout=60_000)
            shown = page.locator("#coupling-model input").first.input_value()
            page.get_by_role("button", name="Draw the coupling").click()
            page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "app_coupling.png"), full_page=True)
            page.get_by_role("tab", name="Prompt manifolds").click()
            page.get_by_role("button", name="Draw the manifold").click()
            page.locator(".js-plotly-plot").nth(0).wait_for(timeout=120_000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / "app_manifold.png"), full_page=True)
            page.get_by_role("tab", name="Classify").click()
            dicom = next(path for path in example_images() if path.suffix == ".dcm")
            page.locator("#classify-upload input[type=file]").set_input_files(str(dicom))
            page.locator("#viewer-metadata").get_by_text("Modality").wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "app_first_screen_dicom.png"), full_page=True)
            page.get_by_role("tab", name="Train").click()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "app_train.png"), full_page=True)
            page.get_by_role("tab", name="About").click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(out / "app_about.png"), full_page=True)
        finally:
            browser.close()
    assert "browser-late" in shown  # the newest model, listed on a page loaded after it was written
    del model
