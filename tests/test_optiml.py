"""OPTiML's pieces against references: dense OT loss vs POT, var/cov vs VICReg's formulas, crop-box
correspondence on constructed views, CV-SIM's residual path and permutation properties, the
ablation switches and the baselines' terms."""

import numpy as np
import ot
import pytest
import torch

from medot.errors import MedotError
from medot.methods.optiml import losses
from medot.methods.optiml.config import STAGES, OptimlConfig
from medot.methods.optiml.encoder import Encoder
from medot.methods.optiml.data import view_pair
from medot.methods.optiml.model import CVSIM, OptimlModel
from medot.methods.optiml.views import (
    VIEW_RECIPES,
    centre_match,
    generator_for,
    make_view,
    mass_on_overlap,
    overlap_mask,
    patch_centres,
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


def test_location_matching_picks_the_geometrically_nearest_patches():
    """VICRegL's location-based matching on a constructed crop pair, by hand. View s: the whole
    image, 1 x 4 patches, centres at columns 0.125, 0.375, 0.625, 0.875 (row 0.5). View t: columns
    [0.31, 0.89] of the image, flipped, 1 x 2 patches: t0 covers [0.60, 0.89] (centre 0.745), t1
    covers [0.31, 0.60] (centre 0.455). Nearest in t: s0 -> t1 (0.33), s1 -> t1 (0.08), s2 -> t0
    (0.12), s3 -> t0 (0.13); nearest in s: t0 -> s2 (0.12), t1 -> s1 (0.08). Top (2, 1): s1-t1 and
    s2-t0 (mass 1/4 each), t1-s1 (mass 1/2)."""
    box_s = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    box_t = torch.tensor([[0.0, 0.31, 1.0, 0.58, 1.0]], dtype=torch.float64)
    centres_s, centres_t = patch_centres(box_s, (1, 4)), patch_centres(box_t, (1, 2))
    torch.testing.assert_close(centres_t[0, :, 1], torch.tensor([0.745, 0.455], dtype=torch.float64))
    plan = losses.location_plan(centres_s, centres_t, top_k=(2, 1))[0]
    expected = torch.zeros(4, 2, dtype=plan.dtype)
    expected[1, 1] = 0.25 + 0.5
    expected[2, 0] = 0.25
    torch.testing.assert_close(plan, expected)
    # every match kept: each token's nearest, 1/8 per row of view s and 1/4 per column of view t
    full = losses.location_plan(centres_s, centres_t, top_k=(0, 0))[0]
    expected = torch.zeros(4, 2, dtype=plan.dtype)
    expected[0, 1] = expected[1, 1] = expected[2, 0] = expected[3, 0] = 1 / 8
    expected[2, 0] += 1 / 4
    expected[1, 1] += 1 / 4
    torch.testing.assert_close(full, expected)
    # without the flip t0 is the left patch: s1 -> t0 (centre 0.455) instead
    unflipped = box_t.clone()
    unflipped[0, 4] = 0.0
    plan = losses.location_plan(centres_s, patch_centres(unflipped, (1, 2)), top_k=(1, 1))[0]
    assert plan[1, 0].item() == pytest.approx(1.0)
    # top-k larger than the token count keeps every token
    torch.testing.assert_close(losses.location_plan(centres_s, centres_t, top_k=(20, 4))[0], full)


def test_feature_matching_top_k_keeps_the_closest_pairs():
    q_s = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    q_t = torch.tensor([[[9.0, 0.0], [1.0, 0.0], [50.0, 0.0]]])
    # rows: s0 -> t1 (1), s1 -> t0 (1): tie, the lower index is kept; columns: t0 -> s1 (1) kept
    plan = losses.nearest_neighbour_plan(q_s, q_t, top_k=(1, 1))[0]
    torch.testing.assert_close(plan, torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0]]))


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
        ({"method": "vicregl"}, {"nn", "loc", "var", "cov", "global_invariance"}, {"ot"}),
        ({"method": "vicregl", "ot": False}, {"var", "cov", "global_invariance"}, {"ot", "nn", "loc"}),
        ({"stages": (3, 4)}, {"ot", "ot_stage3", "ot_stage4", "var_stage3", "agree_ot_stage3"}, {"nn"}),
    ],
)
def test_switches_remove_exactly_their_terms(changes, present, absent):
    torch.manual_seed(0)
    config = OptimlConfig(**{**TINY, **changes})
    terms = OptimlModel(config)(*_batch())
    assert present <= set(terms) and not (absent & set(terms))
    # the total is exactly the weighted sum of the logged terms
    dense = 0.0
    dense += config.alpha * terms["ot"].item() if "ot" in terms else 0.0
    dense += config.alpha * (terms["nn"].item() + terms["loc"].item()) / 2 if "nn" in terms else 0.0
    dense += config.beta * terms["var"].item() if "var" in terms else 0.0
    dense += config.eta * terms["cov"].item() if "cov" in terms else 0.0
    total = config.dense_weight * dense
    if "global_invariance" in terms:
        total += config.global_term_weight * (
            25 * terms["global_invariance"].item() + 25 * terms["global_variance"].item() + terms["global_covariance"].item()
        )
    assert terms["loss"].item() == pytest.approx(total, rel=1e-5)


