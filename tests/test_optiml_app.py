"""The app's Dense correspondences view through its HTTP API (gradio_client), against a live server
with a tiny pretrained OPTiML model in its models folder: the figures it reports are those of
:func:`medot.methods.optiml.correspondence.dense_correspondences` on the same image and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import AppServer  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from medot.data.synthetic import write_pretraining_set
    from medot.methods.optiml.config import OptimlConfig
    from medot.methods.optiml.data import ImagePool
    from medot.methods.optiml.runner import PretrainRun, pretrain

    home = tmp_path_factory.mktemp("optiml_app_home")
    data = write_pretraining_set(tmp_path_factory.mktemp("optiml_app_data"), n_pool=6, n_per_class=4, size=40,
                                 progress=False)
    config = OptimlConfig(encoder="tiny", image_size=32, projector=(32, 32, 32))
    run = PretrainRun(epochs=1, batch_size=3, lr=1.0, warmup_epochs=0, device="cpu", progress=False)
    out = home / "models" / "optiml" / "tiny"
    pretrain(ImagePool.from_folder(data.pool, load_size=36), config, run, out)  # before start: lists are built then
    server = AppServer(home, data.root)
    try:
        yield Client(server.url, verbose=False), out / "model.safetensors"
    finally:
        server.kill()


def test_dense_correspondences_view_reports_the_library_figures(served):
    from medot.checkpoint import load_checkpoint
    from medot.data.examples import example_images
    from medot.data.io import read_image
    from medot.methods.optiml.correspondence import dense_correspondences
    from medot.methods.optiml.task import load_task

    client, model = served
    image = next(path for path in example_images() if path.suffix == ".png")
    plot, summary = client.predict(handle_file(str(image)), "models/optiml/tiny/model.safetensors", 3, 5,
                                   api_name="/dense_correspondences")  # the id the list offers
    checkpoint = load_checkpoint(model)
    expected = dense_correspondences(load_task(checkpoint.tensors, checkpoint.meta).model, read_image(image).pixels,
                                     seed=3, top_k=5)
    assert f"OT {expected.agree_ot:.3f}, nearest neighbour {expected.agree_nn:.3f}" in summary
    assert "optiml** (tiny encoder), token grid 4×4" in summary
    assert plot is not None


def test_dense_correspondences_refuses_a_file_that_is_not_a_listed_model(served, tmp_path):
    from medot.data.examples import example_images

    client, _ = served
    image = next(path for path in example_images() if path.suffix == ".png")
    with pytest.raises(Exception, match="choose a model from the list"):
        client.predict(handle_file(str(image)), str(tmp_path / "x.safetensors"), 0, 5, api_name="/dense_correspondences")


def test_classify_tab_predicts_with_a_saved_probe_classifier(tmp_path):
    """``medot eval linear --save-models`` writes classifiers the Classify tab's handler lists and
    runs: probabilities over the classifier's own classes, equal to the library's."""
    from app.classify import PredictorCache, classifier_choices, classify
    from medot.cli import main
    from medot.config import Settings
    from medot.data.io import read_image
    from medot.methods.optiml.classifier import ProbeClassifier
    from test_optiml_run import _write_separable

    data = _write_separable(tmp_path / "sep", n_train=10)
    home = tmp_path / "home"
    settings = Settings(home=home, data_root=tmp_path, backbone="lite")
    assert main(["eval", "linear", "--encoder", "tiny", "--data", str(data), "--fractions", "100", "--seeds", "1",
                 "--epochs", "10", "--image-size", "32", "--save-models", "--out", str(home / "models" / "probe"),
                 "--quiet"]) == 0
    choices = dict((value, label) for label, value in classifier_choices(settings))
    saved = [path for path in choices if path.endswith("linear-100pct-seed1.safetensors")]
    assert len(saved) == 1 and "linear-probe" in choices[saved[0]]
    assert not Path(saved[0]).is_absolute() and (home / saved[0]).is_file()  # an id relative to MEDOT_HOME
    image = sorted((data / "test" / "textured").glob("*.png"))[0]
    probabilities, view, info = classify(None, PredictorCache(None), settings, str(image), "", "lite", saved[0], "")
    assert set(probabilities) == {"flat", "textured"}
    expected = ProbeClassifier(home / saved[0]).predict_proba([read_image(image).pixels])[0]
    assert probabilities["textured"] == pytest.approx(float(expected[1]), abs=1e-6)
    assert "linear-probe classifier on encoder tiny" in info


def test_embedding_maps_handler_draws_two_maps_and_confines_the_folder(served, tmp_path):
    import gradio as gr

    from app.correspondence import embedding_maps
    from medot.config import Settings

    _, model = served
    home = model.parents[3]
    settings = Settings(home=home, data_root=tmp_path, backbone="lite")
    from medot.data.synthetic import write_pretraining_set

    write_pretraining_set(tmp_path / "probe", n_pool=2, n_per_class=4, size=40, progress=False)
    before, after = embedding_maps(settings, model.relative_to(home).as_posix(), "probe/labelled", "tsne")
    assert "Before" in before.layout.title.text and "After" in after.layout.title.text
    with pytest.raises(gr.Error, match="outside the data root"):
        embedding_maps(settings, str(model), "/etc", "tsne")
