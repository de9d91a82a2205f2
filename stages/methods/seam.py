"""SEAM (Wang et al., CVPR 2020): Self-supervised Equivariant Attention Mechanism, as a CAM training method.

A Siamese network sees the image I (view 1) and A(I) (view 2), A a spatial transform. Each branch gives
  - the raw CAM: backbone, bias-free 1x1 classifier (as the baseline), upsampled to its input's size;
  - the PCM-refined CAM: the raw CAM, max-normalised with a background channel (bg = 1 - max foreground) and
    non-maximum foreground suppressed, carried through a pixel affinity. The affinity is the ReLU'd cosine
    similarity of per-pixel embeddings: 1x1 projections (ReLU) of layer3 and layer4, detached from the backbone,
    concatenated with the image downsampled to the feature size, then a 1x1 conv; normalised so that each
    target pixel's weights sum to one (divided by sum + 1e-5).
Losses (all in view 2's frame: A is applied to view 1's maps, which are min-max normalised before A, then
multiplied by the image labels, background label 1):
  - `cls`: multilabel soft margin on both branches' GAP logits, averaged;
  - `er`  (equivariant regularisation): mean |A(CAM(I)) - CAM(A(I))| over the foreground channels;
  - `ecr` (equivariant cross regularisation): |max_onehot(raw CAM of one branch, detached) - refined CAM of the
    other| over all C+1 channels, mean of the top `ecr_top_fraction` per image; both directions, summed;
  - `rvmin` (the official code's `adaptive_min_pooling_loss`, added there into its `loss_cls`; the paper does
    not mention it): per pixel the maximum of the label-masked refined foreground (not normalised), mean of
    the ReLU of the smallest quarter of them, averaged over both branches. Its comment says it does not change
    the best CAM mIoU but moves the best background score (alpha). Weight 1 as in the official code.
As in the official code the refined CAM's gradient reaches only the PCM layers: its input CAM is computed without
gradient and the features are detached. So `ecr` and `rvmin` train only the PCM; `cls` and `er` train the
backbone and classifier. `cams()` (what `wsss infer-cam` writes) is the refined foreground, as in infer_SEAM.py.

Mechanism and defaults checked against the official repository YudeWang/SEAM (network/resnet38_SEAM.py,
train_SEAM.py, infer_SEAM.py, tool/visualization.py). Deviations:
  - Backbone: the project's torchvision ResNet (OS 16 by default) instead of ResNet-38 (OS 8) with its
    Dropout2d(0.5) before the classifier, its frozen first blocks and frozen BatchNorm; PCM taps layer3 and
    layer4 (official: the last two stages, conv4/conv5, 512/1024 channels). At output stride 32 layer3 is twice
    layer4's size and its projection is resized to layer4's.
  - Second view scale 0.5 instead of 0.3: the official 0.3 is for 448 crops (a 134 px view, a 17x17 map at OS 8);
    with our 112 px crops at OS 16, 0.3 gives a 33 px view and a 3x3 map, 0.5 a 56 px view and a 4x4 map.
    `transform` may also be "flip" (horizontal) or "rotate90" (a quarter turn), transforms the paper discusses;
    `view_scale` is then unused.
  - Classifier: C channels (foreground only). The official fc8 has C+1 outputs whose background channel is never
    used (it is overwritten by 1 - max foreground everywhere and left out of the classification loss), so the
    two are equivalent. The classifier keeps PyTorch's default init as in the baseline (official: Xavier); the
    PCM layers use the official init (Kaiming normal for the projections, Xavier uniform, gain 4, for f9).
  - The classification logits are the GAP of the raw CAM at feature resolution (equal to `forward`); the
    official pools the CAM after bilinear upsampling to the input size (nearly the same number).
  - `pcm_affinity` returns the affinity with target pixels as rows (each row sums to one); the official matrix
    is its transpose (normalised over dim 1 and applied as cam @ aff). Same numbers.
  - The PCM arithmetic (cosine similarity, normalisation, matmul) runs in float32 even under autocast; the
    official code trained in float32 throughout.
  - `cams()` refines one image at a time: the affinity is (hw)^2 per image, large at inference scale 2 and OS 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CamModelConfig
from ..core.errors import UserError
from ..models.backbone import create_backbone
from .common import apply_affinity, max_norm, rescale, rescale_to
from .views import TrainingViews, ViewMaps

TRANSFORMS = ("rescale", "flip", "rotate90")
EPS = 1e-5
RVMIN_FRACTION = 0.25  # official adaptive_min_pooling_loss: k = h * w // 4


@dataclass(frozen=True)
class SeamOptions:
    """SEAM settings; the defaults are the official ones except `view_scale` (see the module docstring).

    transform: the equivariance transform A that makes view 2: "rescale" (by `view_scale`), "flip" or "rotate90".
    view_scale: view 2's size relative to view 1 for "rescale" (official 0.3 for 448 crops; 0.5 for our 112).
    ecr_top_fraction: ECR averages the largest this fraction of |target - refined| values per image (official 0.2).
    cls_weight, er_weight, ecr_weight, rvmin_weight: loss weights (official: all 1).
    pcm_channels: output channels of the 1x1 projections of layer3 and layer4 (official 64, 128).
    pcm_dim: channels of the final PCM embedding (official f9: 192).
    """

    transform: str = "rescale"
    view_scale: float = 0.5
    ecr_top_fraction: float = 0.2
    cls_weight: float = 1.0
    er_weight: float = 1.0
    ecr_weight: float = 1.0
    rvmin_weight: float = 1.0
    pcm_channels: tuple[int, int] = (64, 128)
    pcm_dim: int = 192

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise UserError(f"unknown SEAM transform {self.transform!r} (choose from {', '.join(TRANSFORMS)})")
        if not 0 < self.view_scale <= 4:
            raise UserError(f"SEAM view scale must be in (0, 4], got {self.view_scale}")
        if not 0 < self.ecr_top_fraction <= 1:
            raise UserError(f"SEAM ECR top fraction must be in (0, 1], got {self.ecr_top_fraction}")
        if len(self.pcm_channels) != 2 or min(self.pcm_channels) < 1 or self.pcm_dim < 1:
            raise UserError(f"SEAM PCM channels must be two positive numbers and a positive dim, got "
                            f"{self.pcm_channels} and {self.pcm_dim}")


# ---------------------------------------------------------------------------------------------------------------
# Functions on maps: no parameters, usable by tests and by a later PCM refinement step.


def spatial_transform(x: torch.Tensor, transform: str, scale: float = 1.0,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
    """A(x) on (N, K, H, W): bilinear rescale (align_corners=True, as the official code) to `size` or by
    `scale` (floored, at least 1 px); horizontal flip; or a quarter turn (counter-clockwise)."""
    if transform == "rescale":
        return rescale(x, scale) if size is None else rescale_to(x, size)
    if transform == "flip":
        return x.flip(-1)
    if transform == "rotate90":
        return torch.rot90(x, 1, dims=(-2, -1))
    raise UserError(f"unknown SEAM transform {transform!r} (choose from {', '.join(TRANSFORMS)})")


def add_background(foreground: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) normalised foreground → (N, C+1, H, W) with background 1 - max over foreground first."""
    background = 1 - foreground.amax(dim=1, keepdim=True)
    return torch.cat([background, foreground], dim=1)


