"""The one backbone interface every medot method uses.

:class:`ImageBackbone` is the image side alone (a frozen image tower: preprocessing,
:meth:`~ImageBackbone.encode_image`, patch tokens); image-only methods (PatchCore, the linear
probe, an OPTiML-pretrained ``encoder:PATH``) need nothing more. A :class:`VisionLanguageBackbone`
extends it with a frozen text tower sharing a joint embedding space. Methods see only this interface:

* image side: :attr:`preprocess` (size, mean, std), :meth:`transform` (array/PIL -> tensor) and
  :meth:`encode_image`, which returns the global joint-space embedding and patch tokens from
  intermediate layers with their grids;
* text side: :meth:`tokenize`, :meth:`encode_text`, and the continuous-embedding path
  (:attr:`token_embedding`, :meth:`prompt_tokens`, :meth:`encode_token_embeddings`) that
  CoOp-style prompt learning needs: learnable context vectors are written into the embedded
  prompt at :attr:`PromptTokens.context_slice` and the frozen tower is run on the result;
* :attr:`embed_dim`, :attr:`logit_scale`, :attr:`name`, ``.to(device, dtype)``; frozen by default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """How raw images become tower inputs: resize the short side, centre-crop, normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass
class ImageFeatures:
    """Output of :meth:`VisionLanguageBackbone.encode_image`.

    ``embedding`` is ``[B, D]`` in the joint space (not normalised). ``patch_tokens[layer]`` is
    ``[B, H*W, C_layer]`` in row-major grid order and ``grids[layer] == (H, W)``.
    """

    embedding: torch.Tensor
    patch_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)

    def patch_map(self, layer: str) -> torch.Tensor:
        """Patch tokens of ``layer`` as a ``[B, C, H, W]`` feature map."""
        h, w = self.grids[layer]
        tokens = self.patch_tokens[layer]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


@dataclass
class PromptTokens:
    """Tokenised prompts ``[prefix] X X ... X <class name>. [suffix]`` for prompt learning.

    ``context_slice`` indexes the sequence positions held by the placeholder context tokens; it is
    the same for every row, so learnable context ``[N, n_ctx, E]`` can be written in one slice.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    context_slice: slice

    def to(self, device: torch.device | str) -> PromptTokens:
        return PromptTokens(self.input_ids.to(device), self.attention_mask.to(device), self.context_slice)


CONTEXT_PLACEHOLDER = "X"


class ImageBackbone(nn.Module, ABC):
    """A frozen image tower: preprocessing, global embedding and patch tokens (no text side)."""

    name: str
    embed_dim: int
    preprocess: Preprocess
    #: intermediate layers :meth:`encode_image` can return patch tokens from, shallow to deep
    feature_layers: tuple[str, ...]
    #: the layers used when a caller does not choose
    default_layers: tuple[str, ...]
    #: False for anything not trained on medical data; the UI says so on screen
    is_clinical: bool = False

    # ------------------------------------------------------------------ state
    def freeze(self) -> ImageBackbone:
        """Stop gradients to every weight and keep the towers in eval mode (dropout off)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageBackbone:  # noqa: ARG002 - frozen towers
        """The towers are frozen: they stay in eval mode whatever the caller asks."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ image side
    def transform(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """One image (PIL, or ``HxW`` / ``HxWx3`` array scaled to [0, 1]) -> ``[3, S, S]`` input."""
        if isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        else:
            array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an HxW or HxWx3 image, got shape {array.shape}")
        x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
        size = self.preprocess.image_size
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
        mode = self.preprocess.interpolation
        x = F.interpolate(x, size=new_hw, mode=mode, align_corners=False, antialias=True)
        top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
        x = x[..., top : top + size, left : left + size].clamp(0.0, 1.0)
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        return ((x - mean) / std)[0]

    def transform_batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Several images -> ``[B, 3, S, S]`` on the backbone's device and dtype."""
        return torch.stack([self.transform(im) for im in images]).to(self.device, self.dtype)

    @abstractmethod
    def encode_image(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> ImageFeatures:
        """``[B, 3, S, S]`` preprocessed images -> global embedding and patch tokens of ``layers``
        (``None``: :attr:`default_layers`; ``()``: no patch tokens)."""

    def _check_layers(self, layers: Sequence[str] | None) -> tuple[str, ...]:
        chosen = self.default_layers if layers is None else tuple(layers)
        unknown = [layer for layer in chosen if layer not in self.feature_layers]
        if unknown:
            raise ValueError(f"{self.name} has no layer(s) {unknown}; choose from {list(self.feature_layers)}")
        return chosen



class VisionLanguageBackbone(ImageBackbone):
    """A frozen image tower and text tower sharing a joint embedding space."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """Multiplier applied to cosine similarities before the softmax (CLIP's ``exp(t)``)."""

    # ------------------------------------------------------------------ text side
    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ``(input_ids [N, L], attention_mask [N, L])`` on the backbone's device."""

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The text tower's token-embedding table (ids -> ``[E]`` vectors)."""

    @abstractmethod
    def encode_token_embeddings(
        self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Run the text tower on continuous token embeddings ``[N, L, E]`` and pool into the joint
        space ``[N, D]``. ``input_ids`` locate the pooled position (CLIP: end-of-text token);
        ``attention_mask`` marks real tokens (BERT towers, mean pooling)."""

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> joint-space embeddings ``[N, D]`` (not normalised)."""
        if len(texts) == 0:
            raise ValueError("encode_text needs at least one text")
        input_ids, attention_mask = self.tokenize(list(texts))
        embeddings = self.token_embedding(input_ids)
        return self.encode_token_embeddings(embeddings, input_ids, attention_mask)

    def prompt_tokens(self, class_names: Sequence[str], n_ctx: int) -> PromptTokens:
        """Tokenise ``"X X ... X {class}."`` (``n_ctx`` placeholders) for each class name and locate
        the placeholder positions, which must directly follow the tower's start token."""
        if n_ctx < 1:
            raise ValueError("n_ctx must be at least 1")
        prompts = [" ".join([CONTEXT_PLACEHOLDER] * n_ctx) + f" {name}." for name in class_names]
        input_ids, attention_mask = self.tokenize(prompts)
        placeholder_ids, _ = self.tokenize([CONTEXT_PLACEHOLDER])
        placeholder = placeholder_ids[0, 1]
        context = slice(1, 1 + n_ctx)
        if not bool((input_ids[:, context] == placeholder).all()):
            raise RuntimeError(f"{self.name}: context placeholders are not at positions 1..{n_ctx}")
        return PromptTokens(input_ids, attention_mask, context)

    # ------------------------------------------------------------------ scoring
    def similarity_logits(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(image, text)``: ``[B, D] x [C, D] -> [B, C]``."""
        image = F.normalize(image_embedding, dim=-1)
        text = F.normalize(text_embedding, dim=-1)
        return self.logit_scale * image @ text.t()
