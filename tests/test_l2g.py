"""L2G: local view geometry, RoIAlign alignment, attention / shape transfer targets and losses, gradient flow."""

import numpy as np
import pytest
import torch

from stages.config import CamModelConfig
from stages.core.errors import UserError
from stages.methods import build_cam_model
from stages.methods.l2g import (align_global_map, attention_targets, crop_views, local_view_boxes, shape_targets,
                                transfer_loss)


def test_random_views_lie_inside_the_crop_and_have_the_view_size():
    torch.manual_seed(0)
    boxes = local_view_boxes(112, 96, 64, views=6, mode="random", batch=3)
    assert boxes.shape == (18, 5)
    assert boxes[:, 0].tolist() == [i for i in range(3) for _ in range(6)]
    x1, y1, x2, y2 = boxes[:, 1:].T
    assert (x2 - x1 == 64).all() and (y2 - y1 == 64).all()
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 96).all() and (y2 <= 112).all()
    assert len({tuple(b) for b in boxes[:, 1:3].tolist()}) > 6  # images draw their own positions


def test_official_views_are_the_four_corners_then_random_positions():
    torch.manual_seed(0)
    boxes = local_view_boxes(112, 96, 64, views=6, mode="official", batch=3)
    assert boxes.shape == (18, 5)
    for image in range(3):
        mine = boxes[image * 6:(image + 1) * 6]
        assert mine[:4, 1:3].long().tolist() == [[0, 0], [0, 48], [32, 0], [32, 48]]  # (x, y), official order
        assert ((mine[4:, 1] <= 32) & (mine[4:, 2] <= 48)).all()
    assert len({tuple(b) for b in boxes[:, 1:3].tolist()}) > 4  # the random views differ between images
    assert ((boxes[:, 3] - boxes[:, 1]) == 64).all() and ((boxes[:, 4] - boxes[:, 2]) == 64).all()


def test_uniform_views_are_an_even_grid_from_border_to_border():
    boxes = local_view_boxes(112, 112, 80, views=6, mode="uniform", batch=2)
    corners = boxes[:6, 1:3].long().tolist()
    assert corners == [[0, 0], [16, 0], [32, 0], [0, 32], [16, 32], [32, 32]]  # 2 rows x 3 columns
    assert torch.equal(boxes[6:, 1:], boxes[:6, 1:])


def test_views_that_do_not_fit_or_unknown_modes_are_user_errors():
    with pytest.raises(UserError, match="does not fit"):
        local_view_boxes(64, 64, 80, views=2, mode="random", batch=1)
    with pytest.raises(UserError, match="crop_mode"):
        local_view_boxes(64, 64, 32, views=2, mode="grid", batch=1)
    with pytest.raises(UserError, match="at least 4"):
        local_view_boxes(64, 64, 32, views=3, mode="official", batch=1)
    with pytest.raises(UserError, match="at least 4"):
        build_cam_model("l2g", CamModelConfig(), 3, {"local_views": 2})


def test_crop_views_are_the_image_pixels_under_each_box():
    images = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10)
    boxes = torch.tensor([[0, 1, 2, 5, 6], [1, 6, 4, 10, 8]], dtype=torch.float32)
    views = crop_views(images, boxes)
    assert torch.equal(views[0], images[0, :, 2:6, 1:5])
    assert torch.equal(views[1], images[1, :, 4:8, 6:10])


def test_roi_align_puts_a_known_patch_where_it_lands_in_the_view():
    # A 128 px image at output stride 16 has an 8x8 map; one hot cell at row 2, column 5 covers pixels
    # y 32-47, x 80-95. The view x 64-112, y 32-80 covers cells x 4-6, y 2-4: the hot cell is its row 0, column 1.
    global_map = torch.zeros(1, 2, 8, 8)
    global_map[0, 1, 2, 5] = 1.0
    boxes = torch.tensor([[0, 64, 32, 112, 80]], dtype=torch.float32)
    aligned = align_global_map(global_map, boxes, (3, 3), output_stride=16)
    expected = torch.zeros(1, 2, 3, 3)
    expected[0, 1, 0, 1] = 1.0
    torch.testing.assert_close(aligned, expected)


def hand_built_local_map():
    # One view, 2 classes, 1x2 pixels. Channels: background, class 1 (present), class 2 (absent).
    return torch.tensor([[[[0.5, 2.0]], [[1.0, 0.5]], [[3.0, 3.0]]]])


