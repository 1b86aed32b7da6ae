"""OPTiML end to end on tiny data: a short pretraining run (loss falls, no collapse), the checkpoint
round trip, the exported encoder as an ``encoder:PATH`` backbone (identical features, PRADOT on it,
refused where text is needed), the linear probe on separable data and its leakage guard, CLI errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medot.backbones import create_backbone
from medot.checkpoint import load_checkpoint
from medot.cli import main
from medot.data.synthetic import write_pretraining_set
from medot.errors import BackboneUnavailableError
from medot.eval.probe import ProbeRun, label_fraction, load_labelled_splits, run_probe
from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.data import ImagePool, view_pair
from medot.methods.optiml.encoder import load_encoder
from medot.methods.optiml.runner import PretrainRun, pretrain
from medot.methods.optiml.task import load_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
CONFIG = OptimlConfig(encoder="tiny", image_size=SIZE, projector=(32, 32, 32))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_pretraining_set(tmp_path_factory.mktemp("optiml_syn"), n_pool=12, n_per_class=4, size=48, progress=False)


@pytest.fixture(scope="module")
def pretrained(synthetic, tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("optiml_out")
    pool = ImagePool.from_folder(synthetic.pool, load_size=36)
    run = PretrainRun(epochs=6, batch_size=6, lr=1.0, warmup_epochs=0, seed=0, device="cpu", progress=False)
    return pool, out, pretrain(pool, CONFIG, run, out)


def _dense_tokens(task, pool):
    batch = [torch.stack(parts) for parts in zip(*(view_pair(pool[i], SIZE, 9, 0, i) for i in range(len(pool))))]
    model = task.model.eval()
    with torch.no_grad():
        tokens = model.encoder(model.encoder.normalize(batch[0])).flatten(2).transpose(1, 2)
        return model.dense_projector(tokens).reshape(-1, CONFIG.projector[-1])


def test_short_pretraining_lowers_the_loss_without_collapse(pretrained):
    pool, out, result = pretrained
    history = result.result.history
    assert result.result.status == "completed" and len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"ot", "var", "cov", "agree_ot", "agree_nn"} <= set(history[-1])
    assert 0.0 <= history[-1]["agree_ot"] <= 1.0
    std = _dense_tokens(result.task, pool).std(dim=0)
    assert std.min().item() > 0.05, "a projected dimension collapsed"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["method"] == "optiml" and len(summary["history"]) == 6


def test_model_checkpoint_round_trip_gives_identical_outputs(pretrained):
    pool, out, result = pretrained
    checkpoint = load_checkpoint(out / "model")
    assert checkpoint.meta["method"] == "optiml" and checkpoint.meta["optiml"]["encoder"] == "tiny"
    loaded = load_task(checkpoint.tensors, checkpoint.meta)
    torch.testing.assert_close(_dense_tokens(loaded, pool), _dense_tokens(result.task, pool), rtol=0, atol=0)


def test_encoder_checkpoint_is_an_image_backbone_with_identical_features(pretrained, synthetic):
    pool, out, result = pretrained
    backbone = create_backbone(f"encoder:{out / 'encoder'}", device="cpu", image_only=True)
    assert backbone.name == f"encoder:{out / 'encoder'}" and backbone.feature_layers == ("stride8", "dense")
    images = torch.rand(3, 3, SIZE, SIZE)
    features = backbone.encode_image(images, layers=("stride8",))
    encoder = result.task.model.encoder.eval()
    with torch.no_grad():
        expected = encoder(images)
    torch.testing.assert_close(features.embedding, expected.mean(dim=(2, 3)), rtol=0, atol=0)
    assert features.patch_tokens["stride8"].shape == (3, 16, 64) and features.grids["stride8"] == (4, 4)
    loaded, meta = load_encoder(out / "encoder")
    assert meta["pretraining_method"] == "optiml" and meta["history"][-1]["epoch"] == 6
    with pytest.raises(BackboneUnavailableError, match="image-only"):
        create_backbone(f"encoder:{out / 'encoder'}", device="cpu")


def test_encoder_backbone_trains_pradot(pretrained, synthetic):
    from medot.methods.pradot.config import PradotConfig
    from medot.methods.pradot.training import build_model, encode_tokens, train_pradot

    _, out, _ = pretrained
    backbone = create_backbone(f"encoder:{out / 'encoder'}", device="cpu", image_only=True)
    paths = sorted(synthetic.pool.glob("*.png"))[:6]
    tokens, grids = encode_tokens(backbone, paths, ["stride8"], progress=False)
    assert tokens["stride8"].shape[0] == 6 and grids["stride8"] == (4, 4)  # the encoder's own 32 px input
    config = PradotConfig(layers=("stride8",), alphas=(0.0,), n_prototypes=2, epochs=1, batch_size=3)
    model = build_model(config, tokens, grids)
    trained = train_pradot(model, tokens, config, progress=False)
    assert trained.status == "completed"


def test_a_non_finite_loss_stops_with_a_message_naming_the_terms():
    from medot.errors import MedotError
    from medot.methods.optiml.runner import build_task
    from medot.train import TrainConfig, Trainer

    task = build_task(CONFIG, seed=0)
    views = torch.rand(4, 1, SIZE, SIZE)
    views[0, 0, 0, 0] = float("nan")
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]).repeat(4, 1)
    batch = (views, torch.rand(4, 1, SIZE, SIZE), boxes, boxes)
    with pytest.raises(MedotError, match=r"non-finite loss terms \(loss=nan.*ot=nan"):
        Trainer(TrainConfig(epochs=1, warmup_epochs=0, device="cpu", progress=False)).fit(task, lambda context: [batch])


# ------------------------------------------------------------------ evaluation
def _write_separable(root, n_train=8, n_test=4, size=32):
    """Class 'flat': a constant grey level plus faint noise; class 'textured': binary noise. Any
    encoder's pooled features separate them (their mean and contrast differ by construction)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in ("flat", "textured"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                if name == "flat":
                    image = 0.3 + 0.02 * rng.random((size, size))
                else:
                    image = (rng.random((size, size)) > 0.5).astype(float)
                Image.fromarray((255 * image).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_linear_probe_on_separable_data_beats_chance(tmp_path, capsys):
    data = _write_separable(tmp_path / "sep", n_train=20)
    code = main([
        "eval", "linear", "--encoder", "tiny", "--data", str(data), "--fractions", "100", "--seeds", "1",
        "--epochs", "30", "--image-size", "32", "--json", "--out", str(tmp_path / "ev"),
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sizes"] == {"train": 36, "val": 4, "test": 8}  # val: 2 of 20 per class, from train
    run = report["runs"][0]
    assert run["accuracy"] >= 0.9 and run["auroc"] >= 0.9
    assert (tmp_path / "ev" / "eval.csv").is_file()


def test_model_selection_never_reads_the_test_labels(tmp_path):
    data = _write_separable(tmp_path / "sep")
    splits = load_labelled_splits(data, seed=0)
    test_paths = {str(r.path) for r in splits.test}
    assert not test_paths & {str(r.path) for r in splits.val + splits.train}
    assert {str(r.path.parent.parent.name) for r in splits.val} == {"train"}
    torch.manual_seed(0)
    features = {s: torch.randn(len(getattr(splits, s)), 5) for s in ("train", "val", "test")}
    labels = {s: torch.tensor([r.label for r in getattr(splits, s)]) for s in ("train", "val", "test")}
    features["train"][:, 0] += 3 * labels["train"]
    features["val"][:, 0] += 3 * labels["val"]
    run = ProbeRun(epochs=12, patience=3, device="cpu")
    indices = list(range(len(splits.train)))
    first = run_probe(features, labels, splits.classes, indices, 1, run)
    shuffled = dict(labels, test=labels["test"].flip(0))
    second = run_probe(features, shuffled, splits.classes, indices, 1, run)
    assert first.best_epoch == second.best_epoch and first.val_auroc == second.val_auroc
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]


def test_a_feature_constant_on_the_training_images_changes_no_prediction():
    """Pooled ReLU features are often exactly zero on every training image (605 of lite's 1280 at
    64 px on the synthetic probe set) yet fire on an unseen one. Divided by their zero training
    spread (formerly clamped at 1e-6) they reached 1e5-1e6 and saturated every logit: the probe
    predicted one class for all test images. Now they are ignored: firing changes nothing."""
    torch.manual_seed(0)
    n, dim = 20, 12
    labels = {split: torch.arange(n) % 2 for split in ("train", "val", "test")}
    features = {split: torch.randn(n, dim) for split in labels}
    for split, y in labels.items():
        features[split][:, 0] += 6.0 * y  # separable on feature 0
        features[split][:, 1:5] = 0.0  # silent on every training, validation and test image
    result = run_probe(features, labels, ("a", "b"), list(range(n)), 1, ProbeRun(epochs=30, patience=10, device="cpu"))
    firing = features["test"].clone()
    firing[:, 1:5] = 0.05 * torch.rand(n, 4)  # the silent features fire on the test images
    silent_p, firing_p = result.classifier.probabilities(features["test"]), result.classifier.probabilities(firing)
    np.testing.assert_allclose(firing_p, silent_p, rtol=0, atol=1e-12)
    assert torch.isinf(result.classifier.feature_std[1:5]).all()


def test_the_probe_does_not_amplify_a_near_silent_feature_beyond_ten_times_a_typical_one():
    from medot.eval.probe import SPREAD_FLOOR, _statistics

    torch.manual_seed(0)
    x = torch.randn(20, 6)
    x[:, 1] = 1e-4 * torch.randn(20)  # varies, barely
    x[:, 2] = 3.0  # constant
    mean, spread = _statistics(x)
    varying = [0, 1, 3, 4, 5]
    typical = x[:, varying].std(0).mean()
    torch.testing.assert_close(mean, x.mean(0))
    assert SPREAD_FLOOR == 0.1 and spread[1].item() == pytest.approx(0.1 * typical.item(), rel=1e-5)
    torch.testing.assert_close(spread[[0, 3, 4, 5]], x[:, [0, 3, 4, 5]].std(0).clamp_min(0.1 * typical))
    assert torch.isinf(spread[2]) and torch.isfinite(spread[varying]).all()
    assert torch.equal(_statistics(x[:1])[1], torch.ones(6))  # one row: nothing to estimate


def test_the_probe_head_starts_as_vicregs_linear_evaluation():
    """VICReg's evaluate.py: head weights N(0, 0.01^2), bias 0 (PyTorch's default U(+-1/sqrt(d))
    is larger than what 100 AdamW steps at 3e-3 move it on a small set)."""
    from medot.eval.probe import ProbeTask

    torch.manual_seed(0)
    task = ProbeTask(None, 4096, ("a", "b", "c"), (torch.empty(0), torch.empty(0)), {})
    assert task.head.weight.std().item() == pytest.approx(0.01, rel=0.05) and not task.head.bias.any()

def test_label_fractions_are_seeded_stratified_subsets(tmp_path):
    data = _write_separable(tmp_path / "sep", n_train=10)
    splits = load_labelled_splits(data, seed=0)
    ten = label_fraction(splits.train, 2, 0.1, seed=3)
    assert sorted(r.label for r in ten) == [0, 1]  # at least one image per class
    half = label_fraction(splits.train, 2, 0.5, seed=3)
    assert [str(r.path) for r in half] == [str(r.path) for r in label_fraction(splits.train, 2, 0.5, seed=3)]
    assert [r.path for r in half] != [r.path for r in label_fraction(splits.train, 2, 0.5, seed=4)]
    assert sum(r.label == 0 for r in half) == round(0.5 * 9)


# ------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "optiml", "--data", "/nonexistent/pool"], "is not a folder of images"),
        (["train", "optiml", "--data", "x", "--no-ot", "--no-varcov"], "leaves no loss term"),
        (["train", "optiml", "--data", "x", "--method", "vicreg", "--no-cvsim"], "vicreg has none"),
        (["train", "optiml", "--data", "x", "--epsilon", "0"], "epsilon must be > 0"),
        (["train", "optiml", "--data", "x", "--stages", "3"], "always with 4 (the final map)"),
        (["train", "optiml", "--data", "x", "--method", "vicregl", "--vicregl-alpha", "2"], "vicregl_alpha must be in"),
        (["eval", "linear", "--encoder", "/nonexistent/enc", "--data", "x"], "no encoder checkpoint there"),
        (["eval", "linear", "--encoder", "tiny", "--data", "x", "--fractions", "0"], "percentages in"),
        (["eval", "finetune", "--encoder", "tiny", "--data", "/nonexistent"], "train/<class>/ and test/<class>/"),
        (["predict", "a.png", "--labels", "a,b", "--backbone", "encoder:/x/enc"], "image-only encoder"),
    ],
)
def test_cli_errors_are_one_line_messages(argv, message, capsys, tmp_path):
    if "predict" in argv:
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
        argv = [str(tmp_path / "a.png") if a == "a.png" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("medot: error:") and message in err and "Traceback" not in err


def test_pretraining_refuses_a_pool_smaller_than_a_batch(synthetic, capsys):
    assert main(["train", "optiml", "--data", str(synthetic.pool), "--batch-size", "64", "--encoder", "tiny"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err


def test_an_interrupted_pretraining_resumes_to_the_uninterrupted_result(synthetic, tmp_path):
    pool = ImagePool.from_folder(synthetic.pool, load_size=36)
    run = PretrainRun(epochs=2, batch_size=4, lr=1.0, warmup_epochs=1, seed=3, device="cpu", progress=False)
    straight = pretrain(pool, CONFIG, run, tmp_path / "straight")
    calls = iter(range(1000))
    stopped = pretrain(pool, CONFIG, run, tmp_path / "resumed", should_stop=lambda: next(calls) >= 4)
    assert stopped.result.status == "cancelled" and stopped.encoder_path is None
    resumed = pretrain(pool, CONFIG, run, tmp_path / "resumed", resume=True)
    assert resumed.result.status == "completed"
    expected, actual = straight.task.checkpoint_tensors(), resumed.task.checkpoint_tensors()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_finetuning_on_separable_data_beats_chance(tmp_path, capsys):
    data = _write_separable(tmp_path / "sep", n_train=12)
    code = main([
        "eval", "finetune", "--encoder", "tiny", "--data", str(data), "--fractions", "100", "--seeds", "1",
        "--epochs", "8", "--batch-size", "8", "--image-size", "32", "--json",
    ])
    assert code == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["accuracy"] >= 0.75


def _write_nih(root, n_patients=8, per_patient=2, size=32):
    """A miniature NIH ChestX-ray14 layout: CSV, official lists, images in images_001/images/.
    Effusion images are bright, others dark: the finding is separable by construction."""
    rng = np.random.default_rng(1)
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    rows, names = ["Image Index,Finding Labels,Follow-up #,Patient ID"], []
    for patient in range(n_patients):
        for k in range(per_patient):
            name = f"{patient:08d}_{k:03d}.png"
            effusion = (patient + k) % 2 == 0
            labels = "Effusion|Mass" if effusion and patient % 3 == 0 else ("Effusion" if effusion else "No Finding")
            image = (0.7 if effusion else 0.2) + 0.05 * rng.random((size, size))
            Image.fromarray((255 * image).astype(np.uint8)).save(folder / name)
            rows.append(f"{name},{labels},{k},{patient}")
            names.append((patient, name))
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for p, n in names if p < n_patients - 2) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for p, n in names if p >= n_patients - 2) + "\n")
    return root


