"""The embedded ``lite`` backbone: packaged weights, ImageNet head, text side, patch tokens, asset."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import Ridge

from medot.backbones import create_backbone, lite, lite_projection
from medot.backbones.base import CONTEXT_PLACEHOLDER
from medot.errors import BackboneUnavailableError

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
CAT_PROMPT, COFFEE_PROMPT = "a photo of a cat.", "a photo of a cup of coffee."


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("lite", device="cpu")


@pytest.fixture(scope="module")
def photos(backbone):
    """chelsea (a cat) and coffee (an espresso), preprocessed: ``[2, 3, 224, 224]``."""
    return backbone.transform_batch(
        [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    )


@pytest.fixture(scope="module")
def packaged_state():
    return torch.load(lite.efficientnet_weights_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_tower():
    """The timm tower with the packaged weights, BatchNorm not folded."""
    return lite.load_image_tower()


# ---------------------------------------------------------------------------------- weights
def test_packaged_checkpoint_maps_onto_timm_by_position(reference_tower, packaged_state):
    loaded = reference_tower.state_dict()
    assert len(packaged_state) == len(loaded) == 296
    assert list(packaged_state)[-2:] == ["_fc.weight", "_fc.bias"]
    assert list(loaded)[-2:] == ["classifier.weight", "classifier.bias"]
    pairs = zip(packaged_state.items(), loaded.items(), strict=True)
    for (source_key, source), (target_key, target) in pairs:
        assert source.shape == target.shape, (source_key, target_key)
        assert torch.equal(source, target), (source_key, target_key)


def test_mapping_refuses_a_checkpoint_that_does_not_fit(reference_tower, packaged_state):
    target = reference_tower.state_dict()
    truncated = dict(list(packaged_state.items())[:-1])
    with pytest.raises(BackboneUnavailableError, match="295 tensors"):
        lite.map_state_dict(truncated, target)
    reshaped = dict(packaged_state)
    reshaped["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(BackboneUnavailableError, match=r"_fc\.weight \(10, 1280\).*classifier\.weight"):
        lite.map_state_dict(reshaped, target)


# ---------------------------------------------------------------------------------- image side
def test_imagenet_head_recognises_cat_and_espresso(backbone, photos):
    with torch.no_grad():
        logits = backbone.imagenet_logits(photos)
    assert int(logits[0].argmax()) in CAT_CLASSES
    assert int(logits[1].argmax()) == ESPRESSO


def test_folded_one_pass_matches_the_timm_forward(backbone, reference_tower, photos):
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in backbone.image_tower.modules())
    with torch.no_grad():
        reference = reference_tower(photos)
        assert torch.allclose(backbone.imagenet_logits(photos), reference, atol=1e-3)
        pooled = reference_tower.forward_head(reference_tower.forward_features(photos), pre_logits=True)
        assert torch.allclose(backbone.encode_image(photos, layers=()).embedding, pooled, atol=1e-4)


def test_patch_tokens_shapes_and_head_tokens_pool_to_the_embedding(backbone, photos):
    with torch.no_grad():
        features = backbone.encode_image(photos, layers=backbone.feature_layers)
    expected = {
        "stride8": ((28, 28), 40),
        "stride16": ((14, 14), 112),
        "stride32": ((7, 7), 320),
        "head": ((7, 7), 1280),
    }
    for layer, (grid, channels) in expected.items():
        assert features.grids[layer] == grid
        assert features.patch_tokens[layer].shape == (2, grid[0] * grid[1], channels)
    assert features.embedding.shape == (2, backbone.embed_dim)
    assert torch.allclose(features.patch_tokens["head"].mean(1), features.embedding, atol=1e-5)
    assert features.patch_map("stride16").shape == (2, 112, 14, 14)


def test_chunked_cpu_batches_equal_one_image_at_a_time(backbone, photos):
    images = torch.cat([photos, photos.flip(-1), photos.flip(-2)])  # 6 > CPU_CHUNK: two chunks
    assert len(images) > lite.CPU_CHUNK
    with torch.no_grad():
        batched = backbone.encode_image(images, layers=("stride16",))
        for index in range(len(images)):
            alone = backbone.encode_image(images[index : index + 1], layers=("stride16",))
            assert torch.allclose(batched.embedding[index], alone.embedding[0], atol=1e-4)
            assert torch.allclose(batched.patch_tokens["stride16"][index], alone.patch_tokens["stride16"][0], atol=1e-4)


def test_default_and_empty_layer_choices(backbone, photos):
    with torch.no_grad():
        default = backbone.encode_image(photos)
        none = backbone.encode_image(photos, layers=())
    assert tuple(default.patch_tokens) == ("stride8", "stride16")
    assert none.patch_tokens == {}
    assert torch.allclose(default.embedding, none.embedding)


def test_unknown_layer_is_refused(backbone, photos):
    with pytest.raises(ValueError, match="stride4"):
        backbone.encode_image(photos, layers=["stride4"])


# ---------------------------------------------------------------------------------- text side
def test_zero_shot_through_the_text_side(backbone, photos):
    with torch.no_grad():
        images = backbone.encode_image(photos, layers=()).embedding
        logits = backbone.similarity_logits(images, backbone.encode_text([CAT_PROMPT, COFFEE_PROMPT]))
    assert logits[0, 0] > logits[0, 1]  # chelsea: cat
    assert logits[1, 1] > logits[1, 0]  # coffee: cup of coffee


def test_sentence_embedding_matches_sentence_transformers(backbone):
    texts = [CAT_PROMPT, "a chest x-ray with a small left pleural effusion and no pneumothorax"]
    reference_model = SentenceTransformer(str(lite.minilm_dir()), device="cpu")
    reference = reference_model.encode(texts, convert_to_tensor=True)
    ids, mask = backbone.tokenize(texts)
    with torch.no_grad():
        ours = lite.sentence_embeddings(backbone.text_tower, backbone.token_embedding(ids), mask)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_token_embedding_path_equals_encode_text(backbone):
    texts = [CAT_PROMPT, "an x-ray of a hand."]
    ids, mask = backbone.tokenize(texts)
    with torch.no_grad():
        through_embeddings = backbone.encode_token_embeddings(backbone.token_embedding(ids), ids, mask)
        direct = backbone.encode_text(texts)
    assert through_embeddings.shape == (2, backbone.embed_dim)
    assert torch.allclose(through_embeddings, direct, atol=1e-6)


def test_mean_pooling_ignores_padding(backbone):
    longer = "a photo of a cat sitting on a wooden table next to a cup of coffee in the morning."
    with torch.no_grad():
        alone = backbone.encode_text([CAT_PROMPT])
        batched = backbone.encode_text([CAT_PROMPT, longer])
    _, mask = backbone.tokenize([CAT_PROMPT, longer])
    assert mask[0].sum() < mask[1].sum()  # the short text really is padded
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_tokenize_pads_to_longest_and_truncates(backbone):
    ids, mask = backbone.tokenize(["a cat.", "a cat on a mat."])
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].tolist() == [1] * 5 + [0] * 3  # [CLS] a cat . [SEP] + padding
    ids, _ = backbone.tokenize(["word " * 400])
    assert ids.shape == (1, 256)  # all-MiniLM-L6-v2's max_seq_length


def test_prompt_tokens_place_context_after_cls(backbone):
    placeholder_ids, _ = backbone.tokenize([CONTEXT_PLACEHOLDER])
    assert placeholder_ids.shape == (1, 3)  # [CLS] x [SEP]: the placeholder is one token
    prompts = backbone.prompt_tokens(["pneumonia", "normal lung"], n_ctx=4)
    assert prompts.context_slice == slice(1, 5)
    assert bool((prompts.input_ids[:, 1:5] == placeholder_ids[0, 1]).all())
    context = torch.zeros(2, 4, 384)
    embedded = backbone.token_embedding(prompts.input_ids).detach().clone()
    embedded[:, prompts.context_slice] = context
    with torch.no_grad():
        out = backbone.encode_token_embeddings(embedded, prompts.input_ids, prompts.attention_mask)
    assert out.shape == (2, backbone.embed_dim) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------- state
def test_backbone_is_frozen_and_stays_in_eval(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not any(module.training for module in backbone.modules())
    assert backbone.name == "lite" and backbone.embed_dim == 1280 and backbone.is_clinical is False


def test_status_reports_a_missing_asset(monkeypatch, tmp_path):
    assert lite.lite_status().available
    monkeypatch.setattr(lite, "PROJECTION_FILE", tmp_path / "text_projection.safetensors")
    status = lite.lite_status()
    assert not status.available
    assert "python -m medot.backbones.lite_projection" in status.detail
    with pytest.raises(BackboneUnavailableError, match="lite_projection"):
        lite.load_text_projection()


# ---------------------------------------------------------------------------------- projection fit
def test_ridge_matches_scikit_learn_and_the_svd_path():
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(60, 12, generator=generator, dtype=torch.float64)
    y = torch.randn(60, 7, generator=generator, dtype=torch.float64)
    ours = lite_projection.fit_ridge(u, y, 0.7)
    reference = Ridge(alpha=0.7, fit_intercept=True).fit(u.numpy(), y.numpy())
    assert np.allclose(ours.weight.numpy(), reference.coef_, atol=1e-10)
    assert np.allclose(ours.bias.numpy(), reference.intercept_, atol=1e-10)
    path = list(lite_projection.ridge_path_predictions(u[:50], y[:50], u[50:], [0.1, 3.0]))
    for ridge_lambda, predicted in zip([0.1, 3.0], path, strict=True):
        direct = lite_projection.fit_ridge(u[:50], y[:50], ridge_lambda)(u[50:])
        assert torch.allclose(predicted, direct, atol=1e-10)


def test_retrieval_accuracy_by_hand():
    keys = torch.eye(3, dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.2, 0.0], [0.9, 0.5, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    assert lite_projection.retrieval_accuracy(queries, keys, 1) == pytest.approx(2 / 3)
    assert lite_projection.retrieval_accuracy(queries, keys, 2) == pytest.approx(1.0)


def test_refitting_reproduces_the_shipped_asset(backbone):
    fit, _, _ = lite_projection.fit_projection(backbone.image_tower, backbone.text_tower, backbone.tokenizer)
    shipped = load_file(lite.PROJECTION_FILE)
    report = json.loads(lite.PROJECTION_FILE.with_suffix(".json").read_text())
    assert fit.ridge_lambda == pytest.approx(report["ridge_lambda"])
    refit = lite_projection.asset_tensors(fit)
    assert torch.allclose(refit["weight"], shipped["weight"], atol=1e-5)
    assert torch.allclose(refit["bias"], shipped["bias"], atol=1e-5)
    assert float(shipped["logit_scale"]) == pytest.approx(fit.logit_scale, rel=1e-4)
    assert backbone.logit_scale == pytest.approx(float(shipped["logit_scale"]))
    assert torch.allclose(backbone.text_projection.weight, shipped["weight"])
    assert report["heldout_retrieval"]["top1"] > 0.1  # ten times chance on 100 unseen classes


def test_loading_the_text_tower_prints_no_progress_bar(capfd):
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()
    lite.load_text_tower()
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # the caller's setting is restored