def test_attention_target_normalises_masks_absent_classes_and_keeps_the_winner():
    target = attention_targets(hand_built_local_map(), torch.tensor([[1.0, 0.0]]), views=1)
    # max-normalised: bg [0.25, 1], class 1 [1, 0.5], class 2 zeroed; pixel 0 → class 1 (1 > 0.25), pixel 1 → bg.
    expected = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])
    torch.testing.assert_close(target, expected, atol=1e-6, rtol=0)


def test_shape_target_multiplies_the_binarised_attention_by_the_saliency():
    attention = torch.tensor([[[[0.0, 1.0]], [[0.6, 0.0]], [[0.0, 0.0]]]])
    saliency = torch.tensor([[[[0.8, 0.3]]]])
    target = shape_targets(attention, saliency, bg_threshold=0.001)
    expected = torch.tensor([[[[0.0, 0.7]], [[0.8, 0.0]], [[0.0, 0.0]]]])  # bg x (1 - s), class x s
    torch.testing.assert_close(target, expected)


def test_transfer_loss_is_the_mse_of_the_softmax_against_the_target():
    target = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])
    # Equal logits: the softmax is 1/3 everywhere; squared errors (1/9, 4/9, 4/9, 1/9, 1/9, 1/9), mean 2/9.
    loss = transfer_loss(torch.zeros(1, 3, 1, 2), target)
    assert loss.item() == pytest.approx(2 / 9)


def small_l2g(**options):
    torch.manual_seed(0)
    return build_cam_model("l2g", CamModelConfig(), 3, {"local_views": 4, **options})


def test_kd_trains_only_the_global_network_and_cls_only_the_local_one():
    model = small_l2g(shape_transfer="false")
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    losses = model.training_losses(images, labels)
    assert set(losses) == {"cls", "kd"}
    losses["kd"].backward()
    assert all(p.grad is None for p in model.local_net.parameters())  # the local targets are detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.global_net.parameters())
    model.zero_grad(set_to_none=True)
    model.training_losses(images, labels)["cls"].backward()
    assert all(p.grad is None for p in model.global_net.parameters())  # no classification loss on the global net


def test_shape_transfer_uses_saliency_only_where_a_map_exists():
    model, plain_model = small_l2g(), small_l2g(shape_transfer="false")
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.manual_seed(1)
    with_maps = model.training_losses(images, labels, torch.ones(2, 64, 64), torch.tensor([True, True]))["kd"]
    torch.manual_seed(1)
    without = model.training_losses(images, labels, torch.ones(2, 64, 64), torch.tensor([False, False]))["kd"]
    torch.manual_seed(1)
    plain = plain_model.training_losses(images, labels)["kd"]
    assert without.item() == pytest.approx(plain.item())
    assert with_maps.item() != pytest.approx(plain.item())
    with pytest.raises(UserError, match="needs saliency maps"):
        model.training_losses(images, labels)


def test_shape_transfer_divides_the_crop_saliency_by_its_maximum():
    model = small_l2g()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    saliency = torch.rand(2, 64, 64) * torch.tensor([0.5, 1.0])[:, None, None]
    has_maps = torch.tensor([True, True])
    kd = []
    for scale in (1.0, 0.25):  # a uniformly dimmer map: the same target once divided by its maximum
        torch.manual_seed(1)
        kd.append(model.training_losses(images, labels, saliency * scale, has_maps)["kd"].item())
    assert kd[0] == pytest.approx(kd[1], rel=1e-5)


def test_cams_are_the_global_class_channels_and_class_scores_the_local_networks():
    model = small_l2g().eval()
    images = torch.randn(1, 3, 64, 64)
    cams = model.cams(images)
    assert cams.shape == (1, 3, 4, 4) and (cams >= 0).all()
    # the class scores come from the local network, the one the classification loss trains
    torch.testing.assert_close(model(images), model.local_net(images)[:, 1:].mean(dim=(2, 3)))


def test_local_backbone_may_differ():
    model = small_l2g(local_backbone="resnet18")
    assert len(model.local_net.backbone.layer1) == 2 and len(model.global_net.backbone.layer1) == 1
    assert np.isfinite(model.training_losses(torch.randn(1, 3, 64, 64), torch.tensor([[1.0, 0, 0]]),
                                             torch.rand(1, 64, 64), torch.tensor([True]))["kd"].item())