def test_nih_layout_is_multilabel_with_patient_disjoint_validation(tmp_path, capsys):
    from medot.eval.probe import NIH_FINDINGS, load_nih_splits

    data = _write_nih(tmp_path / "nih", n_patients=12)
    splits = load_nih_splits(data, seed=0)
    assert splits.multilabel and splits.classes == NIH_FINDINGS and len(splits.test) == 4
    patient = lambda record: record.path.name.split("_")[0]  # noqa: E731
    assert not {patient(r) for r in splits.val} & {patient(r) for r in splits.train}
    assert not {r.path for r in splits.test} & {r.path for r in splits.train + splits.val}
    effusion = NIH_FINDINGS.index("Effusion")
    assert splits.label_tensor("train").shape == (len(splits.train), 14)
    assert all(r.label[effusion] == int("Effusion" in r.class_name) for r in splits.train)
    code = main(["eval", "linear", "--encoder", "tiny", "--data", str(data), "--fractions", "100", "--seeds", "1",
                 "--epochs", "20", "--image-size", "32", "--json"])
    assert code == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["auroc_Effusion"] >= 0.9  # bright vs dark: separable by construction
    assert np.isnan(run["auroc_Hernia"])  # no positive in the test list: undefined, not averaged


def test_app_jobs_build_a_valid_optiml_command(tmp_path):
    from medot.cli import build_parser
    from medot.jobs.arguments import METHOD_ARGUMENTS, validate_arguments
    from medot.jobs.registry import JobError
    from medot.jobs.runner import medot_train_command

    checked = validate_arguments(
        "optiml", {"dataset": "synthetic", "method": "vicregl", "epochs": 3, "no_cvsim": True, "alpha": 10},
        tmp_path, METHOD_ARGUMENTS,
    )
    command = medot_train_command("optiml", checked, tmp_path / "job", resume=True)
    args = build_parser().parse_args(command[3:])
    assert (args.data, args.method, args.epochs, args.no_cvsim, args.alpha, args.resume) == (
        "synthetic", "vicregl", 3, True, 10.0, True
    )
    with pytest.raises(JobError, match="does not take backbone"):
        validate_arguments("optiml", {"backbone": "lite"}, tmp_path, METHOD_ARGUMENTS)


