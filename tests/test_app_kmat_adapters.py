"""medot.viz.kmat_adapters: a K-MaT checkpoint -> manifold and coupling inputs."""

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from medot.checkpoint import Checkpoint, save_checkpoint
from medot.errors import CheckpointError
from medot.methods.kmat.losses import manifold_transport_loss
from medot.viz.kmat_adapters import kmat_coupling, load_kmat_artefacts, prompt_embedding_set

CLASSES = ["normal", "nodule", "opacity"]


@pytest.fixture
def checkpoint(tmp_path):
    generator = torch.Generator().manual_seed(0)
    high, low = (F.normalize(torch.randn(3, 8, generator=generator), dim=-1) for _ in range(2))
    solved = manifold_transport_loss(high, low, alpha=0.2, epsilon=0.1)
    tensors = {
        "artefacts.w_high": high, "artefacts.w_low": low,
        "artefacts.anchors_high": F.normalize(torch.randn(3, 8, generator=generator), dim=-1),
        "artefacts.anchors_low": F.normalize(torch.randn(3, 8, generator=generator), dim=-1),
        "artefacts.description_embeddings": torch.randn(5, 8, generator=generator),
        "artefacts.description_class": torch.tensor([0, 0, 1, 2, 2]),
        "artefacts.description_modality": torch.tensor([0, 1, 0, 0, 1]),
        "artefacts.fgw_plan": solved.plan,
    }
    meta = {"method": "kmat", "backbone": "lite", "class_names": CLASSES, "modalities": {"high": "ct", "low": "xray"},
            "hyper_parameters": {"fgw_alpha": 0.2, "fgw_epsilon": 0.1}}
    return save_checkpoint(tmp_path / "model", Checkpoint(tensors, meta))


def test_embedding_set_rows_and_labels(checkpoint):
    embedding = prompt_embedding_set(load_kmat_artefacts(checkpoint))
    assert len(embedding) == 3 + 3 + 3 + 3 + 5
    assert embedding.kind.count("prompt") == 6 and embedding.kind.count("anchor") == 6
    assert embedding.modality[-5:] == ("ct", "xray", "ct", "ct", "xray")
    assert embedding.text[-5:] == ("description 1 of normal", "description 2 of normal", "description 1 of nodule",
                                   "description 1 of opacity", "description 2 of opacity")
    assert len(prompt_embedding_set(load_kmat_artefacts(checkpoint), descriptions=False)) == 12


def test_coupling_at_trained_settings_reproduces_the_stored_plan(checkpoint):
    artefacts = load_kmat_artefacts(checkpoint)
    coupling = kmat_coupling(artefacts)
    assert (coupling.alpha, coupling.epsilon) == (0.2, 0.1)
    torch.testing.assert_close(coupling.plan, artefacts.tensors["fgw_plan"])


def test_alpha_zero_is_sinkhorn_on_the_feature_cost(checkpoint):
    coupling = kmat_coupling(load_kmat_artefacts(checkpoint), alpha=0.0, epsilon=0.05)
    uniform = np.full(3, 1 / 3)
    reference = ot.sinkhorn(uniform, uniform, coupling.cost.double().numpy(), reg=0.05, numItermax=100_000, stopThr=1e-10)
    np.testing.assert_allclose(coupling.plan.double().numpy(), reference, atol=1e-4)


def test_baseline_without_anchors_is_refused_readably(tmp_path):
    meta = {"method": "cocoop", "backbone": "lite", "class_names": CLASSES, "modalities": {"high": "ct", "low": "xray"}}
    path = save_checkpoint(tmp_path / "m", Checkpoint({"prompts.x": torch.zeros(1)}, meta))
    with pytest.raises(CheckpointError, match="w_high"):
        load_kmat_artefacts(path)
