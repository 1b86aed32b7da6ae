"""MADPOT: losses vs hand computations, partial OT vs POT, adapters and prompts, ablation switches,
support sets and leakage, checkpoint round trip (tiny BiomedCLIP-shaped backbone, synthetic organs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from medot.data.synthetic import write_synthetic_benchmark
from medot.errors import MedotError
from medot.methods.madpot.config import MadpotConfig, MadpotError
from medot.methods.madpot.data import AUGMENTATIONS, augment, encode_support, load_support
from medot.methods.madpot.detector import load_madpot, save_madpot
from medot.methods.madpot.losses import (
    contrastive_loss,
    dice_loss,
    focal_loss,
    pot_cross_entropy,
    prompt_diversity,
)
from medot.methods.madpot.model import (
    LayerAdapter,
    MadpotModel,
    contrast,
    fuse_prompts,
    transport_logits,
    transport_plans,
)
from medot.methods.madpot.runner import train_few_shot
from medot.methods.madpot.task import MadpotTask, fit, support_batches

from tiny_open_clip import write_tiny_biomedclip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from medot.backbones import create_backbone

    return create_backbone(f"local-dir:{write_tiny_biomedclip(tmp_path_factory.mktemp('tiny'))}", "cpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), size=64, n_per_class=4, progress=False)


@pytest.fixture(scope="module")
def encoded(backbone, synthetic):
    support = load_support(synthetic.mvfa_root, "Retina", 2, 1)
    return support, encode_support(backbone, support.records, ("block3", "block6"), views=2, progress=False)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------- losses
def test_losses_match_hand_computation():
    logits, labels = torch.tensor([[2.0, 0.5], [0.1, 1.1]]), torch.tensor([0, 1])
    by_hand = -(np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(0.5))) + np.log(np.exp(1.1) / (np.exp(0.1) + np.exp(1.1)))) / 2
    assert pot_cross_entropy(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)

    image_logits = torch.tensor([1.5, -0.3])
    sig = 1 / (1 + np.exp(-np.array([1.5, -0.3])))
    assert contrastive_loss(image_logits, labels).item() == pytest.approx(-(np.log(1 - sig[0]) + np.log(sig[1])) / 2, rel=1e-6)

    p, y = torch.tensor([[0.9, 0.2], [0.4, 0.7]]), torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    pn, yn = p.numpy().astype(float), y.numpy().astype(float)
    focal = -(yn * (1 - pn) ** 2 * np.log(pn) + (1 - yn) * pn**2 * np.log(1 - pn)).mean()
    assert focal_loss(p, y).item() == pytest.approx(focal, rel=1e-5)
    dice = 1 - (2 * (pn * yn).sum() + 1) / (pn.sum() + yn.sum() + 1)
    assert dice_loss(p, y).item() == pytest.approx(dice, rel=1e-6)

    prompts = _unit(2, 3, 4).float()
    gram = prompts @ prompts.transpose(1, 2)
    pairs = [gram[c, i, j].item() for c in range(2) for i in range(3) for j in range(3) if i != j]
    assert prompt_diversity(prompts).item() == pytest.approx(np.mean(pairs), rel=1e-5)
    assert prompt_diversity(prompts[:, :1]).item() == 0.0


# ---------------------------------------------------------------------------------- partial OT
def test_partial_plans_match_pot_and_carry_gamma():
    similarity = _unit(5, 4, seed=1) @ _unit(3, 4, seed=2).t()
    plans = transport_plans(similarity[None].repeat(2, 1, 1), mass=0.8, epsilon=0.1, max_iter=1000)
    cost = (1 - similarity).numpy()
    reference = ot.partial.entropic_partial_wasserstein(
        np.full(5, 1 / 5), np.full(3, 1 / 3), cost, reg=0.1, m=0.8, numItermax=1000, stopThr=1e-12
    )
    np.testing.assert_allclose(plans[0].double().numpy(), reference, atol=2e-5)
    assert plans[1].sum().item() == pytest.approx(0.8, abs=1e-5)  # masses per prompt sum to gamma
    assert (plans[0].sum(0) <= 1 / 3 + 1e-5).all() and (plans[0].sum(1) <= 1 / 5 + 1e-5).all()


def test_balanced_prompt_variant_is_pots_balanced_solve_with_a_dummy_column():
    similarity = _unit(6, 4, seed=3) @ _unit(3, 4, seed=4).t()
    plan = transport_plans(similarity, mass=0.8, epsilon=0.1, max_iter=2000, balanced_prompts=True).double()
    cost = np.concatenate([(1 - similarity).numpy(), np.zeros((6, 1))], axis=1)
    b = np.array([0.8 / 3] * 3 + [0.2])
    reference = ot.sinkhorn(np.full(6, 1 / 6), b, cost, reg=0.1, numItermax=2000, stopThr=1e-12)
    np.testing.assert_allclose(plan.numpy(), reference[:, :3], atol=2e-5)
    np.testing.assert_allclose(plan.sum(0).numpy(), [0.8 / 3] * 3, atol=1e-4)  # every prompt gets gamma/K
    # small epsilon: the cost approaches the exact LP of the augmented problem
    sharp = transport_plans(similarity, mass=0.8, epsilon=0.002, max_iter=5000, balanced_prompts=True).double()
    exact = ot.emd(np.full(6, 1 / 6), b, cost)
    assert (sharp.numpy() * cost[:, :3]).sum() == pytest.approx((exact * cost).sum(), abs=3e-3)


def test_partial_plan_approaches_exact_partial_lp_at_small_epsilon():
    similarity = _unit(6, 4, seed=5) @ _unit(3, 4, seed=6).t()
    cost = (1 - similarity).numpy()
    sharp = transport_plans(similarity, mass=0.8, epsilon=0.005, max_iter=2000).double().numpy()
    exact = ot.partial.partial_wasserstein(np.full(6, 1 / 6), np.full(3, 1 / 3), cost, m=0.8)
    assert (sharp * cost).sum() == pytest.approx((exact * cost).sum(), abs=5e-3)


def test_pot_logits_are_the_plan_weighted_mean_cosine():
    config = MadpotConfig(mass=0.7, epsilon=0.1, ot_iterations=500)
    features, prompts = _unit(2, 5, 4, seed=7).float(), _unit(2, 2, 3, 4, seed=8).float()
    output = transport_logits(features, prompts, 10.0, config)
    for b in range(2):
        for c in range(2):
            cos = (features[b] @ prompts[b, c].t()).double().numpy()
            plan = ot.partial.entropic_partial_wasserstein(
                np.full(5, 0.2), np.full(3, 1 / 3), 1 - cos, reg=0.1, m=0.7, numItermax=500, stopThr=1e-12
            )
            assert output.logits[b, c].item() == pytest.approx(10.0 * (plan * cos).sum() / 0.7, abs=1e-3)
            per_patch = (plan * cos).sum(1) / plan.sum(1)
            np.testing.assert_allclose(output.patch_logits[b, :, c].numpy(), 10.0 * per_patch, atol=1e-3)


# ---------------------------------------------------------------------------------- adapters, prompts
def test_adapter_shapes_and_normalisation():
    adapter = LayerAdapter(8, 5)
    det, seg = adapter(torch.randn(3, 7, 8))
    assert det.shape == seg.shape == (3, 7, 5)
    np.testing.assert_allclose(det.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(seg.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    hidden = adapter.norm(F.leaky_relu(adapter.adapter(torch.randn(2, 9, 8))).transpose(1, 2))
    np.testing.assert_allclose(hidden.mean(-1).detach().numpy(), 0.0, atol=1e-5)  # instance norm over patches


def _model(backbone, encoded, **overrides):
    support, enc = encoded
    torch.manual_seed(0)
    config = MadpotConfig(**{"n_prompts": 3, "views": 2, "epochs": 1, "batch_size": 4, **overrides})
    channels = {layer: t.shape[-1] for layer, t in enc.tokens.items()}
    return MadpotModel(backbone, config, tuple(enc.tokens), channels, enc.grids, ["retinal OCT"], localised=True)


def test_prompts_are_k_per_class_and_fusion_is_the_normalised_mean(backbone, encoded):
    model = _model(backbone, encoded)
    prompts = model.prompts(0)
    assert prompts.shape == (2, 3, backbone.embed_dim)
    np.testing.assert_allclose(prompts.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)
    expected = prompts.mean(1) / prompts.mean(1).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fuse_prompts(prompts), expected)
    assert model.prompts.context.shape[:3] == (1, 6, 8)  # 2K prompts, n_ctx 8, class-specific
    model.set_object("chest X-ray")  # a new object reuses the learned contexts
    assert model.prompts.learners[1].context is model.prompts.context
    single = _model(backbone, encoded, n_prompts=1)
    assert single.prompts(0).shape == (2, 1, backbone.embed_dim)


def test_layer_outputs_equal_the_term_by_term_definition(backbone, encoded):
    """The fused computation (unnormalised heads divided by their norms, one product with all
    prompts, one OT solve for both heads) gives what transport_logits / contrast give per head on
    the normalised features -- for one object and for a batch mixing two objects."""
    _, enc = encoded
    model = _model(backbone, encoded)
    model.set_object("chest X-ray")
    tokens = {layer: t[:4] for layer, t in enc.tokens.items()}
    for objects in ([0, 0, 0, 0], [0, 1, 1, 0]):
        prompts = model.object_prompts(torch.tensor(objects))
        outputs = model.layer_outputs(tokens, prompts)
        fused = fuse_prompts(prompts)
        for layer, output in outputs.items():
            det, seg = model.adapters[layer.replace(".", "_")](tokens[layer].float())
            for head, got in ((det, output.pot_det), (seg, output.pot_seg)):
                want = transport_logits(head, prompts, model.logit_scale, model.config)
                torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(got.patch_logits, want.patch_logits, rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(got.plan, want.plan, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(output.cl_logits, model.logit_scale * contrast(det, fused).mean(-1),
                                       rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(output.cl_patch_logits, model.logit_scale * contrast(seg, fused),
                                       rtol=1e-5, atol=1e-4)


def test_ablation_switches_change_exactly_their_terms(backbone, encoded):
    _, enc = encoded
    batch = next(iter(support_batches([enc], 8)(_context())))
    full = MadpotTask(_model(backbone, encoded)).training_step(batch)
    no_cl = MadpotTask(_model(backbone, encoded, cl=False)).training_step(batch)
    no_pot = MadpotTask(_model(backbone, encoded, pot=False)).training_step(batch)
    no_seg = MadpotTask(_model(backbone, encoded, seg_loss=False)).training_step(batch)
    assert no_cl["cl"].item() == 0 and no_cl["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-6)
    assert no_pot["ce"].item() == 0 and no_pot["cl"].item() == pytest.approx(full["cl"].item(), rel=1e-6)
    assert "prompt_mass_max" not in no_pot
    assert no_seg["seg"].item() == 0 and no_seg["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-6)
    assert full["loss"].item() == pytest.approx((full["ce"] + full["cl"] + full["seg"]).item(), rel=1e-5)
    with pytest.raises(MadpotError, match="at least one of its branches"):
        MadpotConfig(pot=False, cl=False)


def _context():
    from medot.train import EpochContext

    return EpochContext(epoch=0, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------- data
def test_fewshot_lists_are_used_when_present_else_seeded_sampling(synthetic, tmp_path):
    listed = load_support(synthetic.mvfa_root, "Histo", 2, seed=5)
    lines = (synthetic.mvfa_root / "fewshot_seed" / "Histo" / "2-shot.txt").read_text().splitlines()
    assert [r.path.name for r in listed.abnormal] == lines[0].split(": ")[1].split()
    assert [r.path.name for r in listed.normal] == lines[1].split(": ")[1].split()
    assert "few-shot list" in listed.source
    copy = tmp_path / "mvfa"
    shutil.copytree(synthetic.mvfa_root, copy)
    shutil.rmtree(copy / "fewshot_seed")
    first, again = load_support(copy, "Histo", 2, seed=1), load_support(copy, "Histo", 2, seed=1)
    assert first == again and "drawn from valid/ with seed 1" in first.source
    assert {r.path.parent.parent.parent.name for r in first.records} == {"valid"}
    assert {r.label for r in first.normal} == {0} and {r.label for r in first.abnormal} == {1}
    with pytest.raises(MadpotError, match="fewer than --shots 16"):
        load_support(copy, "Histo", 16, seed=1)


def test_augmentations_move_the_mask_with_the_image():
    image = np.zeros((16, 16, 3), dtype=np.float32)
    image[2:5, 3:7] = 1.0
    mask = image[..., 0] > 0.5
    for view in range(len(AUGMENTATIONS)):
        out, moved = augment(image, mask, view)
        assert out.shape == image.shape and moved.shape == mask.shape
        if AUGMENTATIONS[view] in ("identity", "hflip", "vflip", "rot90", "rot180", "rot270") or "shift" in AUGMENTATIONS[view]:
            np.testing.assert_array_equal(out[..., 0] > 0.5, moved)
    assert len(AUGMENTATIONS) == 16


def test_test_images_never_reach_training(backbone, synthetic, monkeypatch):
    import medot.methods.madpot.data as data_module
    from medot.train import FeatureCache

    read, encoded_paths = [], []
    real_read, real_encode = data_module.read_image, FeatureCache.encode

    def spy_read(path, *args, **kwargs):
        read.append(Path(path))
        return real_read(path, *args, **kwargs)

    def spy_encode(self, backbone_, paths, **kwargs):
        encoded_paths.extend(Path(p) for p in paths)
        return real_encode(self, backbone_, paths, **kwargs)

    monkeypatch.setattr(data_module, "read_image", spy_read)
    monkeypatch.setattr(FeatureCache, "encode", spy_encode)
    config = MadpotConfig(layers=("block6",), n_prompts=2, views=2, epochs=1, batch_size=4)
    train_few_shot("madpot", backbone, [(synthetic.mvfa_root, "Phantom")], config, shots=2, progress=False,
                   log=lambda _: None)
    assert encoded_paths and all(p.parts[-4] == "valid" for p in encoded_paths)
    assert all("test" not in p.parts for p in read + encoded_paths)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_maps(backbone, synthetic, encoded, tmp_path):
    _, enc = encoded
    config = MadpotConfig(n_prompts=2, views=2, epochs=2, batch_size=4)
    fitted = fit("madpot", backbone, [enc], ["retinal OCT"], config, progress=False)
    save_madpot(tmp_path / "model", fitted.model, backbone=backbone.name, image_size=64)
    detector = load_madpot(tmp_path / "model", backbone)
    from medot.data.io import read_image

    images = [read_image(p).rgb() for p in sorted((synthetic.mvfa_root / "Retina_AD" / "test" / "Ungood" / "img").glob("*.png"))[:3]]
    maps, scores = detector.predict(images)
    tokens = detector.tokens(images)
    expected_maps, expected_scores = fitted.model(tokens, (64, 64))
    torch.testing.assert_close(maps, expected_maps.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(scores, expected_scores.cpu(), rtol=0, atol=0)
    found = detector.assignments(images, "block3")
    assert found["prompt"].shape == (3, 16) and int(found["prompt"].max()) < 4
    assert float(found["mass"].max()) <= 1 + 1e-4

    mvfa = fit("mvfa", backbone, [enc], ["retinal OCT"], config, progress=False)
    save_madpot(tmp_path / "mvfa", mvfa.model, backbone=backbone.name, image_size=64)
    again = load_madpot(tmp_path / "mvfa", backbone)
    torch.testing.assert_close(again.predict(images)[0], mvfa.model(tokens, (64, 64))[0].cpu(), rtol=0, atol=0)
    with pytest.raises(MedotError, match="partial-OT assignment exists only for MADPOT"):
        again.assignments(images)


def test_injected_abnormal_region_scores_above_normal_tissue_after_short_training(backbone, synthetic):
    from medot.data.io import read_image
    from medot.methods.pradot.data import view_mask, read_mask

    config = MadpotConfig(layers=("block3", "block6"), n_prompts=2, views=4, epochs=10, batch_size=8)
    fitted, _, _ = train_few_shot("madpot", backbone, [(synthetic.mvfa_root, "Histo")], config, shots=2,
                                  progress=False, log=lambda _: None)
    folder = synthetic.mvfa_root / "Histo_AD" / "test" / "Ungood"
    inside, outside = [], []
    for path in sorted((folder / "img").glob("*.png")):
        image = read_image(path).rgb()
        tokens = {k: v for k, v in _tokens(backbone, image, fitted.model.layers).items()}
        anomaly_map = fitted.model(tokens, (64, 64))[0][0].numpy()
        mask = view_mask(backbone, read_mask(folder / "anomaly_mask" / path.name))
        inside.append(anomaly_map[mask].mean())
        outside.append(anomaly_map[~mask].mean())
    assert np.mean(np.array(inside) > np.array(outside)) >= 0.75 and np.mean(inside) > np.mean(outside)


def _tokens(backbone, image, layers):
    with torch.inference_mode():
        features = backbone.encode_image(backbone.transform_batch([image]), layers)
    return {layer: features.patch_tokens[layer].float() for layer in layers}


def test_epoch_selection_uses_valid_images_outside_the_support_never_test(backbone, synthetic):
    from medot.methods.madpot.data import load_validation

    support = load_support(synthetic.mvfa_root, "Phantom", 1, seed=1)
    held_out = load_validation(synthetic.mvfa_root, support, 1, seed=1)
    assert not set(held_out) & set(support.records)
    assert [r.label for r in held_out] == [0, 1] and {r.path.parts[-4] for r in held_out} == {"valid"}
    with pytest.raises(MadpotError, match="fewer than --validation 2"):
        load_validation(synthetic.mvfa_root, support, 2, seed=1)
    config = MadpotConfig(layers=("block6",), n_prompts=2, views=2, epochs=3, batch_size=4)
    fitted, _, _ = train_few_shot("madpot", backbone, [(synthetic.mvfa_root, "Phantom")], config, shots=1,
                                  progress=False, log=lambda _: None, validation=1)
    assert all("val_score" in record for record in fitted.result.history)
    best = max(fitted.result.history, key=lambda record: record["val_score"])
    assert fitted.result.best_epoch == best["epoch"]


def test_scoring_reuses_the_prompts_until_the_context_changes(backbone, encoded):
    _, enc = encoded
    model = _model(backbone, encoded).eval()
    tokens = {layer: t[:2] for layer, t in enc.tokens.items()}
    calls = []
    original = model.prompts.forward
    model.prompts.forward = lambda index: calls.append(index) or original(index)
    first = model(tokens, (16, 16))
    again = model(tokens, (16, 16))
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with torch.no_grad():
        model.prompts.context.add_(0.5)  # what an optimiser step does
    changed = model(tokens, (16, 16))
    assert len(calls) == 2 and not torch.equal(changed[1], first[1])
    with torch.enable_grad():
        model.object_prompts(torch.zeros(2, dtype=torch.long))  # training: always through the tower
    assert len(calls) == 3