def test_dense_correspondences_of_a_trained_model(pretrained):
    from medot.methods.optiml.correspondence import correspondence_figure, dense_correspondences

    pool, _, result = pretrained
    image = pool[0][0].numpy()
    found = dense_correspondences(result.task.model, image, seed=4, top_k=5)
    assert found.view_s.shape == (SIZE, SIZE) and found.grid == (4, 4) and len(found.matches) == 5
    masses = [m for *_, m in found.matches]
    assert masses == sorted(masses, reverse=True) and sum(masses) <= 1.0 + 1e-6
    assert 0.0 <= found.agree_ot <= 1.0 and 0.0 <= found.agree_nn <= 1.0
    # the true correspondence is the geometric one of the same seeded views training draws
    again = dense_correspondences(result.task.model, image, seed=4, top_k=5)
    assert again.truth == found.truth and np.array_equal(again.view_t, found.view_t)
    figure = correspondence_figure(found)
    assert sum(trace.line.color == "lime" for trace in figure.data[1:]) == 5
    # a title that fits a half-width plot (one long line was cut in the app), numbers as the app's summary
    lines = figure.layout.title.text.split("<br>")
    assert len(lines) == 2 and all(len(line) <= 64 for line in lines)
    assert f"OT {found.agree_ot:.3f}, nearest neighbour {found.agree_nn:.3f}" in lines[1]


