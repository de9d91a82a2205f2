"""SEAM: equivariant regularisation, the pixel correlation module and the cross regularisation."""

import math

import pytest
import torch

from stages.config import CamModelConfig
from stages.core.errors import UserError
from stages.methods.common import apply_affinity, max_norm
from stages.methods.seam import (
    SeamCam,
    SeamOptions,
    add_background,
    cross_view_losses,
    ecr_term,
    min_pooling_loss,
    pcm_seeds,
    spatial_transform,
    suppress_non_max,
)

EPS = 1e-5


def small_model(num_classes=3, **options) -> SeamCam:
    torch.manual_seed(0)
    return SeamCam(CamModelConfig("resnet10", 16), num_classes, SeamOptions(**options))


def per_pixel_network(model: SeamCam, num_classes: int):
    """A stand-in for `cam_and_features` that is an elementwise function of the image at full resolution, so
    exactly equivariant to flips and quarter turns (and to rescaling when the function is affine)."""
    c3, c4 = model.backbone.channels[2:]

    def network(images):
        cams = torch.cat([2.0 * images[:, c % 3:c % 3 + 1] + 0.5 * c for c in range(num_classes)], dim=1)
        features = [None, None, images.repeat(1, math.ceil(c3 / 3), 1, 1)[:, :c3],
                    images.repeat(1, math.ceil(c4 / 3), 1, 1)[:, :c4]]
        return cams, features

    def nonlinear(images):
        cams, features = network(images)
        return torch.sin(3 * cams) * cams, features

    return network, nonlinear


# -- ER ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transform", ["flip", "rotate90"])
def test_er_is_zero_for_an_exactly_equivariant_network(transform, monkeypatch):
    model = small_model(transform=transform)
    _, nonlinear = per_pixel_network(model, 3)
    monkeypatch.setattr(model, "cam_and_features", nonlinear)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 8, 12)
    losses = model.training_losses(images, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    assert losses["er"].item() < 1e-6
    # A wrong alignment (A then a vertical flip) leaves a difference: the zero is the alignment's doing.
    misaligned = cross_view_losses(*model._branch(images)[1:3],
                                   *model._branch(spatial_transform(images, transform))[1:3], torch.ones(2, 3),
                                   lambda x: spatial_transform(x, transform).flip(-2), 0.2)
    assert misaligned["er"].item() > 1e-2


def test_er_is_zero_for_an_affine_per_pixel_network_under_rescale(monkeypatch):
    # Bilinear resampling (align_corners=True) commutes with an affine per-pixel map; a ramp keeps its min and
    # max at the corners, so min-max normalisation commutes with the rescale too.
    model = small_model(transform="rescale", view_scale=0.5)
    affine, _ = per_pixel_network(model, 3)
    monkeypatch.setattr(model, "cam_and_features", affine)
    ramp = torch.linspace(0, 1, 32)[:, None] + 2 * torch.linspace(0, 1, 32)[None, :]
    images = torch.stack([ramp, 3 - ramp, 0.5 * ramp + 1])[None].repeat(2, 1, 1, 1)
    losses = model.training_losses(images, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    assert losses["er"].item() < 1e-6


def test_er_by_hand_on_2x2_maps():
    # Class 1 labelled: min-max normalised with eps, (x - 0 - e)^+ / (4 - 0 + e).
    # view 1 [[0, 2], [4, 4]] -> [0, (2-e)/(4+e), (4-e)/(4+e), (4-e)/(4+e)]
    # view 2 [[0, 0], [0, 4]] -> [0, 0, 0, (4-e)/(4+e)]
    # Class 2 is not in the image: its (different) maps are zeroed but count in the mean over 2 x 4 values.
    raw1 = torch.tensor([[[[0.0, 2.0], [4.0, 4.0]], [[5.0, 1.0], [0.0, 3.0]]]])
    raw2 = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]], [[0.0, 0.0], [9.0, 1.0]]]])
    refined = torch.rand(1, 3, 2, 2)
    losses = cross_view_losses(raw1, refined, raw2, refined, torch.tensor([[1.0, 0.0]]), lambda x: x, 0.2)
    by_hand = ((2 - EPS) + (4 - EPS)) / (4 + EPS) / 8
    assert losses["er"].item() == pytest.approx(by_hand, abs=1e-7)


