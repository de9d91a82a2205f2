"""Backbones, the baseline CAM classifier, its loss, CAM fusion and the DeepLab segmenter."""

import math

import numpy as np
import pytest
import torch

from stages.config import CamModelConfig, SegModelConfig
from stages.core.errors import UserError
from stages.models.multiscale import fused_cams, labelled_cams
from stages.methods import build_cam_model
from stages.models.backbone import create_backbone
from stages.models.deeplab import DeepLab


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_output_stride(output_stride):
    backbone = create_backbone("resnet10", output_stride)
    features = backbone(torch.zeros(1, 3, 64, 64))
    # layer1 and layer2 keep strides 4 and 8; layer3 ends at stride min(OS, 16), layer4 at the output stride.
    assert [f.shape[-1] for f in features] == [16, 8, 64 // min(output_stride, 16), 64 // output_stride]
    assert [f.shape[1] for f in features] == backbone.channels


def test_backbone_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown backbone"):
        create_backbone("no_such_net")
    with pytest.raises(UserError, match="no ImageNet weights"):
        create_backbone("resnet10", pretrained="imagenet")
    with pytest.raises(UserError, match="weights file .*not found: .*missing.pth"):
        create_backbone("resnet10", pretrained=str(tmp_path / "missing.pth"))


def test_backbone_loads_a_weights_file(tmp_path):
    source = create_backbone("resnet10", 32)
    state = {f"{name.replace('stem.0', 'conv1').replace('stem.1', 'bn1')}": value
             for name, value in source.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    loaded = create_backbone("resnet10", 16, pretrained=str(tmp_path / "w.pth"))
    assert torch.equal(loaded.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert loaded.layer4[0].conv1.dilation == (2, 2)  # converted after loading, weights unchanged


def test_baseline_loss_is_multilabel_soft_margin_on_pooled_cam():
    torch.manual_seed(0)
    model = build_cam_model("baseline", CamModelConfig(), num_classes=2).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        # GAP commutes with the bias-free 1x1 classifier: logits are the mean of the raw class map.
        raw_map = model.classifier(model.backbone(images)[-1])
        torch.testing.assert_close(logits, raw_map.mean((2, 3)), rtol=1e-5, atol=1e-5)
        loss = model.training_losses(images, torch.tensor([[1.0, 0.0]]))["cls"]
    x0, x1 = logits[0].tolist()
    by_hand = (math.log(1 + math.exp(-x0)) + math.log(1 + math.exp(x1))) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_baseline_loss_on_a_batch_is_the_mean_per_image_per_class_soft_margin():
    torch.manual_seed(0)
    model = build_cam_model("baseline", CamModelConfig(), num_classes=3).eval()
    images = torch.randn(3, 3, 32, 32)
    # Different label sets: two classes, one class, and none (an image showing only background).
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    with torch.no_grad():
        logits = model(images)
        loss = model.training_losses(images, labels)["cls"]
        per_image = [model.training_losses(images[i:i + 1], labels[i:i + 1])["cls"].item() for i in range(3)]
        # The two-view path (for add-on losses) keeps the same classification loss on the crop.
        views_loss = model.training_views(images, labels).losses["cls"]

    def softplus(x):
        return math.log1p(math.exp(x))

    # Present classes pay softplus(-x), absent ones softplus(x); averaged over classes, then over images.
    by_hand = [sum(softplus(-x) if y else softplus(x) for x, y in zip(row, label_row)) / 3
               for row, label_row in zip(logits.tolist(), labels.tolist())]
    assert loss.item() == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert per_image == pytest.approx(by_hand, rel=1e-5)  # a batch's loss does not depend on its other images
    assert by_hand[2] > 0  # the all-negative image still pushes every logit down
    assert views_loss.item() == pytest.approx(loss.item(), rel=1e-4)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown CAM method 'magic'"):
        build_cam_model("magic", CamModelConfig(), 3)


class ImageAsCam(torch.nn.Module):
    """A stand-in model whose 'CAM' of class c is channel c of the input, at the input resolution."""

    def cams(self, images):
        return torch.relu(images[:, :2])


def test_fused_cams_flip_and_scales_are_aligned():
    images = torch.rand(2, 3, 8, 8)
    one = fused_cams(ImageAsCam().cams, images, scales=[1.0], flip=False, device=torch.device("cpu"))
    flipped = fused_cams(ImageAsCam().cams, images, scales=[1.0], flip=True, device=torch.device("cpu"))
    np.testing.assert_allclose(flipped, 2 * one, rtol=1e-6)  # the flip is undone before summing
    multi = fused_cams(ImageAsCam().cams, images, scales=[1.0, 2.0], flip=False, device=torch.device("cpu"))
    assert multi.shape == (2, 2, 8, 8)
    # Up then down-sampling a constant image returns it: two scales of a constant map sum to twice it.
    constant = torch.ones(1, 3, 8, 8)
    np.testing.assert_allclose(fused_cams(ImageAsCam().cams, constant, [1.0, 2.0, 0.5], True, torch.device("cpu")),
                               np.full((1, 2, 8, 8), 6.0), rtol=1e-5)


class StridedCam(torch.nn.Module):
    """A stand-in at output stride 4: the 'CAM' is the image average-pooled to ceil(size / 4)."""

    def cams(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images[:, :2], [-(-s // 4) for s in images.shape[-2:]])


def test_fused_cams_follow_irns_strided_up_size():
    """IRN's make_cam: each scale's map is upsampled to the size rounded up to the stride, then cropped."""
    images = torch.rand(1, 3, 10, 13)
    fused = fused_cams(StridedCam().cams, images, [1.0, 0.5], True, torch.device("cpu"), False, output_stride=4)
    expected = 0
    for scale in (1.0, 0.5):
        scaled = images if scale == 1.0 else torch.nn.functional.interpolate(
            images, size=(5, 6), mode="bilinear", align_corners=False)
        maps = StridedCam().cams(scaled) + StridedCam().cams(scaled.flip(-1)).flip(-1)
        expected = expected + torch.nn.functional.interpolate(maps, size=(12, 16), mode="bilinear",
                                                              align_corners=False)[..., :10, :13]
    np.testing.assert_allclose(fused, expected.numpy(), rtol=1e-6, atol=1e-7)
    straight = fused_cams(StridedCam().cams, images, [1.0, 0.5], True, torch.device("cpu"), False)
    assert fused.shape == straight.shape and not np.allclose(fused, straight)  # the two ways differ


def test_labelled_cams_scale_each_class_to_one():
    cams = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]]])
    first, = labelled_cams(cams, [np.array([4, 7])])  # two classes: the first two maps of the fused CAMs
    assert first.dtype == torch.float16 and first.shape == (2, 2, 2)
    np.testing.assert_allclose(first[0].float(), [[0, 2 / (2 + 1e-5)], [0, 1 / (2 + 1e-5)]], rtol=1e-3)
    assert torch.all(first[1] == 0)  # an empty map stays empty instead of dividing by zero


def test_cams_of_the_labelled_classes_are_each_images_maps_as_numpy_normalised_them():
    """Fusing only the labelled classes' maps, then normalising on the device, gives bit for bit what infer-cam
    wrote when it fused every class and normalised in NumPy: per image, its classes' maps, ReLU, divided by
    max + 1e-5 in float32, then float16; images with no class, one, or several in one batch."""
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)
    images = torch.randn(4, 3, 21, 26)
    classes = [np.array([2, 5]), np.array([], dtype=np.int64), np.array([1]), np.array([1, 3, 4])]
    every_class = fused_cams(network, images, [1.0, 0.5], True, torch.device("cpu"), False, 4).numpy()
    fused = fused_cams(network, images, [1.0, 0.5], True, torch.device("cpu"), False, 4, classes)
    assert fused.shape == (4, 3, 21, 26)
    for image_cams, image_classes, result in zip(every_class, classes, labelled_cams(fused, classes)):
        selected = np.maximum(image_cams[image_classes - 1], 0)
        expected = (selected / (selected.max(axis=(1, 2), keepdims=True) + 1e-5)).astype(np.float16)
        assert result.shape == expected.shape and np.array_equal(result.numpy(), expected)
    nothing = fused_cams(network, images, [1.0], True, torch.device("cpu"), False, 4, [np.array([], np.int64)] * 4)
    assert nothing.shape == (4, 0, 21, 26) and all(r.shape == (0, 21, 26) for r in labelled_cams(nothing, [np.array([], np.int64)] * 4))


def test_deeplab_output_and_param_groups():
    model = DeepLab(SegModelConfig(), num_classes=5).eval()
    assert model(torch.zeros(2, 3, 64, 48)).shape == (2, 5, 64, 48)
    backbone, head = model.param_groups()
    assert {id(p) for p in backbone}.isdisjoint({id(p) for p in head})
    assert len(backbone) + len(head) == len(list(model.parameters()))


def test_imagenet_weights_load_when_available_and_fail_clearly_offline(monkeypatch):
    import urllib.error

    from stages.models import backbone as backbone_module

    resnet = backbone_module.torchvision().models.resnet
    weights = resnet.ResNet18_Weights.DEFAULT
    reference = resnet.resnet18()
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, progress=False: reference.state_dict())
    loaded = create_backbone("resnet18", 16, pretrained="imagenet")
    assert torch.equal(loaded.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)

    def offline(self, progress=False):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(type(weights), "get_state_dict", offline)
    with pytest.raises(UserError, match="cannot load ImageNet weights for resnet18.*--pretrained PATH"):
        create_backbone("resnet18", 16, pretrained="imagenet")


