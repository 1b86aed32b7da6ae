"""FeatureCache: hits return the stored tensors without running the tower; any change of key misses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medot.backbones.base import ImageFeatures, Preprocess, VisionLanguageBackbone
from medot.errors import ImageReadError
from medot.train import FeatureCache, ViewAugmentation, augment_view


class TinyBackbone(VisionLanguageBackbone):
    """Two strided convs as the image tower (16 -> 8 -> 4 grid), an embedding table as the text tower."""

    feature_layers = ("conv1", "conv2")
    default_layers = ("conv2",)

    def __init__(self, name: str = "tiny") -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.name = name
        self.embed_dim = 6
        self.preprocess = Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.proj = nn.Linear(5, 6)
        self.embed = nn.Embedding(32, 6)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.image_calls = 0
        self.freeze()

    @property
    def logit_scale(self) -> float:
        return 100.0

    def encode_image(self, images, layers=None):
        self.image_calls += 1
        layers = self._check_layers(layers)
        first = F.relu(self.conv1(images))
        second = F.relu(self.conv2(first))
        maps = {"conv1": first, "conv2": second}
        return ImageFeatures(
            self.proj(second.mean(dim=(2, 3))),
            {layer: maps[layer].flatten(2).transpose(1, 2) for layer in layers},
            {layer: tuple(maps[layer].shape[-2:]) for layer in layers},
        )

    def tokenize(self, texts):
        ids = torch.zeros(len(texts), 8, dtype=torch.long)
        for row, text in enumerate(texts):
            codes = [1] + [ord(c) % 30 + 2 for c in text][:7]
            ids[row, : len(codes)] = torch.tensor(codes)
        return ids, (ids > 0).long()

    @property
    def token_embedding(self):
        return self.embed

    def encode_token_embeddings(self, embeddings, input_ids, attention_mask):
        mask = attention_mask[..., None].to(embeddings.dtype)
        return (embeddings * mask).sum(1) / mask.sum(1)


def _write_images(folder, count=3):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"image{index}.npy"
        np.save(path, rng.random((20 + 2 * index, 24, 3), dtype=np.float32))
        paths.append(path)
    return paths


class CountingReader:
    def __init__(self):
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return np.load(path)


@pytest.fixture
def setup(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    return TinyBackbone(), _write_images(images), FeatureCache(tmp_path / "cache"), CountingReader()


def test_second_call_is_all_hits_with_identical_tensors_and_no_encoding(setup):
    backbone, paths, cache, read = setup
    first = cache.encode(backbone, paths, layers=("conv1", "conv2"), views=3, batch_size=4, progress=False, read=read)
    assert (first.hits, first.misses) == (0, 9)
    assert first.embeddings.shape == (3, 3, 6)
    assert first.patch_tokens["conv1"].shape == (3, 3, 64, 4)
    assert first.patch_tokens["conv2"].shape == (3, 3, 16, 5)
    assert first.grids == {"conv1": (8, 8), "conv2": (4, 4)}
    assert backbone.image_calls == 3  # 9 views in batches of 4

    with torch.no_grad():
        direct = backbone.encode_image(backbone.transform_batch([np.load(p) for p in paths]), layers=("conv1",))
    torch.testing.assert_close(first.embeddings[:, 0], direct.embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.patch_tokens["conv1"][:, 0], direct.patch_tokens["conv1"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first.embeddings[:, 1], first.embeddings[:, 0])

    backbone.image_calls, read.calls = 0, 0
    second = FeatureCache(cache.root).encode(
        backbone, paths, layers=("conv2", "conv1"), views=3, progress=False, read=read
    )
    assert (second.hits, second.misses) == (9, 0)
    assert backbone.image_calls == 0 and read.calls == 0
    assert torch.equal(second.embeddings, first.embeddings)
    for layer in ("conv1", "conv2"):
        assert torch.equal(second.patch_tokens[layer], first.patch_tokens[layer])
    assert second.image_sha256 == first.image_sha256
    assert not list(cache.root.rglob("*.tmp"))


def test_changing_content_backbone_layers_or_seed_misses(setup):
    backbone, paths, cache, read = setup
    cache.encode(backbone, paths, views=2, seed=0, progress=False, read=read)

    np.save(paths[1], np.zeros((20, 24, 3), dtype=np.float32))
    edited = cache.encode(backbone, paths, views=2, seed=0, progress=False, read=read)
    assert (edited.hits, edited.misses) == (4, 2)

    renamed = cache.encode(TinyBackbone("tiny-v2"), paths, views=2, seed=0, progress=False, read=read)
    assert (renamed.hits, renamed.misses) == (0, 6)

    with_layers = cache.encode(backbone, paths, layers=("conv2",), views=2, seed=0, progress=False, read=read)
    assert (with_layers.hits, with_layers.misses) == (0, 6)

    other_reader = cache.encode(backbone, paths, views=2, seed=0, progress=False, read=read, read_key="windowed")
    assert (other_reader.hits, other_reader.misses) == (0, 6)

    # view 0 is the un-augmented image, shared by every seed; view 1 depends on the seed
    reseeded = cache.encode(backbone, paths, views=2, seed=1, progress=False, read=read)
    assert (reseeded.hits, reseeded.misses) == (3, 3)
    assert torch.equal(reseeded.embeddings[:, 0], edited.embeddings[:, 0])
    assert not torch.allclose(reseeded.embeddings[:, 1], edited.embeddings[:, 1])


def test_truncated_or_mislabelled_entry_is_recomputed(setup):
    backbone, paths, cache, read = setup
    original = cache.encode(backbone, paths, layers=("conv1",), progress=False, read=read)
    entries = sorted(cache.root.rglob("*.safetensors"))
    assert len(entries) == 3
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])
    entries[1].write_bytes(entries[2].read_bytes())  # a valid file under another entry's name

    backbone.image_calls = 0
    repaired = cache.encode(backbone, paths, layers=("conv1",), progress=False, read=read)
    assert (repaired.hits, repaired.misses) == (1, 2)
    assert backbone.image_calls == 1
    assert torch.equal(repaired.embeddings, original.embeddings)
    assert torch.equal(repaired.patch_tokens["conv1"], original.patch_tokens["conv1"])

    again = cache.encode(backbone, paths, layers=("conv1",), progress=False, read=read)
    assert (again.hits, again.misses) == (3, 0)


def test_flipped_bits_or_non_finite_entries_are_recomputed_not_served(setup):
    from safetensors import safe_open
    from safetensors.torch import save_file

    backbone, paths, cache, read = setup
    original = cache.encode(backbone, paths, progress=False, read=read)
    entries = sorted(cache.root.rglob("*.safetensors"))
    with safe_open(str(entries[0]), framework="pt") as handle:
        metadata = handle.metadata()
        embedding = handle.get_tensor("embedding").clone()
    # flip the top exponent bits of the last float32 in the file (the data section ends the file)
    data = bytearray(entries[0].read_bytes())
    data[-1] ^= 0x7E
    entries[0].write_bytes(bytes(data))
    with safe_open(str(entries[0]), framework="pt") as handle:
        assert not torch.equal(handle.get_tensor("embedding"), embedding)  # still a readable entry
    # NaN values under the entry's own key, grids and even a freshly computed checksum
    from medot.train.feature_cache import tensors_sha256

    poisoned = {"embedding": torch.full_like(embedding, float("nan"))}
    save_file(poisoned, str(entries[1]), metadata={**metadata, "sha256": tensors_sha256(poisoned)})
    with safe_open(str(entries[2]), framework="pt") as handle:
        third = dict(handle.metadata())
    save_file({"embedding": torch.zeros_like(embedding)}, str(entries[2]), metadata=third)  # stale checksum

    backbone.image_calls = 0
    repaired = cache.encode(backbone, paths, progress=False, read=read)
    assert (repaired.hits, repaired.misses) == (0, 3)
    assert torch.equal(repaired.embeddings, original.embeddings)
    again = cache.encode(backbone, paths, progress=False, read=read)
    assert (again.hits, again.misses) == (3, 0)


def test_augmented_views_are_deterministic_and_leave_the_global_rng_alone():
    image = np.random.default_rng(1).random((40, 50, 3), dtype=np.float32)
    augmentation = ViewAugmentation(scale=(0.3, 0.6))
    state = torch.get_rng_state()
    view = augment_view(image, view=1, seed=7, image_sha256="ab" * 32, augmentation=augmentation)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(view, augment_view(image, view=1, seed=7, image_sha256="ab" * 32, augmentation=augmentation))
    area = view.shape[0] * view.shape[1] / (40 * 50)
    assert 0.25 <= area <= 0.65  # within scale, up to rounding of the crop's sides
    others = [
        augment_view(image, view=2, seed=7, image_sha256="ab" * 32, augmentation=augmentation),
        augment_view(image, view=1, seed=8, image_sha256="ab" * 32, augmentation=augmentation),
        augment_view(image, view=1, seed=7, image_sha256="cd" * 32, augmentation=augmentation),
    ]
    assert all(other.shape != view.shape or not np.array_equal(other, view) for other in others)
    assert augment_view(image, view=0, seed=7, image_sha256="ab" * 32, augmentation=augmentation) is image


def test_missing_image_is_a_plain_error(setup, tmp_path):
    backbone, paths, cache, read = setup
    with pytest.raises(ImageReadError, match="nowhere.npy"):
        cache.encode(backbone, [*paths, tmp_path / "nowhere.npy"], progress=False, read=read)