def test_er_flip_alignment_by_hand():
    # With A = flip, view 1's map is flipped before the comparison: a flipped copy gives zero.
    raw1 = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]]]])
    refined = torch.rand(1, 2, 2, 2)
    labels = torch.tensor([[1.0]])
    flip = lambda x: spatial_transform(x, "flip")  # noqa: E731
    assert cross_view_losses(raw1, refined, raw1.flip(-1), refined, labels, flip, 0.2)["er"].item() == 0.0
    # Against the unflipped map: normalised [[0, 2-e], [1-e, 4-e]] / (4+e) vs [[2-e, 0], [4-e, 1-e]] / (4+e).
    by_hand = (2 * (2 - EPS) + 2 * 3) / (4 + EPS) / 4
    assert cross_view_losses(raw1, refined, raw1, refined, labels, flip, 0.2)["er"].item() == \
        pytest.approx(by_hand, abs=1e-7)


# -- PCM --------------------------------------------------------------------------------------------------------

def test_pcm_affinity_rows_sum_to_one_and_identity_affinity_is_exact():
    model = small_model()
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features = model.backbone(images)
        affinity = model.pcm_affinity(features, images)
    h, w = features[-1].shape[-2:]
    assert affinity.shape == (2, h * w, h * w)
    assert (affinity >= 0).all()
    torch.testing.assert_close(affinity.sum(-1), torch.ones(2, h * w), atol=1e-4, rtol=0)
    cam = torch.rand(2, 4, h, w)
    assert torch.equal(apply_affinity(cam, torch.eye(h * w).expand(2, -1, -1)), cam)


def test_apply_affinity_averages_sources_for_each_target():
    cam = torch.tensor([[[[1.0, 3.0]]]])  # one channel, pixels 0 and 1
    affinity = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])  # pixel 0 keeps itself; pixel 1 averages both
    assert apply_affinity(cam, affinity).flatten().tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        apply_affinity(cam, torch.eye(3)[None])


def test_pcm_seeds_background_and_suppression():
    cam = torch.tensor([[[[4.0, 1.0], [-1.0, 0.0]], [[2.0, 2.0], [0.0, 0.0]]]])
    seeds = pcm_seeds(cam)
    fg1 = [(4 - EPS) / (4 + EPS), (1 - EPS) / (4 + EPS), 0.0, 0.0]
    fg2 = [(2 - EPS) / (2 + EPS), (2 - EPS) / (2 + EPS), 0.0, 0.0]
    expected_bg = [1 - max(a, b) for a, b in zip(fg1, fg2)]
    torch.testing.assert_close(seeds[0, 0].flatten(), torch.tensor(expected_bg))
    # Non-maximum foreground zeroed: class 2 loses pixel 0, class 1 loses pixel 1; ties (zeros) kept.
    torch.testing.assert_close(seeds[0, 1].flatten(), torch.tensor([fg1[0], 0.0, 0.0, 0.0]))
    torch.testing.assert_close(seeds[0, 2].flatten(), torch.tensor([0.0, fg2[1], 0.0, 0.0]))


# -- ECR --------------------------------------------------------------------------------------------------------

def test_ecr_by_hand_on_2x2_maps():
    foreground = torch.tensor([[[[0.9, 0.2], [0.1, 0.0]], [[0.5, 0.6], [0.0, 0.0]]]])
    maps = add_background(foreground)  # bg = 1 - max: [[0.1, 0.4], [0.9, 1.0]]
    target = suppress_non_max(maps)
    torch.testing.assert_close(target[0], torch.tensor([[[0.1, 0.4], [0.9, 1.0]], [[0.9, 0.0], [0.1, 0.0]],
                                                        [[0.0, 0.6], [0.0, 0.0]]]))
    refined = torch.zeros(1, 3, 2, 2)
    refined[0, 0] = torch.tensor([[0.1, 0.4], [0.9, 0.2]])
    # |target - refined|: bg [0, 0, 0, 0.8], class 1 [0.9, 0, 0.1, 0], class 2 [0, 0.6, 0, 0].
    # 12 values, k = int(12 * 0.2) = 2: the top two are 0.9 and 0.8.
    assert ecr_term(maps, refined, 0.2).item() == pytest.approx(0.85, abs=1e-6)
    # Top half (k = 6): 0.9, 0.8, 0.6, 0.1, 0, 0.
    assert ecr_term(maps, refined, 0.5).item() == pytest.approx(2.4 / 6, abs=1e-6)