def suppress_non_max(cams: torch.Tensor) -> torch.Tensor:
    """Zero the foreground channels (1:) below the per-pixel foreground maximum; background (0) kept.

    The official `max_onehot` (values are kept, not set to one; ties all kept). Returns a new tensor.
    """
    foreground = cams[:, 1:]
    foreground = torch.where(foreground < foreground.amax(dim=1, keepdim=True), torch.zeros_like(foreground),
                             foreground)
    return torch.cat([cams[:, :1], foreground], dim=1)


@torch.no_grad()
def pcm_seeds(cam: torch.Tensor) -> torch.Tensor:
    """Raw (N, C, h, w) CAM logits → the PCM's (N, C+1, h, w) input, without gradient (official forward):
    ReLU, (x - 1e-5)^+ / (max + 1e-5) per channel, background 1 - max foreground, non-maximum suppressed."""
    cam = F.relu(cam.detach().float())
    normalised = F.relu(cam - EPS) / (cam.amax(dim=(-2, -1), keepdim=True) + EPS)
    return suppress_non_max(add_background(normalised))


def affinity_from_embedding(embedding: torch.Tensor) -> torch.Tensor:
    """(N, D, h, w) embedding → (N, hw, hw) affinity: ReLU of the cosine similarity (norm + 1e-5), each row
    divided by its sum + 1e-5. Row j holds the weights of the source pixels for target pixel j."""
    with torch.autocast(embedding.device.type, enabled=False):
        flat = embedding.float().flatten(2)
        flat = flat / (flat.norm(dim=1, keepdim=True) + EPS)
        affinity = F.relu(torch.bmm(flat.transpose(1, 2), flat))
        return affinity / (affinity.sum(dim=-1, keepdim=True) + EPS)


