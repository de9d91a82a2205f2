"""PPC: the contrast against hand-computed values, prototype estimation, semi-hard mining, hard pixel sampling,
pseudo labels, and how the add-on plugs into two-view methods (gradients, alignment, options)."""

import math

import pytest
import torch
import torch.nn.functional as F

from stages.config import CamModelConfig
from stages.core.errors import UserError
from stages.methods import build_aux_loss, build_cam_model
from stages.methods.ppc import (PixelPrototypeContrast, PpcOptions, class_scores, contrast, estimate_prototypes,
                                prototype_confidence, sample_pixels, semi_hard_negatives)
from stages.methods.views import TrainingViews, ViewMaps

PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
PIXELS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_contrast_equals_the_hand_computed_nce_for_two_pixels_and_three_prototypes():
    # tau 0.5. Pixel 1 (1, 0), target p0: dot products 1, 0, 0.6 → logits 2, 0, 1.2;
    # -log(e^2 / (e^2 + e^0 + e^1.2)) = log(1 + e^-2 + e^-0.8).
    # Pixel 2 (0, 1), target p2: dot products 0, 1, 0.8 → logits 0, 2, 1.6; = log(e^-1.6 + e^0.4 + 1).
    expected = [math.log(1 + math.exp(-2) + math.exp(-0.8)), math.log(math.exp(-1.6) + math.exp(0.4) + 1)]
    values = contrast(PIXELS, torch.tensor([0, 2]), PROTOTYPES, temperature=0.5)
    assert values.tolist() == pytest.approx(expected, abs=1e-6)


def test_contrast_leaves_prototypes_that_are_not_kept_out_of_the_denominator():
    keep = torch.tensor([[True, False, True], [True, True, True]])
    values = contrast(PIXELS, torch.tensor([0, 2]), PROTOTYPES, temperature=0.5, keep=keep)
    assert values[0].item() == pytest.approx(math.log(1 + math.exp(-0.8)), abs=1e-6)  # p1 (logit 0) left out
    assert values[1].item() == pytest.approx(math.log(math.exp(-1.6) + math.exp(0.4) + 1), abs=1e-6)


def test_prototypes_are_the_confidence_weighted_mean_of_the_top_k_pixels():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    confidence = torch.tensor([[0.9, 0.0], [0.1, 0.5], [0.8, 0.0], [0.2, 0.7], [0.0, 0.1]])
    prototypes = estimate_prototypes(embeddings, confidence, k=2)
    # Class 0: pixels 0 (0.9) and 2 (0.8) → (0.9, 0.8) / 1.7, normalised. Class 1: pixels 3 (0.7) and 1 (0.5).
    assert prototypes[0].tolist() == pytest.approx((torch.tensor([0.9, 0.8]) / math.sqrt(0.81 + 0.64)).tolist())
    assert prototypes[1].tolist() == pytest.approx((torch.tensor([0.7, 0.5]) / math.sqrt(0.49 + 0.25)).tolist())
    assert prototypes.norm(dim=1).tolist() == pytest.approx([1.0, 1.0])


def test_semi_hard_mining_keeps_exactly_the_less_similar_part_of_the_hardest_negatives():
    similarity = torch.tensor([[0.9, 0.1, 0.8, 0.5, 0.7, 0.2],  # own prototype 0
                               [0.3, 0.95, 0.1, 0.99, 0.4, 0.6]])  # own prototype 3
    keep = semi_hard_negatives(similarity, torch.tensor([0, 3]), hard_fraction=0.6, keep_fraction=0.5)
    # Five negatives each; the ceil(3.0) = 3 hardest, of which ceil(1.5) = 2 are kept, the hardest one dropped.
    # Row 0: negatives by similarity 2 (0.8), 4 (0.7), 3 (0.5) | 5, 1 → keep 4 and 3, and the positive 0.
    # Row 1: 1 (0.95), 5 (0.6), 4 (0.4) | 0, 2 → keep 5 and 4, and the positive 3.
    assert keep.tolist() == [[True, False, False, True, True, False], [False, False, False, True, True, True]]


def test_semi_hard_mining_with_the_paper_fractions_on_nine_prototypes():
    similarity = torch.linspace(0.9, 0.1, 9)[None]  # prototype 0 most similar, then 1, 2, ...
    keep = semi_hard_negatives(similarity, torch.tensor([8]), hard_fraction=0.6, keep_fraction=0.5)
    # Eight negatives 0..7 from hardest; ceil(4.8) = 5 hardest (0..4), ceil(2.5) = 3 kept: 2, 3, 4.
    assert keep.nonzero()[:, 1].tolist() == [2, 3, 4, 8]


def test_pixel_sampling_takes_half_at_random_and_half_from_the_least_similar():
    similarity = torch.tensor([0.5, 0.05, 0.9, 0.3, 0.01, 0.7, 0.2, 0.8, 0.1, 0.6])
    chosen = sample_pixels(similarity, hard_fraction=0.6, generator=torch.Generator().manual_seed(0))
    random, hard = chosen[:5], chosen[5:]
    assert len(set(random.tolist())) == 5 and all(0 <= i < 10 for i in random.tolist())
    # Ascending similarity: 4, 1, 8, 6, 3, 0, ... The 6 least similar, their less hard 5: all but pixel 4.
    assert sorted(hard.tolist()) == sorted([1, 8, 6, 3, 0])


