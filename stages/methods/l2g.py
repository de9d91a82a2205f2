"""L2G (Jiang et al., CVPR 2022): a local-to-global knowledge transfer framework, as a CAM training method.

Two classifiers of the same form (backbone, bias-free 1x1 conv with C+1 output channels, background first;
logits = spatial mean of the C class channels): a *global* network that sees the training crop and a *local*
network that sees `local_views` square views cut out of it (side `local_crop` x the crop's shorter side; by
default the official layout: the four corners, then random positions). Losses:
  - `cls`: multilabel soft margin of the local network's logits on every view against the image's labels;
  - `kd` (attention transfer): the global network's class map is aligned to each view's box with RoIAlign at
    the local map's size, softmaxed over the C+1 channels, and pulled (mean squared error x `kd_weight`) towards
    the local network's attention target, computed without gradient from the local map: ReLU, max-normalised
    per channel, classes absent from the image zeroed, and at each pixel only the largest channel kept;
  - shape transfer (`shape_transfer`, needs saliency maps): the crop's saliency is divided by its maximum (as the
    official loader does), and for views whose image has a saliency map the target is the binarised attention
    (> `bg_threshold`) times that saliency on the class channels and times (1 - saliency) on the background
    channel; views without a map keep the plain attention target.
The global network gets no classification loss (as in the official code, which computes but does not use it);
its class channels are the CAMs `wsss infer-cam` writes. The class scores (train-cam's validation mAP, the classes
`wsss predict` picks) are the local network's on the whole image: it is the network trained to classify (on the
pretrained benchmark, seeds 0-1, the global network's logits scored val mAP 0.66-0.69, the local one's 0.99).

Mechanism and defaults checked against the official repository PengtaoJiang/L2G (scripts/train_l2g.py,
scripts/train_l2g_sal_voc.py, models/resnet38.py, utils/LoadData.py, train_l2g_sal_voc.sh). Deviations:
  - Backbones: any of the project's (OS 16 by default; the local one may differ, `local_backbone`, its views then
    re-normalized for its own input normalization)
    instead of ResNet-38 (OS 8). The official networks also add SEAM's PCM block to the class map (features of
    the last two stages and the image, a cosine affinity applied to the CAM); it is not part of L2G's mechanism
    and is left out here (on this benchmark the PCM blurred CAMs, see benchmarks/README.md "Why SEAM does not help
    here").
  - Sizes scaled to our crops: views of 0.714 x the crop (official 320 of 448), so 80 px views of 112 px crops.
  - RoIAlign with `aligned=True` (the half-pixel-correct box mapping, consistent with how CAMs are upsampled);
    the official code uses the default `aligned=False`, which shifts boxes by half a feature cell.
  - The saliency crop is resized to the local map with area averaging (each cell gets the mean saliency of the
    pixels it covers); the official code uses nearest-neighbour resizing.
  - View positions (`crop_mode`): "official" (default) is the official VOC/COCO loader's layout
    (`VOCDataset_l2g_sal_crop.box_generation`): the four corners, then `local_views - 4` random positions; it needs
    at least 4 views (the official code asserts it). Its random positions include the far border (the official
    `np.random.randint(0, max_range)` stops one pixel short of it). "random" (every view at a random position) and
    "uniform" (a regular grid, rows x columns, evenly spaced) are ours.
  - The background channel (of both networks) gets no classification signal, as in the official code: in the
    local network it only takes part in the per-pixel maximum of the attention target.
  - The global network's classifier learns at the backbone's learning rate, not the new layers' x10: with the
    stage's from-scratch rate (0.1, official 0.001 with ImageNet weights) a x10 head saturates the global softmax
    within ten iterations (logits ~500, every pixel one-hot on one channel) and the transfer loss stops training it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CamModelConfig
from ..core.errors import UserError
from ..core.tv import torchvision
from ..models.backbone import create_backbone

CROP_MODES = ("official", "random", "uniform")
EPS = 1e-8  # official normalisation epsilon
SALIENCY_EPS = 1e-10  # official, dividing the saliency by its maximum


@dataclass(frozen=True)
class L2GOptions:
    """L2G settings (official defaults unless noted).

    local_views: views per image (official 6).
    local_crop: a view's side as a fraction of the crop's shorter side (official 320/448 = 0.714).
    crop_mode: "official" (the four corners + random views), "random" or "uniform" (a grid).
    local_backbone: the local network's backbone ("" = the global one's).
    kd_weight: weight of the attention transfer loss (official 10).
    shape_transfer: use saliency maps in the attention target (official train_l2g_sal_*.py).
    bg_threshold: binarisation threshold of the attention target for shape transfer (official 0.001).
    """

    local_views: int = 6
    local_crop: float = 0.714
    crop_mode: str = "official"
    local_backbone: str = ""
    kd_weight: float = 10.0
    shape_transfer: bool = True
    bg_threshold: float = 0.001


class ClassMapNet(nn.Module):
    """Backbone + bias-free 1x1 classifier with C+1 channels (background first); logits from the class channels."""

    def __init__(self, config: CamModelConfig, num_classes: int):
        super().__init__()
        self.backbone = create_backbone(config.backbone, config.output_stride, config.pretrained, config.frozen_bn)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes + 1, kernel_size=1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, C+1, h, w) class map at the backbone's output stride."""
        return self.classifier(self.backbone(images)[-1])


