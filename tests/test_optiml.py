"""OPTiML's pieces against references: dense OT loss vs POT, var/cov vs VICReg's formulas, crop-box
correspondence on constructed views, CV-SIM's residual path and permutation properties, the
ablation switches and the baselines' terms."""

import numpy as np
import ot
import pytest
import torch

from medot.errors import MedotError
from medot.methods.optiml import losses
from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.data import view_pair
from medot.methods.optiml.model import CVSIM, OptimlModel
from medot.methods.optiml.views import (
    VIEW_RECIPES,
    centre_match,
    generator_for,
    make_view,
    mass_on_overlap,
    overlap_mask,
    patch_rectangles,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ dense OT loss
def test_dense_ot_loss_matches_pot_plan_and_hand_sum():
    torch.manual_seed(0)
    q_s, q_t = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    plan = losses.ot_plan(q_s, q_t, epsilon=0.1, max_iter=2000)
    expected_loss = 0.0
    for b in range(2):
        xs, xt = q_s[b].numpy(), q_t[b].numpy()
        cost = 1 - (xs / np.linalg.norm(xs, axis=1, keepdims=True)) @ (xt / np.linalg.norm(xt, axis=1, keepdims=True)).T
        reference = ot.sinkhorn(np.full(5, 1 / 5), np.full(4, 1 / 4), cost, 0.1, numItermax=5000, stopThr=1e-12)
        np.testing.assert_allclose(plan[b].numpy(), reference, atol=1e-5)
        squared = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
        expected_loss += 5 / 3 * (reference * squared).sum() / 2
    loss = losses.matching_loss(q_s, q_t, plan)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-4)


def test_matching_loss_is_zero_for_identical_views_and_the_plan_carries_no_gradient():
    q = torch.randn(3, 6, 4, requires_grad=True)
    plan = losses.ot_plan(q, q)
    assert not plan.requires_grad
    # identical tokens: the diagonal carries most mass, but the loss is exactly zero only on the diagonal part
    diagonal_plan = torch.eye(6).expand(3, 6, 6) / 6
    assert losses.matching_loss(q, q.detach().clone(), diagonal_plan).item() == pytest.approx(0.0, abs=1e-5)
    loss = losses.matching_loss(q, q * 2, plan)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_nearest_neighbour_plan_has_unit_mass_on_the_nearest_tokens():
    q_s = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    q_t = torch.tensor([[[9.0, 0.0], [1.0, 0.0], [50.0, 0.0]]])
    plan = losses.nearest_neighbour_plan(q_s, q_t)[0]
    assert plan.sum().item() == pytest.approx(1.0)
    # rows: s0 -> t1, s1 -> t0 (1/4 each); columns: t0 -> s1, t1 -> s0, t2 -> s1 (1/6 each)
    expected = torch.tensor([[0.0, 0.25 + 1 / 6, 0.0], [0.25 + 1 / 6, 0.0, 1 / 6]])
    torch.testing.assert_close(plan, expected)


# ------------------------------------------------------------------ variance / covariance
def test_variance_and_covariance_terms_match_vicreg_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4)) * np.array([0.2, 0.5, 1.5, 3.0])
    std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
    expected_var = np.maximum(0, 1 - std).mean()
    cov = np.cov(z, rowvar=False)
    expected_cov = (cov**2).sum() - (np.diag(cov) ** 2).sum()
    t = torch.from_numpy(z)
    assert losses.variance_term(t).item() == pytest.approx(expected_var, rel=1e-10)
    assert losses.covariance_term(t).item() == pytest.approx(expected_cov / 4, rel=1e-10)


def test_variance_term_is_zero_above_unit_std_and_covariance_zero_for_decorrelated_columns():
    z = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]], dtype=torch.float64)
    assert losses.variance_term(z).item() == 0.0
    assert losses.covariance_term(z).item() == pytest.approx(0.0, abs=1e-12)


