"""K-MaT and its prompt-learning baselines: losses against hand computations, prompt factorisation,
ablation switches, leakage guard, reproducibility, zero-shot equivalence (tiny BiomedCLIP-shaped
backbone with random weights, built once)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medot.errors import DatasetLayoutError
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.kmat.losses import knowledge_anchor_loss, manifold_transport_loss
from medot.methods.kmat.model import KMaTConfig, KMaTTask
from medot.methods.kmat.runner import RunConfig, fit_method, run_method, zero_shot_classifier
from medot.methods.prompt_learning.baselines import BiomedCoOpTask, KgCoOpTask, pruned_teacher
from medot.methods.prompt_learning.crossmodal import TaskError, resolve_task
from medot.methods.prompt_learning.knowledge import embed_descriptions, template_embeddings
from medot.methods.prompt_learning.losses import distillation_loss, prune_descriptions
from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner, prompt_name
from medot.ot import entropic_fused_gromov_wasserstein
from medot.train import FeatureCache, Trainer
from medot.zeroshot import DEFAULT_TEMPLATES, zero_shot_probabilities
from tiny_open_clip import write_tiny_biomedclip

CLASSES = ("nodule", "normal", "opacity")
MODALITIES = ("ct", "xray")


# --------------------------------------------------------------------------- shared helpers
def tiny_backbone(folder: Path):
    from medot.backbones import create_backbone

    return create_backbone(f"local-dir:{write_tiny_biomedclip(folder)}", "cpu")


def write_tiny_task(folder: Path, n_per_class: int = 10) -> Path:
    """A synthetic CT -> X-ray benchmark (5 train / 1 val / 4 test per class) and its task JSON."""
    write_synthetic_benchmark(folder / "data", n_per_class=n_per_class, size=48, progress=False)
    task = {
        "name": "tiny",
        "descriptions": "synthetic",
        "high": {"root": "data/kmat/ct", "split_file": "data/kmat/ct/split_ct.json"},
        "low": {"root": "data/kmat/xray", "split_file": "data/kmat/xray/split_xray.json"},
    }
    path = folder / "task.json"
    path.write_text(json.dumps(task))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_backbone(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return resolve_task(write_tiny_task(tmp_path_factory.mktemp("tiny_task")))


@pytest.fixture(scope="module")
def knowledge(backbone, task):
    return embed_descriptions(backbone, task.descriptions, task.classes)


def make_kmat(backbone, knowledge, **switches) -> KMaTTask:
    torch.manual_seed(0)
    config = KMaTConfig(**switches)
    prompts = config.prompt_learner(backbone, CLASSES)
    return KMaTTask(prompts, knowledge, config, modalities=MODALITIES, hyper_parameters={})


def unit(*shape, seed=0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# --------------------------------------------------------------------------- losses
def test_anchor_loss_matches_hand_computation():
    w = torch.tensor([[[3.0, 4.0], [0.0, 2.0]], [[1.0, 0.0], [-1.0, 1.0]]])  # [2 modalities, 2 classes, 2]
    anchors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    total = 0.0
    for m in range(2):
        for i in range(2):
            direction = w[m, i] / w[m, i].norm()
            total += float(((direction - anchors[m, i]) ** 2).sum())
    assert float(knowledge_anchor_loss(w, anchors)) == pytest.approx(total / (2 * 2))
    # e.g. class 0 of H: (0.6, 0.8) vs (1, 0) -> 0.16 + 0.64 = 0.8
    assert float(((w[0, 0] / 5 - anchors[0, 0]) ** 2).sum()) == pytest.approx(0.8)


def test_transport_loss_is_medot_fgw_on_the_same_matrices():
    high, low = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), unit(4, 6, seed=2) * 3
    transport = manifold_transport_loss(high, low)
    h, lo = F.normalize(high, dim=-1), F.normalize(low, dim=-1)
    cost = ((h[:, None] - lo[None]) ** 2).sum(-1)
    d_high = ((h[:, None] - h[None]) ** 2).sum(-1).sqrt()
    d_low = ((lo[:, None] - lo[None]) ** 2).sum(-1).clamp_min(0).sqrt()
    reference = entropic_fused_gromov_wasserstein(cost, d_high, d_low, alpha=0.1, epsilon=0.1, max_iter=100)
    assert torch.allclose(transport.cost, cost, atol=1e-5)
    assert torch.allclose(transport.high_structure, d_high, atol=1e-4)
    assert torch.allclose(transport.low_structure, d_low, atol=1e-4)
    assert float(transport.loss) == pytest.approx(float(reference.objective), rel=1e-4)
    assert float(transport.value) == pytest.approx(float(reference.value), rel=1e-4)
    assert torch.allclose(transport.plan, reference.plan, atol=1e-5)
    assert torch.allclose(transport.plan.sum(1), torch.full((4,), 0.25), atol=1e-4)


def test_transport_gradient_reaches_only_low_end_context(backbone, knowledge):
    kmat = make_kmat(backbone, knowledge)
    high, low = kmat.class_embeddings()
    manifold_transport_loss(high, low).loss.backward()
    grad = kmat.prompts.context.grad
    assert grad.shape[0] == 2
    assert torch.count_nonzero(grad[HIGH]) == 0
    assert grad[LOW].abs().sum() > 0


def test_cross_entropy_is_f_cross_entropy_on_cosine_logits(backbone, knowledge):
    kmat = make_kmat(backbone, knowledge, anchor=False, transport=False)
    images, labels = torch.randn(5, backbone.embed_dim), torch.tensor([0, 1, 2, 2, 0])
    terms = kmat.training_step((images, labels))
    with torch.no_grad():
        w = kmat.prompts(HIGH)
    logits = backbone.logit_scale * F.normalize(images, dim=-1) @ F.normalize(w, dim=-1).t()
    assert set(terms) == {"loss", "ce"}
    assert float(terms["ce"]) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert float(terms["loss"]) == float(terms["ce"])


def test_kgcoop_term_is_the_authors_mean_one_minus_cosine(backbone):
    torch.manual_seed(0)
    prompts = PromptLearner(backbone, CLASSES)
    reference = template_embeddings(backbone, CLASSES)
    task = KgCoOpTask(prompts, reference, 8.0, modalities=MODALITIES, hyper_parameters={})
    images, labels = torch.randn(3, backbone.embed_dim), torch.tensor([0, 1, 2])
    terms = task.training_step((images, labels))
    with torch.no_grad():
        w = prompts(HIGH)
    # KgCoOp's code: score = 1 - mean(cos(w_i, w_i^clip)); loss = ce + 8 * score
    cosines = [float(w[i] @ reference[i] / (w[i].norm() * reference[i].norm())) for i in range(3)]
    expected = 1.0 - sum(cosines) / 3
    assert expected > 1e-4  # not trivially zero
    assert float(terms["kg"]) == pytest.approx(expected, abs=1e-6)
    assert float(terms["loss"]) == pytest.approx(float(terms["ce"]) + 8.0 * expected, abs=1e-5)
    # half the paper's squared distance between unit vectors
    squared = sum(float(((F.normalize(w[i], dim=0) - reference[i]) ** 2).sum()) for i in range(3)) / 3
    assert float(terms["kg"]) == pytest.approx(squared / 2, abs=1e-6)


def test_kgcoop_reference_is_the_prompt_learner_at_the_template_context(backbone):
    """KgCoOp pulls w_i toward w_i^clip: with the context set to "a photo of a" the learner must
    reproduce that reference exactly (same space, same orientation), so L_kg is 0 there."""
    prompts = PromptLearner(backbone, CLASSES)
    ids, _ = backbone.tokenize(["a photo of a"])
    with torch.no_grad():
        prompts.context.copy_(backbone.token_embedding(ids[0, 1:5]).float()[None, None])
        w = prompts(HIGH)
    reference = template_embeddings(backbone, CLASSES)
    assert torch.allclose(F.normalize(w, dim=-1), reference, atol=1e-5)
    task = KgCoOpTask(prompts, reference, 8.0, modalities=MODALITIES, hyper_parameters={})
    terms = task.training_step((torch.randn(3, backbone.embed_dim), torch.tensor([0, 1, 2])))
    assert float(terms["kg"]) == pytest.approx(0.0, abs=1e-6)


def test_biomedcoop_terms_match_hand_computation(backbone, knowledge):
    torch.manual_seed(0)
    prompts = PromptLearner(backbone, CLASSES)
    task = BiomedCoOpTask(
        prompts, knowledge, lambda_sccm=2.0, lambda_kdsp=3.0, modalities=MODALITIES, hyper_parameters={}
    )
    images, labels = torch.randn(4, backbone.embed_dim), torch.tensor([0, 1, 2, 1])
    terms = task.training_step((images, labels))
    with torch.no_grad():
        w = F.normalize(prompts(HIGH), dim=-1)
    anchors = knowledge.anchors()[HIGH]
    assert float(terms["sccm"]) == pytest.approx(float(((w - anchors) ** 2).sum()) / w.numel(), rel=1e-5)
    scale, x = backbone.logit_scale, F.normalize(images, dim=-1)
    student = (scale * x @ w.t()).log_softmax(-1)
    teacher, _ = pruned_teacher(knowledge, HIGH, 1.5)
    target = (scale * x @ teacher.t()).softmax(-1)
    kl = float((target * (target.log() - student)).sum()) / student.numel()
    assert float(terms["kdsp"]) == pytest.approx(kl, rel=1e-4)
    expected = float(terms["ce"]) + 2.0 * float(terms["sccm"]) + 3.0 * kl
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-4)
    assert float(distillation_loss(student, student)) == pytest.approx(0.0, abs=1e-7)


def test_pruning_drops_the_description_far_from_the_class_mean():
    noise = 0.05 * torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    core = F.normalize(torch.tensor([1.0, 0.0, 0.0]) + noise, dim=-1)
    outlier = torch.tensor([[0.0, 1.0, 0.0]])
    mask = prune_descriptions(torch.cat([core, outlier]), tau=1.5)
    assert mask.tolist() == [True] * 7 + [False]
    assert prune_descriptions(torch.eye(3)[[0, 0, 0]], tau=1.5).all()  # no spread: keep all


# --------------------------------------------------------------------------- prompt factorisation and switches
@pytest.mark.parametrize(("csc", "msc"), [(True, True), (True, False), (False, True), (False, False)])
def test_csc_msc_switches_set_context_shape_and_sharing(backbone, knowledge, csc, msc):
    kmat = make_kmat(backbone, knowledge, class_specific=csc, modality_specific=msc)
    assert tuple(kmat.prompts.context.shape[:3]) == (2 if msc else 1, 3 if csc else 1, 4)
    high, low = kmat.prompts.modality_context(HIGH), kmat.prompts.modality_context(LOW)
    assert torch.equal(high, low) != msc
    assert torch.equal(high[0], high[1]) != csc
    with torch.no_grad():
        assert torch.allclose(kmat.prompts(HIGH), kmat.prompts(LOW)) != msc


def test_ablation_switches_remove_terms(backbone, knowledge):
    images, labels = torch.randn(4, backbone.embed_dim), torch.tensor([0, 1, 2, 0])
    full = make_kmat(backbone, knowledge, lambda_anchor=2.0, lambda_transport=0.5).training_step((images, labels))
    assert set(full) == {"loss", "ce", "anc", "fgw"}
    assert float(full["loss"]) == pytest.approx(float(full["ce"] + 2.0 * full["anc"] + 0.5 * full["fgw"]), rel=1e-5)
    no_anchor = make_kmat(backbone, knowledge, anchor=False).training_step((images, labels))
    assert set(no_anchor) == {"loss", "ce", "fgw"}
    no_transport = make_kmat(backbone, knowledge, transport=False).training_step((images, labels))
    assert set(no_transport) == {"loss", "ce", "anc"}
    ce_only = make_kmat(backbone, knowledge, anchor=False, transport=False)
    ce_only.training_step((images, labels))["loss"].backward()
    assert torch.count_nonzero(ce_only.prompts.context.grad[LOW]) == 0  # nothing trains the low end


def test_cocoop_meta_net_gives_each_image_its_own_prompts(backbone):
    torch.manual_seed(0)
    prompts = PromptLearner(backbone, CLASSES, conditional=True)
    images = torch.randn(2, backbone.embed_dim)
    w = prompts(HIGH, images)
    assert w.shape == (2, 3, backbone.embed_dim)
    assert not torch.allclose(w[0], w[1], atol=1e-6)
    hidden = prompts.meta_net[0]
    assert (hidden.in_features, hidden.out_features) == (backbone.embed_dim, backbone.embed_dim // 16)
    w.sum().backward()
    assert prompts.meta_net[2].weight.grad.abs().sum() > 0


def test_zeroshot_equals_medot_zeroshot(backbone, knowledge, task):
    from medot.data.io import read_image

    images = [read_image(record.path) for record in task.low_end_test()[:4]]
    classifier = zero_shot_classifier("zeroshot", backbone, task.classes, knowledge)
    pixels = backbone.transform_batch([image.rgb() for image in images])
    embedding = backbone.encode_image(pixels, layers=()).embedding
    ours = classifier.logits(embedding, LOW).softmax(-1)
    reference = zero_shot_probabilities(backbone, images, [prompt_name(c) for c in task.classes], DEFAULT_TEMPLATES)
    assert torch.allclose(ours, reference, atol=1e-6)
    descriptions = zero_shot_classifier("zeroshot_desc", backbone, task.classes, knowledge)
    assert torch.allclose(descriptions.class_embeddings, knowledge.anchors())


# --------------------------------------------------------------------------- data, leakage, reproducibility
def test_no_low_end_image_reaches_training_or_selection(backbone, knowledge, task, monkeypatch, tmp_path):
    low = {record.path for record in task.low_end_test()}
    encoded: list[tuple[bool, set]] = []
    training = {"done": False}
    encode, fit = FeatureCache.encode, Trainer.fit

    def spy_encode(self, backbone_, paths, **kwargs):
        encoded.append((training["done"], {Path(p) for p in paths}))
        return encode(self, backbone_, paths, **kwargs)

    def spy_fit(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        training["done"] = True
        return result

    monkeypatch.setattr(FeatureCache, "encode", spy_encode)
    monkeypatch.setattr(Trainer, "fit", spy_fit)
    run = RunConfig(shots=2, epochs=2, views=1, patience=1, progress=False)
    cache = FeatureCache(tmp_path / "cache")
    result = run_method("kmat", backbone, task, knowledge, run, out_dir=tmp_path / "run", cache=cache)
    before = set().union(*(paths for done, paths in encoded if not done))
    after = set().union(*(paths for done, paths in encoded if done))
    assert before and before.isdisjoint(low)
    assert low <= after  # the low-end test images are read, but only after training
    assert result.validation is not None


def test_high_end_data_refuses_low_end_files(backbone, task):
    from dataclasses import replace

    leaky = replace(task, low=task.high)
    with pytest.raises(TaskError, match="must never be trained on"):
        leaky.high_end_data(2, seed=1)


def test_too_few_shots_is_a_clear_error(task):
    with pytest.raises(DatasetLayoutError, match=r"class 'nodule' has 5 image\(s\) in the ct train split .* --shots 6"):
        task.high_end_data(6, seed=1)


def test_paper_task_without_data_names_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDOT_DATA_ROOT", str(tmp_path))
    with pytest.raises(TaskError, match=r"DMID .* BUSI") as error:
        resolve_task("breast")
    assert str(tmp_path / "kmat" / "breast" / "mammography") in str(error.value)
    with pytest.raises(TaskError, match="no task named"):
        resolve_task("mystery")


def test_task_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"name": "x", "descriptions": "synthetic", "high": {"root": "."}, "lows": {}}))
    with pytest.raises(TaskError, match=r"missing keys \['low'\], unknown keys \['lows'\]"):
        resolve_task(path)


def test_seeded_runs_are_reproducible(backbone, knowledge, task, tmp_path):
    cache = FeatureCache(tmp_path / "cache")

    def context(seed: int) -> torch.Tensor:
        run = RunConfig(shots=2, seed=seed, epochs=2, views=2, progress=False)
        fitted = fit_method(
            "kmat", backbone, task.high_end_data(2, seed), classes=task.classes, modalities=task.modalities,
            knowledge=knowledge, run=run, cache=cache,
        )
        return fitted.task.prompts.context.detach().clone()

    first, again, other = context(1), context(1), context(2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert np.isfinite(first.numpy()).all()


def test_transport_loss_gradient_is_the_derivative_of_the_loss():
    # L_fgw is the entropic objective, so its envelope gradient is its derivative (issue #16)
    generator = torch.Generator().manual_seed(3)
    high = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    low = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    direction = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    leaf = low.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(manifold_transport_loss(high, leaf, max_iter=1000).loss, leaf)
    step = 1e-4
    with torch.no_grad():
        plus = manifold_transport_loss(high, low + step * direction, max_iter=1000).loss
        minus = manifold_transport_loss(high, low - step * direction, max_iter=1000).loss
    finite_difference = float(plus - minus) / (2 * step)
    assert float((gradient * direction).sum()) == pytest.approx(finite_difference, rel=1e-3)