def test_method_options_convert_types_and_reject_unknown_keys():
    from dataclasses import dataclass

    from stages.methods import method_options

    @dataclass(frozen=True)
    class Options:
        scale: float = 0.5
        steps: int = 3
        flip: bool = False
        sizes: tuple[int, ...] = (1, 2)

    built = method_options(Options, {"scale": "0.25", "steps": "7", "flip": "yes", "sizes": "4,5,6"}, "demo")
    assert built == Options(scale=0.25, steps=7, flip=True, sizes=(4, 5, 6))
    with pytest.raises(UserError, match="method 'demo' has no option 'speed' \\(its options: scale, steps"):
        method_options(Options, {"speed": "1"}, "method 'demo'")
    with pytest.raises(UserError, match="option steps='many': expected a int"):
        method_options(Options, {"steps": "many"}, "demo")
    with pytest.raises(UserError, match="has no option 'x' \\(its options: view_scale\\)"):
        build_cam_model("baseline", CamModelConfig(), 3, {"x": "1"})


@pytest.mark.parametrize("output_stride", [8, 16])
def test_timm_backbone_output_stride(output_stride):
    backbone = create_backbone("efficientnet_lite0", output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 64 // min(16, output_stride), 64 // output_stride]
    assert [f.shape[1] for f in features] == backbone.channels == [24, 40, 112, 320]


def test_l2g_local_views_are_renormalised_for_a_local_backbone_of_other_statistics():
    from stages.core.normalization import Normalization
    imagenet, half = Normalization(), Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image = torch.rand(1, 3, 4, 4) * 255
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (imagenet.mean, imagenet.std))
    as_imagenet = (image / 255 - mean) / std
    assert torch.allclose(imagenet.to(half, as_imagenet), (image / 255 - 0.5) / 0.5, atol=1e-5)
    assert imagenet.to(imagenet, as_imagenet) is as_imagenet


@pytest.mark.parametrize("name", ["resnet10", "efficientnet_lite0"])
def test_frozen_bn_keeps_the_loaded_statistics_while_its_scale_and_shift_learn(name):
    torch.manual_seed(0)
    image = torch.randn(2, 3, 32, 32) * 3 + 1  # statistics far from the fresh layers' (0, 1)
    for frozen in (False, True):
        backbone = create_backbone(name, 16, "none", frozen_bn=frozen).train()
        norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        before = [norm.running_mean.clone() for norm in norms]
        backbone(image)[-1].sum().backward()
        moved = any(not torch.equal(norm.running_mean, old) for norm, old in zip(norms, before))
        assert moved != frozen
        assert backbone.training and all(norm.training != frozen for norm in norms)
        assert all(norm.weight.grad is not None for norm in norms if norm.weight is not None)
    # a model holding the backbone passes the mode down and the backbone keeps its BatchNorm in eval mode
    model = build_cam_model("baseline", CamModelConfig(backbone=name, frozen_bn=True), 3).train()
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert model.eval().train().classifier.training
