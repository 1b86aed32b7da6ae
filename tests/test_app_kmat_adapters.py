"""medot.viz.kmat_adapters: a K-MaT checkpoint -> manifold and coupling inputs."""

import numpy as np
import ot
import pytest
import torch

from kmat_checkpoint import CLASSES, write_artefacts_checkpoint
from medot.checkpoint import Checkpoint, save_checkpoint
from medot.errors import CheckpointError
from medot.viz.kmat_adapters import kmat_coupling, load_kmat_artefacts, prompt_embedding_set


@pytest.fixture
def checkpoint(tmp_path):
    return write_artefacts_checkpoint(tmp_path / "model")


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