def test_global_vicreg_weights():
    torch.manual_seed(1)
    y_s, y_t = torch.randn(8, 5), torch.randn(8, 5)
    terms = losses.vicreg_global(y_s, y_t)
    expected = 25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["variance"].item() == pytest.approx(
        (losses.variance_term(y_s) + losses.variance_term(y_t)).item() / 2, rel=1e-6
    )


# ------------------------------------------------------------------ crop boxes and correspondence
def test_patch_rectangles_of_a_flipped_half_view():
    # view = right half of the image, flipped: its first column of patches is the image's right edge
    boxes = torch.tensor([[0.0, 0.5, 1.0, 0.5, 1.0]])
    rect = patch_rectangles(boxes, (1, 2))[0]
    torch.testing.assert_close(rect, torch.tensor([[0.0, 0.75, 1.0, 1.0], [0.0, 0.5, 1.0, 0.75]]))


def test_centre_match_and_overlap_on_a_constructed_pair():
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    right_half_flipped = torch.tensor([[0.0, 0.5, 1.0, 0.5, 1.0]])
    # 2x4 grid on the full image, 2x2 on the right half (flipped)
    match = centre_match(full, right_half_flipped, (2, 4), (2, 2))[0]
    # full-image patches in columns 2, 3 land in the half view's columns 1, 0 (mirrored)
    assert match.tolist() == [-1, -1, 1, 0, -1, -1, 3, 2]
    mask = overlap_mask(full, right_half_flipped, (2, 4), (2, 2))[0]
    assert mask.sum().item() == 4 and mask[2, 1] and mask[3, 0] and mask[6, 3] and mask[7, 2]
    assert not mask[2, 3]  # different rows do not touch (shared edge has zero area)


def test_recorded_boxes_locate_the_view_content_in_the_source_image():
    """Property: on an image whose pixels encode their own coordinates, the centre pixel of every
    patch of a view equals the source pixel at the patch centre that the recorded box predicts."""
    size = 96
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([rows, cols]).float() / size  # two channels: row, col fractions
    for seed in range(20):
        generator = generator_for(seed)
        view, box = make_view(image, 48, VIEW_RECIPES[0], generator, min_scale=0.3, photometric=False)
        rect = patch_rectangles(box[None], (4, 4))[0]
        centres = torch.stack([(rect[:, 0] + rect[:, 2]) / 2, (rect[:, 1] + rect[:, 3]) / 2], dim=1)
        pixels = view[:, 6::12, 6::12].reshape(2, -1).T  # near the centre of each 12-px patch
        assert (pixels - centres).abs().max().item() < 0.06, seed


def test_mass_on_overlap_is_one_for_the_true_matching_and_lower_for_a_shuffled_one():
    generator = generator_for(3)
    image = torch.rand(1, 64, 64)
    boxes = []
    for _ in range(2):
        _, box = make_view(image, 32, VIEW_RECIPES[0], generator, min_scale=0.9, photometric=False)
        boxes.append(box[None])
    match = centre_match(boxes[0], boxes[1], (4, 4), (4, 4))[0]
    plan = torch.zeros(1, 16, 16)
    for i, j in enumerate(match.tolist()):
        if j >= 0:
            plan[0, i, j] = 1.0
    mask = overlap_mask(boxes[0], boxes[1], (4, 4), (4, 4))
    assert mass_on_overlap(plan, mask).item() == pytest.approx(1.0)
    assert mass_on_overlap(plan.flip(-1), mask).item() < 1.0


def test_view_pairs_are_reproducible_from_seed_epoch_and_index():
    image = torch.rand(1, 40, 40)
    first, again = view_pair(image, 32, 5, 2, 7), view_pair(image, 32, 5, 2, 7)
    other = view_pair(image, 32, 5, 3, 7)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[2], other[2])