def class_logits(class_map: torch.Tensor) -> torch.Tensor:
    return class_map[:, 1:].mean(dim=(2, 3))


def check_view_layout(views: int, mode: str) -> None:
    if mode not in CROP_MODES:
        raise UserError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    if views < 1:
        raise UserError(f"local_views must be at least 1, got {views}")
    if mode == "official" and views < 4:
        raise UserError(f"crop_mode=official takes the 4 corners first: local_views must be at least 4, got {views} "
                        "(or use -o crop_mode=random)")


def local_view_boxes(height: int, width: int, side: int, views: int, mode: str, batch: int) -> torch.Tensor:
    """(batch * views, 5) RoIAlign boxes [image index, x1, y1, x2, y2] in pixels (x2, y2 exclusive) of square views.

    "official": the four corners (top left, bottom left, top right, bottom right, the official order), then
    random positions for the other views, each image its own; "random": every view at a random integer position,
    each image its own; "uniform": the same grid for all images, rows x columns with rows = floor(sqrt(views)),
    positions evenly spaced from one border to the other.
    """
    check_view_layout(views, mode)
    if not 0 < side <= min(height, width):
        raise UserError(f"local view of {side} px does not fit a {width}x{height} crop")
    if mode in ("official", "random"):
        x = torch.randint(0, width - side + 1, (batch, views))  # the global RNG, seeded by the stage
        y = torch.randint(0, height - side + 1, (batch, views))
        if mode == "official":
            x[:, :4] = torch.tensor([0, 0, width - side, width - side])
            y[:, :4] = torch.tensor([0, height - side, 0, height - side])
    elif mode == "uniform":
        rows = max(1, math.isqrt(views))
        cols = math.ceil(views / rows)
        xs = torch.linspace(0, width - side, cols).round().long()
        ys = torch.linspace(0, height - side, rows).round().long()
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        x = grid_x.flatten()[:views].expand(batch, views)
        y = grid_y.flatten()[:views].expand(batch, views)
    index = torch.arange(batch).repeat_interleave(views)
    x, y = x.flatten(), y.flatten()
    return torch.stack([index, x, y, x + side, y + side], dim=1).float()


