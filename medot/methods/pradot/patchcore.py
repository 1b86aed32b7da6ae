r"""PatchCore (Roth et al., CVPR 2022), the nearest-neighbour baseline PRADOT is compared with.

On exactly the patch tokens PRADOT reads (the same backbone layers):

1. **Locally aware features** (Sec. 3.1): each layer's map is averaged over 3x3 neighbourhoods
   (stride 1, zero padding counted, as anomalib's ``AvgPool2d(3, 1, 1)``), coarser layers are
   upsampled bilinearly to the finest grid and the layers are concatenated along channels
   (anomalib's ``generate_embedding``; the original code's adaptive pooling of each layer to 1024
   channels only shrinks ResNet's 512 + 1024 channels and is left out here).
2. **Coreset** (Sec. 3.2, Alg. 1): greedy k-center selection of ``ratio * N`` of the ``N``
   training patches, run on a sparse Johnson-Lindenstrauss projection (scikit-learn's
   ``SparseRandomProjection``, dimension from ``johnson_lindenstrauss_min_dim(N, eps)``; used only
   when it lowers the dimension). From a random start, each step adds
   :math:`\arg\max_{m \in \mathcal{M}} \min_{n \in \mathcal{M}_C} \|\psi(m) - \psi(n)\|_2`.
3. **Scores** (Sec. 3.3): a test patch scores its distance to the nearest memory item,
   :math:`s = \min_{m \in \mathcal{M}_C} \|m^{\mathrm{test}} - m\|_2`; the patch grid is upsampled
   bilinearly and smoothed by a Gaussian of :math:`\sigma = 4` pixels. The image score is the
   maximum of that map (so the score shown is the largest value the map shows; anomalib takes the
   largest patch score before upsampling and smoothing, which is slightly larger), optionally
   re-weighted (Eq. 7) by
   :math:`w = 1 - \exp\|m^{\mathrm{test},*} - m^*\| / \sum_{m \in \mathcal{N}_b(m^*)}
   \exp\|m^{\mathrm{test},*} - m\|`, with :math:`\mathcal{N}_b(m^*)` the ``b`` memory items
   nearest to :math:`m^*` (itself included; anomalib's ``compute_anomaly_score``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medot.methods.pradot.config import PatchCoreConfig
from medot.ot import euclidean_cost

NEAREST_CHUNK_ELEMENTS = 1 << 24
"""Largest query x memory distance block computed at once (64 MB of float32)."""


def locally_aware_features(
    tokens: Mapping[str, Tensor], grids: Mapping[str, tuple[int, int]], layers: Sequence[str]
) -> tuple[Tensor, tuple[int, int]]:
    """``[B, H0*W0, sum C]`` PatchCore features on the finest grid ``(H0, W0)`` among ``layers``."""
    target = max((tuple(grids[layer]) for layer in layers), key=lambda hw: hw[0] * hw[1])
    maps = []
    for layer in layers:
        height, width = grids[layer]
        layer_tokens = tokens[layer]
        feature_map = layer_tokens.transpose(1, 2).reshape(layer_tokens.shape[0], -1, height, width)
        feature_map = F.avg_pool2d(feature_map, kernel_size=3, stride=1, padding=1)
        if (height, width) != target:
            feature_map = F.interpolate(feature_map, size=target, mode="bilinear", align_corners=False)
        maps.append(feature_map)
    combined = torch.cat(maps, dim=1)
    return combined.flatten(2).transpose(1, 2).contiguous(), target


def johnson_lindenstrauss_projection(points: Tensor, eps: float, seed: int) -> Tensor:
    """``points`` ``[N, d]`` through a sparse random projection to the JL dimension for ``(N, eps)``,
    or unchanged when that dimension is not below ``d``."""
    from sklearn.random_projection import SparseRandomProjection, johnson_lindenstrauss_min_dim

    dimension = int(johnson_lindenstrauss_min_dim(points.shape[0], eps=eps))
    if dimension >= points.shape[1]:
        return points
    projection = SparseRandomProjection(n_components=dimension, random_state=seed)
    reduced = projection.fit_transform(points.detach().cpu().numpy())
    return torch.as_tensor(reduced, dtype=points.dtype, device=points.device)


@torch.no_grad()
def k_center_greedy(points: Tensor, count: int, *, seed: int = 0, projection_eps: float = 0.9) -> Tensor:
    """Indices ``[count]`` of a greedy k-center coreset of ``points`` ``[N, d]`` (module docstring).

    The first index is drawn from ``seed``; every later one is the point farthest from those
    already chosen (in the projected space), so the result is a 2-approximation of the k-center
    problem (Gonzalez 1985).
    """
    total = points.shape[0]
    if not 1 <= count <= total:
        raise ValueError(f"cannot select {count} of {total} points")
    reduced = johnson_lindenstrauss_projection(points, projection_eps, seed)
    squared_norms = reduced.square().sum(1)
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(total, (1,), generator=generator))]

    def squared_distance_to(index: int) -> Tensor:
        centre = reduced[index]
        return (squared_norms - 2.0 * (reduced @ centre) + squared_norms[index]).clamp_min_(0.0)

    nearest = squared_distance_to(chosen[0])
    for _ in range(count - 1):
        index = int(nearest.argmax())
        chosen.append(index)
        torch.minimum(nearest, squared_distance_to(index), out=nearest)
    return torch.tensor(chosen, dtype=torch.long, device=points.device)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``[B, H, W]`` maps, kernel ``2 * int(4 sigma + 0.5) + 1``,
    reflected borders (anomalib's ``GaussianBlur2d``); ``sigma = 0`` returns ``maps``."""
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    return F.conv2d(rows, kernel.view(1, 1, 1, -1)).squeeze(1)


