"""The open_clip backbone on tiny models written to disk (tests/tiny_open_clip.py), fully offline.

Two tower kinds: BiomedCLIP's (timm ViT + transformers BERT, [CLS] pooling) and native CLIP's
(open_clip ViT + causal text transformer, end-of-text pooling). Each result is checked against
open_clip's own forward pass on the same weights.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file
from tiny_open_clip import (
    LOGIT_SCALE,
    MEAN,
    STD,
    TINY_TEXT_REPO,
    minilm_dir,
    populate_hub_cache,
    write_tiny_biomedclip,
    write_tiny_clip,
)

from medot.backbones.factory import create_backbone
from medot.backbones.open_clip_backbone import (
    BIOMEDCLIP_DIR_ENV,
    BIOMEDCLIP_REPO,
    BIOMEDCLIP_TEXT_REPO,
    biomedclip_status,
    evenly_spaced_blocks,
    load_open_clip,
)
from medot.errors import BackboneUnavailableError

TEXTS = ["a chest x-ray with pleural effusion", "normal", "X X X tumor."]
KINDS = ["biomedclip_like", "clip"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_models")
    return {"biomedclip_like": write_tiny_biomedclip(root / "hf"), "clip": write_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def backbones(folders):
    """Both tiny backbones, loaded with every socket connection failing: nothing may touch the network."""

    def no_network(*args, **kwargs):
        raise AssertionError("the backbone tried to reach the network")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        return {kind: load_open_clip(f"local-dir:{folder}") for kind, folder in folders.items()}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(BIOMEDCLIP_DIR_ENV, raising=False)
    return cache


def _block_outputs(backbone, images):
    """Reference patch tokens: forward hooks on every block of the image tower."""
    visual = backbone.model.visual
    if hasattr(visual, "trunk"):
        blocks, n_prefix = visual.trunk.blocks, visual.trunk.num_prefix_tokens
    else:
        blocks, n_prefix = visual.transformer.resblocks, 1
    outputs = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o[:, n_prefix:])) for b in blocks]
    try:
        embedding = backbone.model.encode_image(images)
    finally:
        for handle in handles:
            handle.remove()
    return embedding, {f"block{i + 1}": out for i, out in enumerate(outputs)}


# ---------------------------------------------------------------------- text side
@pytest.mark.parametrize("kind", KINDS)
def test_token_embedding_path_equals_open_clip_encode_text(backbones, folders, kind):
    backbone = backbones[kind]
    reference_ids = open_clip.get_tokenizer(f"local-dir:{folders[kind]}")(TEXTS)
    input_ids, attention_mask = backbone.tokenize(TEXTS)
    assert torch.equal(input_ids, reference_ids)
    pad_id = 0  # BERT's [PAD] and CLIP's padding are both 0
    assert torch.equal(attention_mask, (reference_ids != pad_id).long())

    ours = backbone.encode_token_embeddings(backbone.token_embedding(input_ids), input_ids, attention_mask)
    reference = backbone.model.encode_text(reference_ids)
    assert ours.shape == (len(TEXTS), backbone.embed_dim)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.encode_text(TEXTS), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_prompt_context_but_not_padding(backbones, kind):
    """Prompt learning differentiates through the frozen tower; padding (BERT: masked, CLIP: after the
    end-of-text token under the causal mask) must not influence the embedding."""
    backbone = backbones[kind]
    prompts = backbone.prompt_tokens(["pleural effusion"], n_ctx=4)
    embeddings = backbone.token_embedding(prompts.input_ids).detach().requires_grad_(True)
    backbone.encode_token_embeddings(embeddings, prompts.input_ids, prompts.attention_mask).sum().backward()
    per_position = embeddings.grad.abs().sum(-1)[0]
    assert (per_position[prompts.context_slice] > 0).all()
    padding = prompts.attention_mask[0] == 0
    assert padding.any() and (per_position[padding] == 0).all()
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_placeholders_follow_the_start_token(backbones, kind):
    backbone = backbones[kind]
    prompts = backbone.prompt_tokens(["tumor", "normal lung tissue"], n_ctx=3)
    placeholder = backbone.tokenize(["X"])[0][0, 1]
    assert prompts.context_slice == slice(1, 4)
    assert (prompts.input_ids[:, 1:4] == placeholder).all()
    assert (prompts.input_ids[:, 4] != placeholder).all()


# ---------------------------------------------------------------------- image side
@pytest.mark.parametrize("kind", KINDS)
def test_one_pass_gives_embedding_and_block_outputs(backbones, kind):
    backbone = backbones[kind]
    size = backbone.preprocess.image_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference_embedding, reference_blocks = _block_outputs(backbone, images)

    features = backbone.encode_image(images, layers=backbone.feature_layers)
    torch.testing.assert_close(features.embedding, reference_embedding)
    grid = (size // 16, size // 16) if kind == "biomedclip_like" else (size // 8, size // 8)
    for layer in backbone.feature_layers:
        assert features.grids[layer] == grid
        torch.testing.assert_close(features.patch_tokens[layer], reference_blocks[layer])
        feature_map = features.patch_map(layer)  # row-major: token r * W + c is pixel row r, column c
        torch.testing.assert_close(feature_map[:, :, 1, 2], reference_blocks[layer][:, 1 * grid[1] + 2])


def test_default_layers_are_four_evenly_spaced_blocks(backbones):
    assert evenly_spaced_blocks(12) == (3, 6, 9, 12)
    assert evenly_spaced_blocks(24) == (6, 12, 18, 24)
    assert backbones["biomedclip_like"].default_layers == ("block2", "block3", "block5", "block6")
    assert backbones["clip"].default_layers == ("block1", "block2", "block3", "block4")
    features = backbones["clip"].encode_image(torch.zeros(1, 3, 32, 32))
    assert tuple(features.patch_tokens) == backbones["clip"].default_layers


def test_layer_choice_order_and_no_layers(backbones):
    backbone = backbones["biomedclip_like"]
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    features = backbone.encode_image(images, layers=["block5", "block1"])
    assert list(features.patch_tokens) == ["block5", "block1"]
    _, reference = _block_outputs(backbone, images)
    torch.testing.assert_close(features.patch_tokens["block5"], reference["block5"])
    bare = backbone.encode_image(images, layers=())
    assert bare.patch_tokens == {} and bare.grids == {}
    torch.testing.assert_close(bare.embedding, features.embedding)


def test_unknown_layer_is_a_value_error(backbones):
    with pytest.raises(ValueError, match="block7"):
        backbones["biomedclip_like"].encode_image(torch.zeros(1, 3, 64, 64), layers=["block7"])


# ---------------------------------------------------------------------- loading
def test_attributes_come_from_the_model_files(backbones, folders):
    hf, clip = backbones["biomedclip_like"], backbones["clip"]
    assert hf.name == f"local-dir:{folders['biomedclip_like']}" and not hf.is_clinical
    assert (hf.embed_dim, clip.embed_dim) == (32, 24)
    assert hf.logit_scale == pytest.approx(LOGIT_SCALE, rel=1e-5)
    assert (hf.preprocess.image_size, hf.preprocess.interpolation) == (64, "bilinear")
    assert (clip.preprocess.image_size, clip.preprocess.interpolation) == (32, "bicubic")
    assert hf.preprocess.mean == pytest.approx(MEAN) and hf.preprocess.std == pytest.approx(STD)
    saved = load_file(str(folders["biomedclip_like"] / "open_clip_model.safetensors"))
    loaded = hf.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.items())
    saved = torch.load(folders["clip"] / "open_clip_pytorch_model.bin", weights_only=True)
    assert all(torch.equal(clip.model.state_dict()[name], tensor) for name, tensor in saved.items())


def test_factory_returns_a_frozen_backbone(folders):
    backbone = create_backbone(f"local-dir:{folders['clip']}", device="cpu")
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not any(m.training for m in backbone.modules())


def test_empty_folder_names_config_and_weights(tmp_path):
    with pytest.raises(BackboneUnavailableError) as error:
        load_open_clip(f"local-dir:{tmp_path}")
    message = str(error.value)
    assert "open_clip_config.json" in message and "open_clip_pytorch_model.bin" in message
    assert f"into {tmp_path}/" in message


def test_missing_weights_are_named(tmp_path, folders):
    (tmp_path / "open_clip_config.json").write_text((folders["clip"] / "open_clip_config.json").read_text())
    with pytest.raises(BackboneUnavailableError, match="open_clip_pytorch_model.bin") as error:
        load_open_clip(f"local-dir:{tmp_path}")
    assert "open_clip_config.json" not in str(error.value)


def test_missing_text_config_and_tokenizer_are_named(tmp_path, empty_hub_cache):
    folder = write_tiny_biomedclip(tmp_path / "model", text_config=False, tokenizer=False)
    with pytest.raises(BackboneUnavailableError) as error:
        load_open_clip(f"local-dir:{folder}")
    message = str(error.value)
    assert f"https://huggingface.co/{TINY_TEXT_REPO}" in message
    assert f"{folder}/all-MiniLM-L6-v2/" in message
    assert "config.json" in message and "vocab.txt" in message
    assert "open_clip_config.json" not in message and "Traceback" not in message


def test_corrupt_weights_raise_a_plain_error(tmp_path, folders):
    (tmp_path / "open_clip_config.json").write_text((folders["clip"] / "open_clip_config.json").read_text())
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(BackboneUnavailableError, match="could not load"):
        load_open_clip(f"local-dir:{tmp_path}")


def test_unknown_open_clip_names(empty_hub_cache):
    with pytest.raises(BackboneUnavailableError, match="MODEL/PRETRAINED"):
        load_open_clip("open_clip:No-Such-Model/openai")
    with pytest.raises(BackboneUnavailableError, match="laion2b_s34b_b79k"):
        load_open_clip("open_clip:ViT-B-32/no_such_tag")
    with pytest.raises(BackboneUnavailableError) as error:
        load_open_clip("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(error.value)
    assert "open_clip_pytorch_model.bin" in str(error.value)


# ---------------------------------------------------------------------- BiomedCLIP and the hub cache
def test_biomedclip_status_without_files_explains_what_to_download(tmp_path):
    """A fresh process with an empty $HF_HOME and HF_HUB_OFFLINE=1, as on an offline machine."""
    env = {k: v for k, v in os.environ.items() if k not in (BIOMEDCLIP_DIR_ENV, "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    code = textwrap.dedent(
        """
        import json
        from medot.backbones.open_clip_backbone import biomedclip_status
        status = biomedclip_status()
        print(json.dumps({"available": status.available, "detail": status.detail}))
        """
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert status["available"] is False
    detail = status["detail"]
    for expected in (
        f"https://huggingface.co/{BIOMEDCLIP_REPO}",
        "open_clip_config.json",
        "open_clip_pytorch_model.bin",
        f"https://huggingface.co/{BIOMEDCLIP_TEXT_REPO}",
        "DIR/BiomedNLP-BiomedBERT-base-uncased-abstract/",
        f"{BIOMEDCLIP_DIR_ENV}=DIR",
    ):
        assert expected in detail


def test_biomedclip_from_the_hub_cache(empty_hub_cache, folders, backbones):
    """BiomedCLIP's files as open_clip leaves them in the cache: the open_clip repository holds config
    and weights, the text repository holds the text tower's config.json and the tokenizer."""
    folder = folders["biomedclip_like"]
    populate_hub_cache(empty_hub_cache, BIOMEDCLIP_REPO, {
        name: folder / name for name in ("open_clip_config.json", "open_clip_model.safetensors")
    })
    populate_hub_cache(empty_hub_cache, TINY_TEXT_REPO, {
        "config.json": folder / "all-MiniLM-L6-v2" / "config.json",
        **{name: minilm_dir() / name for name in ("vocab.txt", "tokenizer_config.json")},
    })
    assert biomedclip_status().available
    backbone = load_open_clip("biomedclip")
    assert backbone.name == "biomedclip" and backbone.is_clinical
    assert load_open_clip(f"hf-hub:{BIOMEDCLIP_REPO}").is_clinical
    # same weights and tokenizer as the local-dir copy of the same model
    torch.testing.assert_close(backbone.encode_text(TEXTS), backbones["biomedclip_like"].encode_text(TEXTS))


def test_biomedclip_dir_is_used_first(monkeypatch, empty_hub_cache, folders, backbones):
    monkeypatch.setenv(BIOMEDCLIP_DIR_ENV, str(folders["biomedclip_like"]))
    status = biomedclip_status()
    assert status.available and str(folders["biomedclip_like"]) in status.detail
    backbone = load_open_clip("biomedclip")
    assert backbone.is_clinical
    torch.testing.assert_close(backbone.encode_text(TEXTS), backbones["biomedclip_like"].encode_text(TEXTS))


def test_incomplete_biomedclip_dir_is_reported(tmp_path, monkeypatch, empty_hub_cache):
    monkeypatch.setenv(BIOMEDCLIP_DIR_ENV, str(tmp_path))
    status = biomedclip_status()
    assert not status.available
    assert f"{BIOMEDCLIP_DIR_ENV}={tmp_path}" in status.detail
    assert f"{tmp_path}/BiomedNLP-BiomedBERT-base-uncased-abstract/" in status.detail