def crop_views(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The pixels of each integer box: (len(boxes), C, side, side)."""
    views = []
    for index, x1, y1, x2, y2 in boxes.long().tolist():
        views.append(images[index, :, y1:y2, x1:x2])
    return torch.stack(views)


def align_global_map(global_map: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int],
                     output_stride: int) -> torch.Tensor:
    """The global class map under each view's box, resampled to the local map's size (RoIAlign, aligned)."""
    return torchvision().ops.roi_align(global_map, boxes.to(global_map), size, spatial_scale=1.0 / output_stride,
                                       aligned=True)


@torch.no_grad()
def attention_targets(local_map: torch.Tensor, labels: torch.Tensor, views: int) -> torch.Tensor:
    """The local network's attention target (N*V, C+1, h, w): ReLU'd and max-normalised per channel, classes
    absent from the image zeroed (background kept), and at each pixel only the largest channel kept."""
    target = F.relu(local_map.detach().float())
    target = target / (target.amax(dim=(2, 3), keepdim=True) + EPS)
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1).repeat_interleave(views, dim=0)
    target = target * present[:, :, None, None].to(target)
    winner = F.one_hot(target.argmax(dim=1), target.shape[1]).permute(0, 3, 1, 2).to(target)
    return target * winner


@torch.no_grad()
def shape_targets(attention: torch.Tensor, saliency_views: torch.Tensor, bg_threshold: float) -> torch.Tensor:
    """Shape transfer: the binarised attention times the saliency (class channels) or 1 - saliency (background).

    `saliency_views` is (N*V, 1, h, w) in [0, 1], already at the attention map's size."""
    binary = (attention > bg_threshold).to(attention)
    return torch.cat([binary[:, :1] * (1 - saliency_views), binary[:, 1:] * saliency_views], dim=1)


def transfer_loss(aligned_global: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the global map's softmax over the C+1 channels and the target."""
    return F.mse_loss(torch.softmax(aligned_global.float(), dim=1), target)


class L2GCam(nn.Module):
    Options = L2GOptions

    def __init__(self, config: CamModelConfig, num_classes: int, options: L2GOptions = L2GOptions()):
        super().__init__()
        check_view_layout(options.local_views, options.crop_mode)
        if not 0 < options.local_crop <= 1:
            raise UserError(f"local_crop is a fraction of the crop in (0, 1], got {options.local_crop}")
        self.options = options
        self.output_stride = config.output_stride
        self.global_net = ClassMapNet(config, num_classes)
        local_config = CamModelConfig(options.local_backbone or config.backbone, config.output_stride,
                                      config.pretrained, config.frozen_bn)
        self.local_net = ClassMapNet(local_config, num_classes)

    @property
    def uses_saliency(self) -> bool:
        return self.options.shape_transfer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of the local network, the one a classification loss trains, on the whole image."""
        return class_logits(self.local_class_map(images))

    def local_class_map(self, images: torch.Tensor) -> torch.Tensor:
        """The local network's class map of images normalized for the global backbone."""
        # The local backbone may expect another input normalization than the global one (local_backbone).
        return self.local_net(self.normalization.to(self.local_net.backbone.normalization, images))

    def training_losses(self, images: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor | None = None,
                        has_saliency: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        options = self.options
        batch, _, height, width = images.shape
        side = max(1, round(options.local_crop * min(height, width)))
        boxes = local_view_boxes(height, width, side, options.local_views, options.crop_mode, batch)
        local_map = self.local_class_map(crop_views(images, boxes))
        local_labels = labels.repeat_interleave(options.local_views, dim=0)
        losses = {"cls": F.multilabel_soft_margin_loss(class_logits(local_map), local_labels)}

        target = attention_targets(local_map, labels, options.local_views)
        if options.shape_transfer:
            if saliency is None or has_saliency is None:
                raise UserError("L2G shape transfer needs saliency maps (run `wsss saliency` first, or "
                                "train with -o shape_transfer=false)")
            saliency = saliency.float() / (saliency.float().amax(dim=(1, 2), keepdim=True) + SALIENCY_EPS)
            saliency_views = F.adaptive_avg_pool2d(crop_views(saliency[:, None], boxes), target.shape[-2:])
            with_map = has_saliency.bool().repeat_interleave(options.local_views).to(target.device)
            shaped = shape_targets(target, saliency_views.to(target), options.bg_threshold)
            target = torch.where(with_map[:, None, None, None], shaped, target)

        aligned = align_global_map(self.global_net(images), boxes, tuple(target.shape[-2:]), self.output_stride)
        losses["kd"] = options.kd_weight * transfer_loss(aligned, target)
        return losses

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.global_net(images)[:, 1:])

    @property
    def backbone(self) -> nn.Module:
        """The global network's backbone: the one whose CAMs `infer-cam` writes."""
        return self.global_net.backbone

    @property
    def normalization(self):
        return self.global_net.backbone.normalization

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        # The global classifier learns at the backbone's rate (see the module docstring).
        return ([*self.global_net.parameters(), *self.local_net.backbone.parameters()],
                list(self.local_net.classifier.parameters()))