# ------------------------------------------------------------------ CV-SIM
def test_cvsim_shapes_residual_path_and_permutation_properties():
    torch.manual_seed(0)
    block = CVSIM(16, heads=8, ffn_ratio=2).eval()
    z_s, z_t = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    out_s, out_t = block(z_s, z_t)
    assert out_s.shape == z_s.shape and out_t.shape == z_t.shape
    assert not torch.allclose(out_s, z_s)
    # equivariant in the query view's tokens, invariant to the order of the other view's tokens
    perm_s, perm_t = torch.randperm(5), torch.randperm(7)
    permuted_s, permuted_t = block(z_s[:, perm_s], z_t[:, perm_t])
    torch.testing.assert_close(permuted_s, out_s[:, perm_s], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted_t, out_t[:, perm_t], atol=1e-5, rtol=1e-5)
    # shared weights: swapping the inputs swaps the outputs
    swapped_t, swapped_s = block(z_t, z_s)
    torch.testing.assert_close(swapped_s, out_s)
    # residual path: with the attention and FFN outputs zeroed the block is the identity
    with torch.no_grad():
        block.attention.out_proj.weight.zero_()
        block.attention.out_proj.bias.zero_()
        block.ffn[-1].weight.zero_()
        block.ffn[-1].bias.zero_()
    identity_s, identity_t = block(z_s, z_t)
    torch.testing.assert_close(identity_s, z_s)
    torch.testing.assert_close(identity_t, z_t)


def test_cvsim_refuses_channels_that_do_not_split_into_heads():
    with pytest.raises(ValueError, match="heads"):
        CVSIM(12, heads=8)


# ------------------------------------------------------------------ methods and switches
def _batch(size=64, batch=4):
    image = torch.rand(1, 72, 72)
    pairs = [view_pair(image, size, 0, 0, i) for i in range(batch)]
    return [torch.stack(parts) for parts in zip(*pairs)]


TINY = {"image_size": 64, "projector": (32, 32, 32), "encoder": "resnet18"}


@pytest.mark.parametrize(
    ("changes", "present", "absent"),
    [
        ({}, {"ot", "var", "cov", "agree_ot", "agree_nn"}, {"nn", "global_invariance"}),
        ({"ot": False}, {"var", "cov"}, {"ot", "nn"}),
        ({"varcov": False}, {"ot"}, {"var", "cov"}),
        ({"global_weight": 1.0}, {"ot", "global_invariance", "global_variance", "global_covariance"}, {"nn"}),
        ({"method": "vicreg"}, {"global_invariance"}, {"ot", "nn", "var", "cov", "agree_ot"}),
        ({"method": "vicregl"}, {"nn", "var", "cov", "global_invariance"}, {"ot"}),
    ],
)
def test_switches_remove_exactly_their_terms(changes, present, absent):
    torch.manual_seed(0)
    config = OptimlConfig(**{**TINY, **changes})
    terms = OptimlModel(config)(*_batch())
    assert present <= set(terms) and not (absent & set(terms))
    # the total is exactly the weighted sum of the logged terms
    total = 0.0
    total += config.alpha * terms["ot"].item() if "ot" in terms else 0.0
    total += config.alpha * terms["nn"].item() if "nn" in terms else 0.0
    total += config.beta * terms["var"].item() if "var" in terms else 0.0
    total += config.eta * terms["cov"].item() if "cov" in terms else 0.0
    if "global_invariance" in terms:
        total += config.global_term_weight * (
            25 * terms["global_invariance"].item() + 25 * terms["global_variance"].item() + terms["global_covariance"].item()
        )
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)


def test_no_cvsim_builds_no_cross_attention_and_baselines_never_do():
    assert OptimlModel(OptimlConfig(**TINY)).cvsim is not None
    assert OptimlModel(OptimlConfig(**TINY, cvsim=False)).cvsim is None
    assert OptimlModel(OptimlConfig(**TINY, method="vicregl")).cvsim is None


def test_config_errors_are_one_line_messages():
    with pytest.raises(MedotError, match="method 'simclr'"):
        OptimlConfig(method="simclr")
    with pytest.raises(MedotError, match="epsilon must be > 0"):
        OptimlConfig(epsilon=0)
    with pytest.raises(MedotError, match="global_weight must be > 0"):
        OptimlConfig(method="vicreg", global_weight=0)