def test_pseudo_labels_take_the_background_where_no_present_class_beats_its_score():
    cams = torch.tensor([[[[0.0, 1.0, 4.0]], [[9.0, 0.0, 0.0]]]])  # (1, 2, 1, 3); class 1 absent from the image
    scores = class_scores(cams, torch.tensor([[1.0, 0.0]]), bg_threshold=0.2)
    # Class 0 normalised: 0, ~0.25, ~1; class 1 masked to 0 → labels: background, class 0 (1), class 0 (1).
    assert scores.argmax(dim=1).flatten().tolist() == [0, 1, 1]
    confidence = prototype_confidence(cams, torch.tensor([[1.0, 0.0]]))
    assert confidence[0, 2, 0, 0].item() == pytest.approx(1.0, abs=1e-4)  # absent classes keep their maps for prototypes
    assert confidence[0, 0, 0].tolist() == pytest.approx([1.0, 0.75, 0.0], abs=1e-4)  # 1 - best present class


def views_of(first_cams, second_cams, first_features, second_features, align=None):
    def resize(maps, size):
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)

    return TrainingViews({}, ViewMaps(first_cams, first_features), ViewMaps(second_cams, second_features),
                         align or resize)


def test_the_loss_trains_the_features_and_head_but_never_the_class_maps():
    torch.manual_seed(0)
    ppc = PixelPrototypeContrast(feature_channels=6)
    cams1 = torch.rand(2, 3, 4, 4, requires_grad=True)
    cams2 = torch.rand(2, 3, 2, 2, requires_grad=True)
    features1 = torch.rand(2, 6, 4, 4, requires_grad=True)
    features2 = torch.rand(2, 6, 2, 2, requires_grad=True)
    terms = ppc(views_of(cams1, cams2, features1, features2), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    assert set(terms) == {"ppc_cp", "ppc_cc", "ppc_intra"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert cams1.grad is None and cams2.grad is None
    assert features1.grad.abs().sum() > 0 and features2.grad.abs().sum() > 0
    assert ppc.projection.weight.grad.abs().sum() > 0


def test_terms_match_their_definitions_on_aligned_views():
    """With identical views (align = identity), each term is the plain contrast of its definition."""
    torch.manual_seed(1)
    options = PpcOptions(mining=False, temperature=0.5)
    ppc = PixelPrototypeContrast(feature_channels=4, options=options)
    cams = torch.rand(2, 2, 3, 3)
    features = torch.rand(2, 4, 3, 3)
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    terms = ppc(views_of(cams, cams, features, features, align=lambda maps, size: maps), labels)
    view = ppc.view(cams, ppc.project(features), labels)
    plain = contrast(view.embeddings, view.pseudo_labels, view.prototypes, 0.5).mean()
    # Same view twice: cross prototype, cross CAM and (unmined) intra all reduce to the plain contrast, x0.1.
    for name in ("ppc_cp", "ppc_cc", "ppc_intra"):
        assert terms[name].item() == pytest.approx(0.1 * plain.item(), rel=1e-5)


def test_a_zero_weight_drops_its_term():
    ppc = PixelPrototypeContrast(4, PpcOptions(intra_weight=0.0))
    terms = ppc(views_of(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), torch.rand(1, 4, 3, 3),
                         torch.rand(1, 4, 3, 3)), torch.tensor([[1.0, 0.0]]))
    assert set(terms) == {"ppc_cp", "ppc_cc"}


def test_cross_cam_pairs_each_pixel_with_the_same_place_in_the_other_view():
    """Flip as the transform: a pixel's cross-CAM target is the label at the mirrored place of the other view."""
    ppc = PixelPrototypeContrast(2, PpcOptions(dim=2, bg_threshold=0.5, cross_prototype_weight=0, intra_weight=0))
    with torch.no_grad():
        ppc.projection.weight.copy_(torch.eye(2)[:, :, None, None])
    # One row of four pixels; class on the left half of view 1, so on the right half of its flip (view 2).
    cams1 = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    features1 = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 1.0]]]])  # class embedding (1,0), bg (0,1)
    views = views_of(cams1, cams1.flip(-1), features1, features1.flip(-1), align=lambda maps, size: maps.flip(-1))
    aligned = ppc(views, torch.tensor([[1.0]]))["ppc_cc"]
    misaligned = ppc(views_of(cams1, cams1.flip(-1), features1, features1.flip(-1),
                              align=lambda maps, size: maps), torch.tensor([[1.0]]))["ppc_cc"]
    assert aligned.item() < 0.01 < misaligned.item()


def test_add_on_plugs_into_two_view_methods_and_refuses_others():
    for method in ("baseline", "seam"):
        model = build_cam_model(method, CamModelConfig(backbone="resnet10"), 3)
        aux = build_aux_loss("ppc", {"dim": "16"}, model, method)
        views = model.training_views(torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 0, 0], [0, 1, 1]]))
        assert views.first.cams.shape == (2, 3, 4, 4) and views.second.cams.shape == (2, 3, 2, 2)
        assert set(aux(views, torch.tensor([[1.0, 0, 0], [0, 1, 1]]))) == {"ppc_cp", "ppc_cc", "ppc_intra"}
    l2g = build_cam_model("l2g", CamModelConfig(backbone="resnet10"), 3)
    with pytest.raises(UserError, match="needs a method with two views"):
        build_aux_loss("ppc", {}, l2g, "l2g")
    with pytest.raises(UserError, match="unknown add-on"):
        build_aux_loss("magic", {}, model, "seam")
    with pytest.raises(UserError, match="add-on 'ppc' has no option 'tau'"):
        build_aux_loss("ppc", {"tau": "0.1"}, model, "seam")
    with pytest.raises(UserError, match="temperature"):
        PpcOptions(temperature=0)


def test_baseline_views_keep_the_baseline_loss():
    torch.manual_seed(0)
    model = build_cam_model("baseline", CamModelConfig(backbone="resnet10"), 3).eval()
    images, labels = torch.rand(2, 3, 64, 64), torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    assert model.training_views(images, labels).losses["cls"].item() == pytest.approx(
        model.training_losses(images, labels)["cls"].item(), rel=1e-5)
