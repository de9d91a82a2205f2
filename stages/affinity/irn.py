"""IRN's class-boundary branch (Ahn et al., CVPR 2019), `wsss train-affinity --method irn`.

The backbone is frozen (weights and BatchNorm statistics); a branch on its feature levels predicts a class-boundary
map B at stride 4: per level a 1x1 conv to 32 channels, GroupNorm(4, 32), bilinear upsampling to the stride-4
size, ReLU; the levels concatenated and a 1x1 conv (with bias) to one logit, B = sigmoid. The affinity of two
pixels is 1 - the largest B on the line between them (`pairs.boundary_affinities`). Trained on the pairs within
`radius` of the pseudo mask reduced to stride 4 (nearest): with p = affinity,
    loss = (bg / 2 + fg / 2) / 2 + neg / 2,
bg and fg the mean of -log(p + 1e-5) over background-background and same-foreground pairs, neg the mean of
-log(1 + 1e-5 - p) over pairs of different classes (`pairs.pair_labels`; unknown pixels take no part).

The random walk (`wsss pseudo-label --refine rw`): B from the image and its flip (logits averaged), the pair
affinities within `walk_radius`, transition a^beta (`walk.transition_matrix`), the CAMs at stride 4 times (1 - B)
walked 2^`log2_steps` steps, upsampled x4 (bilinear), divided by their maximum; the score stack's background row
is kept, so pseudo-label's thresholds are the background score (IRN's `sem_seg_bg_thres` is 0.25 for both).

Mechanism and defaults checked against the official repository jiwoon-ahn/irn (net/resnet50_irn.py,
misc/indexing.py, step/train_irn.py, step/make_sem_seg_labels.py, run_sample.py: radius 10 for training, 5 for
the walk, beta 10, exp_times 8, 3 epochs, lr 0.1 on the branch, weight decay 1e-4, rescale 0.5-1.5). Deviations:
  - The branch reads the backbone's four levels (strides 4, 8, 16, 16 at OS16); IRN's also reads the stem's
    output (stride 4, 64 channels of ResNet-50). The levels are upsampled to the stride-4 size directly (IRN
    upsamples by the factor and crops).
  - The backbone starts from the run's CAM classifier (`train-affinity --pretrained cam`, the default) or
    from ImageNet weights as the official (`--pretrained imagenet`).
  - IRN's displacement-field branch, which serves its instance segmentation, is left out, with its two loss
    terms.
  - The walk's stride-4 CAMs are the full-resolution CAMs of `infer-cam` averaged over 4x4 cells and
    max-normalised per class (IRN computes them at stride 4 and normalises them there).
  - Images are padded at the bottom and right to a multiple of 32 (IRN pads to its 512 crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AffinityModelConfig
from ..core.errors import UserError
from .common import EPS, affinity_loss, create_affinity_backbone, padded, reduce_labels, stride_size
from .pairs import boundary_affinities, search_directions

BRANCH_CHANNELS = 32


@dataclass(frozen=True)
class IrnOptions:
    """IRN settings (official defaults).

    radius: pairs trained on, in stride-4 cells (official 10).
    walk_radius: pairs of the random walk (official 5).
    beta: affinities raised to beta in the transition (official 10).
    log2_steps: the walk takes 2^log2_steps steps (official exp_times 8).
    """

    radius: int = 10
    walk_radius: int = 5
    beta: float = 10.0
    log2_steps: int = 8

    def __post_init__(self):
        if self.radius < 2 or self.walk_radius < 2:
            raise UserError(f"IRN radius and walk_radius must be at least 2, got {self.radius} and "
                             f"{self.walk_radius}")
        if self.beta <= 0 or self.log2_steps < 0:
            raise UserError(f"IRN beta must be > 0 and log2_steps >= 0, got {self.beta} and {self.log2_steps}")


class IrnAffinity(nn.Module):
    Options = IrnOptions
    stride = 4

    def __init__(self, config: AffinityModelConfig, options: IrnOptions = IrnOptions()):
        super().__init__()
        self.options = options
        self.backbone = create_affinity_backbone(config).requires_grad_(False)
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, BRANCH_CHANNELS, 1, bias=False), nn.GroupNorm(4, BRANCH_CHANNELS))
            for channels in self.backbone.channels)
        self.boundary = nn.Conv2d(BRANCH_CHANNELS * len(self.levels), 1, 1, bias=True)

    @property
    def normalization(self):
        return self.backbone.normalization

    def train(self, mode: bool = True) -> IrnAffinity:
        super().train(mode)
        self.backbone.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → class-boundary logits (N, 1, h, w) at the first level's stride (4)."""
        with torch.no_grad():
            features = self.backbone(images)
        size = features[0].shape[-2:]
        branches = [F.relu(F.interpolate(level(f), size=size, mode="bilinear", align_corners=False))
                    for level, f in zip(self.levels, features)]
        return self.boundary(torch.cat(branches, dim=1))

    def training_losses(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        boundary = torch.sigmoid(self(images).float())[:, 0]
        return affinity_loss(boundary_affinities(boundary, self.options.radius),
                             reduce_labels(masks, boundary.shape[-2:]), search_directions(self.options.radius))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        # IRN trains the boundary branch at the base learning rate; the backbone is frozen.
        return [*self.levels.parameters(), *self.boundary.parameters()], []

    @torch.inference_mode()
    def walk_affinities(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalized images of one size (N, 3, H, W) → (pair affinities (N, D, h, w) within walk_radius, what
        `walk_maps` needs of each image: its boundary map B (h, w)), B from the image and its flip."""
        count, height, width = len(images), *images.shape[-2:]
        logits = self(padded(torch.cat([images, images.flip(-1)]), 32)).float()
        logits = logits[..., :stride_size(height, self.stride), :stride_size(width, self.stride)]
        boundary = torch.sigmoid(logits[:count, 0] / 2 + logits[count:, 0].flip(-1) / 2)
        return boundary_affinities(boundary, self.options.walk_radius), list(boundary)

    def walk_maps(self, scores: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """The score stack (K+1, H, W), background first → the maps (K, h, w) the walk takes: the CAMs at
        stride 4, max-normalised, times 1 - B."""
        cams = F.avg_pool2d(scores[None, 1:], self.stride, ceil_mode=True)[0]
        cams = cams / (cams.amax(dim=(1, 2), keepdim=True) + EPS)
        return cams * (1 - boundary)

    def walked_scores(self, scores: torch.Tensor, walked: torch.Tensor) -> torch.Tensor:
        """The score stack after the walk of its `walk_maps`: the walked maps upsampled x4, divided by their
        maximum, under the stack's own background row."""
        height, width = scores.shape[-2:]
        walked = F.interpolate(walked[None], scale_factor=self.stride, mode="bilinear", align_corners=False)
        walked = walked[0, :, :height, :width]
        return torch.cat([scores[:1], walked / walked.max().clamp_min(EPS)])