def top_fraction_l1(target: torch.Tensor, prediction: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean over images of the mean of the largest `fraction` of |target - prediction| (all channels and
    pixels of an image together; k = int(count * fraction), at least 1)."""
    difference = (target - prediction).abs().flatten(1)
    k = max(1, int(difference.shape[1] * fraction))
    return difference.topk(k, dim=1).values.mean()


def ecr_term(target_maps: torch.Tensor, refined_maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """One ECR direction on aligned, normalised, label-masked (N, C+1, H, W) maps (background first):
    the target is the other branch's raw map, detached and non-maximum suppressed."""
    return top_fraction_l1(suppress_non_max(target_maps.detach()), refined_maps, fraction)


def min_pooling_loss(refined_foreground: torch.Tensor, fraction: float = RVMIN_FRACTION) -> torch.Tensor:
    """Official `adaptive_min_pooling_loss` on label-masked refined foreground (N, C, H, W): per pixel the max
    over classes; the sum of the ReLU of the k = int(H * W * fraction) smallest, divided by k * N."""
    n = refined_foreground.shape[0]
    per_pixel = refined_foreground.amax(dim=1).flatten(1)
    k = max(1, int(per_pixel.shape[1] * fraction))
    return F.relu(per_pixel.topk(k, dim=1, largest=False).values).sum() / (k * n)


def cross_view_losses(raw1: torch.Tensor, refined1: torch.Tensor, raw2: torch.Tensor, refined2: torch.Tensor,
                      labels: torch.Tensor, align: Callable[[torch.Tensor], torch.Tensor],
                      top_fraction: float) -> dict[str, torch.Tensor]:
    """ER and ECR from both branches' maps at their input sizes.

    raw*: (N, C, H, W) raw CAMs; refined*: (N, C+1, H, W) PCM outputs (background first); labels (N, C);
    `align` maps view 1's frame onto view 2's (the transform A). Each map is min-max normalised (`max_norm`)
    before A, then multiplied by the labels (background label 1).
    """
    foreground_labels = labels[:, :, None, None].to(raw1.dtype)
    all_labels = torch.cat([torch.ones_like(foreground_labels[:, :1]), foreground_labels], dim=1)
    maps1 = align(max_norm(raw1)) * foreground_labels
    maps2 = max_norm(raw2) * foreground_labels
    rv1 = align(max_norm(refined1)) * all_labels
    rv2 = max_norm(refined2) * all_labels
    er = (maps1 - maps2).abs().mean()
    ecr = (ecr_term(add_background(maps2), rv1, top_fraction)
           + ecr_term(add_background(maps1), rv2, top_fraction))
    return {"er": er, "ecr": ecr}


# ---------------------------------------------------------------------------------------------------------------


class SeamCam(nn.Module):
    Options = SeamOptions  # the registry builds `Options` from `train-cam --option KEY=VALUE`

    def __init__(self, config: CamModelConfig, num_classes: int, options: SeamOptions = SeamOptions()):
        super().__init__()
        self.options = options
        self.backbone = create_backbone(config.backbone, config.output_stride, config.pretrained, config.frozen_bn)
        channels = self.backbone.channels
        self.classifier = nn.Conv2d(channels[-1], num_classes, kernel_size=1, bias=False)
        # PCM (official f8_3, f8_4, f9): projections of layer3 and layer4, then an embedding of [image, both].
        self.pcm_layer3 = nn.Conv2d(channels[2], options.pcm_channels[0], kernel_size=1, bias=False)
        self.pcm_layer4 = nn.Conv2d(channels[3], options.pcm_channels[1], kernel_size=1, bias=False)
        self.pcm_embed = nn.Conv2d(3 + sum(options.pcm_channels), options.pcm_dim, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(self.pcm_layer3.weight)
        nn.init.kaiming_normal_(self.pcm_layer4.weight)
        nn.init.xavier_uniform_(self.pcm_embed.weight, gain=4)

    # -- pieces ---------------------------------------------------------------------------------------------------

    def cam_and_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw CAM logits (N, C, h, w), before ReLU, and the backbone features [layer1..layer4]."""
        features = self.backbone(images)
        return self.classifier(features[-1]), features

    def pcm_affinity(self, features: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Backbone features [layer1..layer4] and the (N, 3, H, W) input → (N, hw, hw) affinity at layer4's size.

        The features are detached: no gradient reaches the backbone through the PCM.
        """
        layer3, layer4 = features[2].detach(), features[3].detach()
        size = layer4.shape[-2:]
        projected3 = F.relu(self.pcm_layer3(layer3))
        if projected3.shape[-2:] != size:  # output stride 32: layer3 is twice layer4's size
            projected3 = F.interpolate(projected3, size=size, mode="bilinear", align_corners=True)
        projected4 = F.relu(self.pcm_layer4(layer4))
        small_images = F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        embedding = self.pcm_embed(torch.cat([small_images.to(projected4.dtype), projected3, projected4], dim=1))
        return affinity_from_embedding(embedding)

    def refine(self, cam: torch.Tensor, features: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Raw CAM logits (N, C, h, w) → PCM-refined (N, C+1, h, w), background first; gradient to the PCM only."""
        return apply_affinity(pcm_seeds(cam), self.pcm_affinity(features, images))

    def _branch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ViewMaps]:
        """→ logits (N, C), raw CAM (N, C, H, W) and refined CAM (N, C+1, H, W), both upsampled to the input,
        and the view's refined foreground and last features at feature resolution (for add-on losses)."""
        cam, features = self.cam_and_features(images)
        refined_small = self.refine(cam, features, images)
        size = images.shape[-2:]
        logits = cam.float().mean(dim=(-2, -1))
        raw = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=True)
        refined = F.interpolate(refined_small, size=size, mode="bilinear", align_corners=True)
        return logits, raw, refined, ViewMaps(F.relu(refined_small[:, 1:]), features[-1])

    # -- the method protocol --------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)[-1]
        return self.classifier(F.adaptive_avg_pool2d(features, 1)).flatten(1)

    def training_losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.training_views(images, labels).losses

    def training_views(self, images: torch.Tensor, labels: torch.Tensor) -> TrainingViews:
        """SEAM's loss terms, and both views' PCM-refined foreground and last features (for add-on losses)."""
        options = self.options
        labels = labels.float()
        view2 = spatial_transform(images, options.transform, options.view_scale)
        logits1, raw1, refined1, maps1 = self._branch(images)
        logits2, raw2, refined2, maps2 = self._branch(view2)
        size2 = raw2.shape[-2:]

        def align_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            return spatial_transform(maps, options.transform, size=size)

        cls = (F.multilabel_soft_margin_loss(logits1, labels) + F.multilabel_soft_margin_loss(logits2, labels)) / 2
        masks = labels[:, :, None, None]
        rvmin = (min_pooling_loss(refined1[:, 1:] * masks) + min_pooling_loss(refined2[:, 1:] * masks)) / 2
        terms = cross_view_losses(raw1, refined1, raw2, refined2, labels, lambda maps: align_to(maps, size2),
                                  options.ecr_top_fraction)
        losses = {"cls": options.cls_weight * cls, "er": options.er_weight * terms["er"],
                  "ecr": options.ecr_weight * terms["ecr"], "rvmin": options.rvmin_weight * rvmin}
        return TrainingViews(losses, maps1, maps2, align_to)

    def raw_cams(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's ReLU'd class maps (N, C, h, w), as the baseline's `cams`."""
        return F.relu(self.cam_and_features(images)[0])

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """PCM-refined foreground maps (N, C, h, w), non-negative (official infer_SEAM.py uses these)."""
        cam, features = self.cam_and_features(images)
        refined = [self.refine(cam[i:i + 1], [f[i:i + 1] for f in features], images[i:i + 1])
                   for i in range(images.shape[0])]
        return F.relu(torch.cat(refined)[:, 1:])

    @property
    def normalization(self):
        return self.backbone.normalization

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        new_layers = [self.classifier, self.pcm_layer3, self.pcm_layer4, self.pcm_embed]
        return list(self.backbone.parameters()), [p for layer in new_layers for p in layer.parameters()]


__all__ = ["SeamCam", "SeamOptions", "add_background", "affinity_from_embedding", "cross_view_losses", "ecr_term",
           "min_pooling_loss", "pcm_seeds", "spatial_transform", "suppress_non_max", "top_fraction_l1"]