def test_synth_writes_the_pretraining_pool_and_probe_set(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["synth", "--out", str(out), "--n-per-class", "4", "--size", "32", "--pretraining-pool", "5",
                 "--quiet"]) == 0
    assert len(list((out / "optiml" / "pool").glob("*.png"))) == 5
    labelled = out / "optiml" / "labelled"
    assert sorted(p.name for p in (labelled / "train").iterdir()) == ["nodule", "normal", "opacity"]
    assert {len(list((labelled / split / "normal").glob("*.png"))) for split in ("train", "test")} == {3, 1}
    splits = load_labelled_splits(labelled, seed=0)  # the probe set reads as an eval dataset
    assert len(splits.val) == 3 and len(splits.test) == 3
    assert "pretraining pool" in capsys.readouterr().out


def test_before_after_embeddings_use_the_exact_initial_and_trained_encoders(pretrained, synthetic):
    from medot.methods.optiml.classifier import PooledGrey, centre_crop
    from medot.methods.optiml.data import load_grey
    from medot.methods.optiml.embeddings import before_after_embeddings
    from medot.methods.optiml.runner import build_task

    _, out, result = pretrained
    before, after = before_after_embeddings(out / "model", synthetic.labelled, max_images=5)
    assert len(before) == len(after) == 5 and set(before.modality) == {"before"}
    first = sorted(synthetic.labelled.glob("train/nodule/*.png"))[0]
    image = centre_crop(load_grey(first, SIZE), SIZE)[None]
    with torch.no_grad():
        initial = PooledGrey(build_task(CONFIG, seed=0).model.encoder.eval())(image)[0]
        trained = PooledGrey(result.task.model.encoder.eval())(image)[0]
    row = before.text.index(first.name)
    np.testing.assert_allclose(before.vectors[row], initial.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.vectors[row], trained.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(before.vectors[row], after.vectors[row])
