"""AffinityNet (Ahn and Kwak, CVPR 2018; PSA), as SEAM and PPC use it: `wsss train-affinity --method psa`.

The backbone's last three levels go through 1x1 convs (no bias) to 64, 128 and 256 channels, each followed by
ELU, are resized to the first of them (stride 8) and concatenated, then a 1x1 conv (448 to 448, no bias) and ELU
give the affinity features f. The affinity of two pixels is exp(-mean_c |f_p - f_q|) (`pairs.feature_affinities`).
Trained on the pairs within `radius` of the pseudo mask reduced to stride 8 (nearest): with p = affinity,
    loss = bg / 4 + fg / 4 + neg / 2,
bg and fg the mean of -log(p + 1e-5) over background-background and same-foreground pairs, neg the mean of
-log(1 + 1e-5 - p) over pairs of different classes. The backbone trains at the base learning rate and the new
layers at `--head-lr-mult` times it; its BatchNorm layers stay frozen, as in the official ResNet-38.

The random walk (`wsss pseudo-label --refine rw`): the background score (1 - max_c CAM)^`alpha` joins the CAMs,
the stack (padded with zeros to a multiple of 8) is averaged over 8x8 cells, walked 2^`log2_steps` steps with
the transition a^beta over the pairs within `radius`, and upsampled back (bilinear). The walked background
replaces the stack's threshold row, so pseudo-label's thresholds play no part: every pixel gets a class.

Mechanism and defaults checked against the official repositories jiwoon-ahn/psa (network/resnet38_aff.py,
train_aff.py, infer_aff.py, voc12/data.py) and YudeWang/SEAM (train_aff.py, infer_aff.py: lr 0.01, 8 epochs,
weight decay 5e-4, radius 5, beta 8, logt 6, alpha 6, the defaults here; PSA's own inference has logt 8 and
alpha 16). Deviations:
  - Any backbone at OS 8 (its last three levels at stride 8, as ResNet-38's conv4-conv6); at OS 16 the deeper
    levels are upsampled to stride 8. The official ResNet-38 also keeps its first blocks frozen; here every
    block trains.
  - The backbone starts from the run's CAM classifier (`--pretrained cam`, the default) or from ImageNet weights
    (`--pretrained imagenet`); the official starts from the classifier's ImageNet initialisation.
  - The affinity labels come from one pseudo mask with unknown pixels (`pseudo-label --refine crf`), reduced to
    stride 8 by nearest neighbour; the official code average-pools the two CRF score maps (low and high alpha)
    to stride 8 and labels each cell by their argmaxes.
  - Images are padded at the bottom and right to a multiple of 32 (the official pads to a multiple of 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AffinityModelConfig
from ..core.errors import UserError
from .common import affinity_loss, create_affinity_backbone, padded, reduce_labels, stride_size
from .pairs import feature_affinities, search_directions

WIDTHS = (64, 128, 256)  # official f8_3, f8_4, f8_5


@dataclass(frozen=True)
class PsaOptions:
    """AffinityNet settings (SEAM's defaults).

    radius: pairs trained on and walked over, in stride-8 cells (official 5).
    beta: affinities raised to beta in the transition (official 8).
    log2_steps: the walk takes 2^log2_steps steps (SEAM logt 6; PSA 8).
    alpha: the background score is (1 - max CAM)^alpha (SEAM 6; PSA 16).
    """

    radius: int = 5
    beta: float = 8.0
    log2_steps: int = 6
    alpha: float = 6.0

    @property
    def walk_radius(self) -> int:
        return self.radius  # AffinityNet walks over the pairs it was trained on

    def __post_init__(self):
        if self.radius < 2:
            raise UserError(f"AffinityNet radius must be at least 2, got {self.radius}")
        if self.beta <= 0 or self.log2_steps < 0 or self.alpha <= 0:
            raise UserError(f"AffinityNet beta and alpha must be > 0 and log2_steps >= 0, got {self.beta}, "
                             f"{self.alpha} and {self.log2_steps}")


class PsaAffinity(nn.Module):
    Options = PsaOptions
    stride = 8

    def __init__(self, config: AffinityModelConfig, options: PsaOptions = PsaOptions()):
        super().__init__()
        self.options = options
        self.backbone = create_affinity_backbone(config)
        self.reduce = nn.ModuleList(nn.Conv2d(channels, width, 1, bias=False)
                                    for channels, width in zip(self.backbone.channels[1:], WIDTHS))
        self.fuse = nn.Conv2d(sum(WIDTHS), sum(WIDTHS), 1, bias=False)
        for conv in self.reduce:
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    @property
    def normalization(self):
        return self.backbone.normalization

    def train(self, mode: bool = True) -> PsaAffinity:
        super().train(mode)
        for module in self.backbone.modules():  # frozen BatchNorm, as the official ResNet-38
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → affinity features (N, 448, h, w) at the second level's stride (8)."""
        levels = self.backbone(images)[1:]
        size = levels[0].shape[-2:]
        reduced = [F.interpolate(F.elu(conv(level)), size=size, mode="bilinear", align_corners=False)
                   for conv, level in zip(self.reduce, levels)]
        return F.elu(self.fuse(torch.cat(reduced, dim=1)))

    def training_losses(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self(images).float()
        return affinity_loss(feature_affinities(features, self.options.radius),
                             reduce_labels(masks, features.shape[-2:]), search_directions(self.options.radius))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        trained = [p for p in self.backbone.parameters() if p.requires_grad]
        return trained, [*self.reduce.parameters(), *self.fuse.parameters()]

    @torch.inference_mode()
    def walk_affinities(self, images: torch.Tensor) -> tuple[torch.Tensor, list[None]]:
        """Normalized images of one size (N, 3, H, W) → (pair affinities (N, D, h, w) within radius, None per
        image: `walk_maps` needs nothing else of it)."""
        height, width = images.shape[-2:]
        features = self(padded(images, 32)).float()
        features = features[..., :stride_size(height, self.stride), :stride_size(width, self.stride)]
        return feature_affinities(features, self.options.radius), [None] * len(images)

    def walk_maps(self, scores: torch.Tensor, context: None) -> torch.Tensor:
        """The score stack (K+1, H, W), background first → the maps (K+1, h, w) the walk takes: the background
        (1 - max CAM)^alpha over the CAMs, padded to a multiple of 8, averaged over 8x8 cells."""
        cams = scores[1:]
        background = (1 - cams.amax(dim=0, keepdim=True)) ** self.options.alpha if len(cams) else \
            torch.ones_like(scores[:1])
        return F.avg_pool2d(padded(torch.cat([background, cams])[None], self.stride), self.stride)[0]

    def walked_scores(self, scores: torch.Tensor, walked: torch.Tensor) -> torch.Tensor:
        """The score stack after the walk of its `walk_maps`: the walked maps upsampled x8 to the padded size,
        cropped to the image; the walked background replaces the threshold row."""
        height, width = scores.shape[-2:]
        walked = F.interpolate(walked[None], scale_factor=self.stride, mode="bilinear", align_corners=False)
        return walked[0, :, :height, :width]