class PatchCoreModel(nn.Module):
    """A PatchCore memory bank on the patch tokens of ``layers`` (``fit`` once, then score)."""

    memory_bank: Tensor

    def __init__(
        self, layers: Sequence[str], grids: Mapping[str, tuple[int, int]], config: PatchCoreConfig = PatchCoreConfig()
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("PatchCore needs at least one layer")
        self.layers = tuple(layers)
        self.grids = {layer: tuple(grids[layer]) for layer in self.layers}
        self.config = config
        self.register_buffer("memory_bank", torch.empty(0, 0))

    def embed(self, tokens: Mapping[str, Tensor]) -> tuple[Tensor, tuple[int, int]]:
        """Locally aware features ``[B, H0*W0, D]`` of ``tokens`` and their grid."""
        return locally_aware_features(tokens, self.grids, self.layers)

    @torch.no_grad()
    def fit(self, tokens: Mapping[str, Tensor]) -> None:
        """Fill the memory bank with the coreset of all training patches of ``tokens``."""
        embedding, _ = self.embed(tokens)
        patches = embedding.reshape(-1, embedding.shape[-1])
        count = max(1, round(self.config.coreset_ratio * patches.shape[0]))
        chosen = k_center_greedy(patches, count, seed=self.config.seed, projection_eps=self.config.projection_eps)
        self.memory_bank = patches[chosen].clone()

    @torch.no_grad()
    def nearest(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Distance to and index of the nearest memory item for each row of ``queries`` ``[Q, D]``."""
        if self.memory_bank.numel() == 0:
            raise RuntimeError("PatchCoreModel.fit must run before scoring")
        step = max(1, NEAREST_CHUNK_ELEMENTS // self.memory_bank.shape[0])
        distances, indices = [], []
        for part in queries.split(step):
            distance, index = euclidean_cost(part, self.memory_bank).min(dim=1)
            distances.append(distance)
            indices.append(index)
        return torch.cat(distances), torch.cat(indices)

    @torch.no_grad()
    def forward(self, tokens: Mapping[str, Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(maps [B, *size], image scores [B])`` (module docstring, step 3)."""
        embedding, grid = self.embed(tokens)
        batch, cells, dim = embedding.shape
        distance, index = self.nearest(embedding.reshape(-1, dim))
        distance, index = distance.reshape(batch, cells), index.reshape(batch, cells)
        maps = F.interpolate(distance.reshape(batch, 1, *grid), size=tuple(size), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps.squeeze(1), self.config.blur_sigma)
        scores = maps.flatten(1).amax(dim=1)
        if self.config.reweight:
            scores = scores * self._reweighting(embedding, distance, index)
        return maps, scores

    def _reweighting(self, embedding: Tensor, distance: Tensor, index: Tensor) -> Tensor:
        """Eq. 7's weight :math:`w` at each image's worst patch (module docstring, step 3)."""
        where = distance.argmax(dim=1)
        rows = torch.arange(embedding.shape[0], device=embedding.device)
        worst_patch = embedding[rows, where]
        nearest_item = self.memory_bank[index[rows, where]]
        neighbours = min(self.config.num_neighbors, self.memory_bank.shape[0])
        support = euclidean_cost(nearest_item, self.memory_bank).topk(neighbours, dim=1, largest=False).indices
        support_distance = torch.linalg.vector_norm(worst_patch.unsqueeze(1) - self.memory_bank[support], dim=-1)
        return 1.0 - torch.softmax(support_distance, dim=1)[:, 0]