def test_ecr_sums_both_directions_in_cross_view_losses():
    torch.manual_seed(0)
    raw1, raw2 = torch.rand(2, 2, 3, 3), torch.rand(2, 2, 3, 3)
    refined1, refined2 = torch.rand(2, 3, 3, 3), torch.rand(2, 3, 3, 3)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    losses = cross_view_losses(raw1, refined1, raw2, refined2, labels, lambda x: x, 0.2)
    fg, everything = labels[:, :, None, None], torch.cat([torch.ones(2, 1), labels], 1)[:, :, None, None]
    one_way = ecr_term(add_background(max_norm(raw2) * fg), max_norm(refined1) * everything, 0.2)
    other_way = ecr_term(add_background(max_norm(raw1) * fg), max_norm(refined2) * everything, 0.2)
    torch.testing.assert_close(losses["ecr"], one_way + other_way)


def test_ecr_target_is_detached():
    maps = torch.rand(1, 3, 2, 2, requires_grad=True)
    refined = torch.rand(1, 3, 2, 2, requires_grad=True)
    ecr_term(maps, refined, 0.5).backward()
    assert maps.grad is None and refined.grad is not None


def test_min_pooling_loss_by_hand():
    # Per-pixel max over classes: [3, -1, 0.5, 2]; a quarter of 4 pixels is k = 1, half is k = 2.
    refined = torch.tensor([[[[3.0, -1.0], [0.5, 2.0]], [[1.0, -2.0], [0.0, 0.0]]]])
    assert min_pooling_loss(refined).item() == 0.0  # smallest is -1, ReLU'd
    assert min_pooling_loss(refined, fraction=0.5).item() == pytest.approx(0.5 / 2)  # (0 + 0.5) / (k=2 * n=1)


# -- the model --------------------------------------------------------------------------------------------------

def test_ecr_does_not_reach_the_backbone_or_classifier():
    model = small_model()
    images = torch.randn(2, 3, 64, 64)
    losses = model.training_losses(images, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    losses["ecr"].backward()
    for parameter in list(model.backbone.parameters()) + list(model.classifier.parameters()):
        assert parameter.grad is None or not parameter.grad.any()
    for layer in (model.pcm_layer3, model.pcm_layer4, model.pcm_embed):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_training_losses_cams_and_param_groups():
    model = small_model(num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    losses = model.training_losses(images, labels)
    assert set(losses) == {"cls", "er", "ecr", "rvmin"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0  # cls and ER train the backbone

    model.eval()
    with torch.no_grad():
        cams, raw = model.cams(images), model.raw_cams(images)
        logits = model(images)
    assert cams.shape == raw.shape == (2, 3, 4, 4)
    assert (cams >= 0).all() and (raw >= 0).all()
    assert logits.shape == (2, 3)
    # cams() refines image by image; the batched refinement gives the same maps.
    with torch.no_grad():
        cam, features = model.cam_and_features(images)
        torch.testing.assert_close(cams, model.refine(cam, features, images)[:, 1:].clamp_min(0))

    backbone, head = model.param_groups()
    assert len(backbone) == len(list(model.backbone.parameters()))
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert {id(p) for p in head} == {id(p) for m in (model.classifier, model.pcm_layer3, model.pcm_layer4,
                                                     model.pcm_embed) for p in m.parameters()}


@pytest.mark.parametrize("transform", ["flip", "rotate90"])
def test_other_transforms_train(transform):
    model = small_model(num_classes=2, transform=transform)
    losses = model.training_losses(torch.randn(2, 3, 32, 48), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_loss_weights_scale_the_terms():
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = small_model(num_classes=2).training_losses(images, labels)
    weighted = small_model(num_classes=2, er_weight=2.0, ecr_weight=0.5, rvmin_weight=0.0).training_losses(
        images, labels)
    torch.testing.assert_close(weighted["er"], 2 * plain["er"])
    torch.testing.assert_close(weighted["ecr"], 0.5 * plain["ecr"])
    assert weighted["rvmin"].item() == 0.0


def test_built_by_the_registry_with_options():
    from stages.methods import build_cam_model
    from stages.registry import CAM_METHODS

    assert CAM_METHODS.get("seam") is SeamCam
    model = build_cam_model("seam", CamModelConfig("resnet10", 16), 2,
                            {"transform": "flip", "ecr_top_fraction": "0.1", "pcm_channels": "8,16", "pcm_dim": "32"})
    assert type(model) is SeamCam
    assert model.options == SeamOptions(transform="flip", ecr_top_fraction=0.1, pcm_channels=(8, 16), pcm_dim=32)
    assert model.pcm_embed.weight.shape == (32, 3 + 24, 1, 1)
    with pytest.raises(UserError, match="has no option 'alpha'"):
        build_cam_model("seam", CamModelConfig(), 2, {"alpha": "0.3"})


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="unknown SEAM transform"):
        SeamOptions(transform="shear")
    with pytest.raises(UserError, match="top fraction"):
        SeamOptions(ecr_top_fraction=0.0)