def test_vicregl_weights_global_and_local_by_alpha():
    config = OptimlConfig(**TINY, method="vicregl")
    assert (config.global_term_weight, config.dense_weight) == (0.75, 0.25)
    assert config.vicregl_matches == (20, 4) and config.vicregl_nn_matches == (0, 0)
    assert OptimlConfig(**TINY, method="vicregl", vicregl_alpha=0.9).dense_weight == pytest.approx(0.1)
    assert OptimlConfig(**TINY).dense_weight == 1.0 and OptimlConfig(**TINY, method="vicreg").global_term_weight == 1.0


@pytest.mark.parametrize("arch", ["resnet18", "lite"])
def test_stage_channel_table_matches_the_encoders_maps(arch):
    encoder = Encoder(arch, pretrained=False).eval()
    with torch.no_grad():
        _, maps = encoder.forward_features(torch.rand(1, 3, 64, 64), tuple(STAGES.values()))
    assert {name: m.shape[1] for name, m in maps.items()} == {name: encoder.layer_channels(name) for name in maps}
    assert maps["stride16"].shape[-1] == 4 and maps["dense"].shape[-1] == 2  # strides 16 and 32


def test_several_stages_add_per_stage_terms_and_leave_the_last_stage_unchanged():
    torch.manual_seed(0)
    two = OptimlModel(OptimlConfig(**TINY, stages=(4, 3)))
    assert two.config.stages == (3, 4)
    assert two.stage_projectors["3"].net[0].in_features == 256 and two.stage_cvsim["3"].norm_attention.normalized_shape == (256,)
    one = OptimlModel(OptimlConfig(**TINY), Encoder("resnet18", pretrained=False))
    # the single-stage model's parameters are exactly the two-stage model's minus the stage-3 modules
    one.load_state_dict({k: v for k, v in two.state_dict().items() if not k.startswith("stage_")}, strict=True)
    batch = _batch()
    terms_two, terms_one = two(*batch), one(*batch)
    for name in ("ot", "var", "cov", "agree_ot", "agree_nn"):
        torch.testing.assert_close(terms_two[f"{name}_stage4"], terms_one[name])
        torch.testing.assert_close(terms_two[name], (terms_two[f"{name}_stage3"] + terms_two[f"{name}_stage4"]) / 2)
    stage3 = 25 * terms_two["ot_stage3"] + 25 * terms_two["var_stage3"] + terms_two["cov_stage3"]
    torch.testing.assert_close(terms_two["loss"], (stage3 + terms_one["loss"]) / 2)
    terms_two["loss"].backward()
    assert two.stage_projectors["3"].net[0].weight.grad.abs().sum() > 0


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
    with pytest.raises(MedotError, match=r"stages \[3\]: .*always with 4"):
        OptimlConfig(stages=(3,))
    with pytest.raises(MedotError, match="vicregl_alpha must be in"):
        OptimlConfig(method="vicregl", vicregl_alpha=1.5)
    with pytest.raises(MedotError, match="encoder tiny has no stride16 stage"):
        OptimlModel(OptimlConfig(encoder="tiny", image_size=64, stages=(3, 4)))
