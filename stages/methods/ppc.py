"""PPC (Du et al., CVPR 2022): pixel-to-prototype contrast, an add-on loss for two-view CAM training
(`wsss train-cam --method seam --aux ppc`, or `--method baseline --aux ppc` with a rescaled second view).

A projection head (1x1 conv + ReLU, then L2 normalisation per pixel) embeds the backbone's last features of both
views; the first view's embeddings and class maps are carried onto the second view's frame (the method's
transform A), so pixel i of one view and pixel i of the other show the same place. Per view, without gradient:
  - pseudo labels: per-pixel argmax of [background score `bg_threshold`, the min-max normalised class maps times
    the image labels];
  - prototypes: for each class, the top-K pixels of the whole batch by their normalised class map, their
    embeddings averaged with those values as weights, then L2-normalised; K = `top_k_fraction` x one map's pixels.
The contrast of pixel embedding v with label y against prototypes P, at temperature tau, is
    F(v; y; P) = -log( exp(v.p_y / tau) / sum_c exp(v.p_c / tau) )
and the loss terms, each averaged over the two views and weighted 0.1 by default as in the official code:
  - `ppc_cp` (cross prototype): F(v; y; P'), the other view's prototypes;
  - `ppc_cc` (cross CAM): F(v; y'; P), the other view's pseudo labels;
  - `ppc_intra`: F(v; y; P) with semi-hard prototype mining (of each pixel's negative prototypes, the hardest
    `negative_hard_fraction` are collected and the less similar `negative_keep_fraction` of those kept, so the
    very hardest, most likely same-class ones, are dropped) and hard pixel sampling (per class, half the pixels
    at random and half from the `pixel_hard_fraction` least similar to their prototype, again the less hard end
    of that set); the mean over sampled pixels per class, then over classes with at least two pixels.
    `mining=false` uses all prototypes and all pixels instead (the paper's ablation of plain intra-view contrast).

Mechanism and defaults checked against the official repository usr922/wseg, its SEAM + PPC training on master
(contrast_train.py, network/resnet38_contrast.py): background score 0.2, K = h*w // 8, weights 0.1, temperature
0.1. (The repository's other branch, EPS + PPC in module/train.py get_contrast_loss, uses background 0.1,
K = h*w / 16 and EPS's saliency loss; it is not the one followed here.) Deviations:
  - PPC is an add-on to the project's SEAM or baseline. For SEAM the class maps are the PCM-refined ones
    (official `cam_rv`), for the baseline the classifier's ReLU'd maps.
  - The background prototype: the official code takes the top K of its constant background score (ties, so
    arbitrary pixels); here the background pixels are ranked by 1 - the largest label-masked class score.
  - Prototypes average the L2-normalised embeddings (the paper's v_i); the official code averages them before
    normalisation.
  - K as a fraction of one map, floored as the official h*w // 8 (the paper's 32 on 16x16): on our 7x7 crop maps
    K is 6, on the 4x4 second-view maps 2.
  - Mining counts: the official code keeps ranks 4-13 of all 21 prototypes by similarity (the positive may be
    among them); here the positive is always kept and the negatives are counted without it:
    ceil(0.6 x C) hardest, ceil(0.5 x that) kept. Pixel sampling keeps, as the official code, the less hard
    half of the least similar 60%. Classes with fewer than two pixels are left out of the class mean (the
    official code counts them in the divisor).
  - The contrast runs in float32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from .common import max_norm
from .views import TrainingViews


@dataclass(frozen=True)
class PpcOptions:
    """PPC settings; defaults from the official code (REFERENCES.md) unless noted.

    dim: channels of the projection head's embedding (official 128).
    temperature: tau of the contrast (official 0.1).
    cross_prototype_weight, cross_cam_weight, intra_weight: weights of the three terms (official 0.1 each; 0 drops one).
    bg_threshold: the constant background score of the pseudo labels (official 0.2, contrast_train.py).
    top_k_fraction: K, the pixels per prototype, as a fraction of one map's pixels, floored (official h*w // 8).
    mining: semi-hard prototype mining and hard pixel sampling in the intra-view term.
    negative_hard_fraction, negative_keep_fraction: mining keeps this share of that share of the hardest negatives.
    pixel_hard_fraction: hard pixels come from this share of each class's least similar pixels.
    """

    dim: int = 128
    temperature: float = 0.1
    cross_prototype_weight: float = 0.1
    cross_cam_weight: float = 0.1
    intra_weight: float = 0.1
    bg_threshold: float = 0.2
    top_k_fraction: float = 0.125
    mining: bool = True
    negative_hard_fraction: float = 0.6
    negative_keep_fraction: float = 0.5
    pixel_hard_fraction: float = 0.6

    def __post_init__(self):
        if self.dim < 1 or self.temperature <= 0:
            raise UserError(f"PPC dim must be positive and temperature > 0, got {self.dim} and {self.temperature}")
        for name in ("top_k_fraction", "negative_hard_fraction", "negative_keep_fraction", "pixel_hard_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"PPC {name} must be in (0, 1], got {getattr(self, name)}")
        if min(self.cross_prototype_weight, self.cross_cam_weight, self.intra_weight) < 0:
            raise UserError("PPC loss weights must be >= 0")


# ---------------------------------------------------------------------------------------------------------------
# Functions on embeddings and maps, no parameters.


def contrast(embeddings: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor, temperature: float,
             keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per pixel F(v; y; P) = -log softmax(v.P / tau)[y]: embeddings (M, D), targets (M,), prototypes (K, D);
    `keep` (M, K) bool leaves prototypes out of a pixel's denominator (its target must be kept). → (M,)"""
    logits = embeddings @ prototypes.t() / temperature
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, targets, reduction="none")


def class_scores(cams: torch.Tensor, labels: torch.Tensor, bg_threshold: float) -> torch.Tensor:
    """(N, C, h, w) class maps, (N, C) labels → (N, C+1, h, w): background `bg_threshold` first, then the min-max
    normalised maps times the labels. Their per-pixel argmax is the pseudo label."""
    foreground = max_norm(cams.float()) * labels[:, :, None, None].float()
    return torch.cat([torch.full_like(foreground[:, :1], bg_threshold), foreground], dim=1)


def prototype_confidence(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, C+1, h, w): how surely each pixel shows each class, to pick prototype pixels by. Classes: the min-max
    normalised maps (not label-masked, so a class absent from the batch still gets a prototype, as in the official
    code); background: 1 - the largest label-masked class score."""
    foreground = max_norm(cams.float())
    background = 1 - (foreground * labels[:, :, None, None].float()).amax(dim=1, keepdim=True)
    return torch.cat([background, foreground], dim=1)


def estimate_prototypes(embeddings: torch.Tensor, confidence: torch.Tensor, k: int) -> torch.Tensor:
    """embeddings (M, D) and confidence (M, K) over all pixels of the batch → (K, D) L2-normalised prototypes:
    for each class the confidence-weighted mean of its top-k pixels' embeddings."""
    values, indices = confidence.t().topk(min(k, confidence.shape[0]), dim=1)  # (K, k)
    weights = values / values.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return F.normalize((weights[:, :, None] * embeddings[indices]).sum(dim=1), dim=1)


def semi_hard_negatives(similarity: torch.Tensor, targets: torch.Tensor, hard_fraction: float,
                        keep_fraction: float) -> torch.Tensor:
    """similarity (M, K) of pixels to prototypes, targets (M,) → keep mask (M, K): each pixel's own prototype,
    and of its K-1 negatives ranked by similarity (most similar = hardest) the ceil(hard_fraction x (K-1))
    hardest, of which the ceil(keep_fraction x that) least similar are kept."""
    m, k = similarity.shape
    hardest = math.ceil(hard_fraction * (k - 1))
    kept = math.ceil(keep_fraction * hardest)
    rows = torch.arange(m, device=similarity.device)
    negatives_only = similarity.clone()
    negatives_only[rows, targets] = float("-inf")
    order = negatives_only.argsort(dim=1, descending=True)[:, hardest - kept:hardest]
    keep = torch.zeros_like(similarity, dtype=torch.bool)
    keep[rows[:, None], order] = True
    keep[rows, targets] = True
    return keep


def sample_pixels(similarity_to_own: torch.Tensor, hard_fraction: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """The pixels of one class (their similarity to the class prototype, (n,)) → indices of half of them at random
    and half from the int(hard_fraction x n) least similar (its least hard end, as the official code)."""
    n = similarity_to_own.shape[0]
    half = n // 2
    at_random = torch.randperm(n, generator=generator, device="cpu")[:half].to(similarity_to_own.device)
    hard_pool = max(int(hard_fraction * n), half)
    hard = similarity_to_own.argsort()[hard_pool - half:hard_pool]
    return torch.cat([at_random, hard])


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _View:
    embeddings: torch.Tensor  # (M, D), L2-normalised, with gradient
    pseudo_labels: torch.Tensor  # (M,)
    prototypes: torch.Tensor  # (C+1, D), no gradient


class PixelPrototypeContrast(nn.Module):
    Options = PpcOptions

    def __init__(self, feature_channels: int, options: PpcOptions = PpcOptions()):
        super().__init__()
        self.options = options
        self.projection = nn.Conv2d(feature_channels, options.dim, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.projection.weight)  # as the official proj_fc

    def forward(self, views: TrainingViews, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        options = self.options
        size = tuple(views.second.cams.shape[-2:])
        first_cams = views.align(views.first.cams, size)
        first_embeddings = views.align(self.project(views.first.features), size)
        second_embeddings = self.project(views.second.features)
        with torch.autocast(labels.device.type, enabled=False):
            one = self.view(first_cams, first_embeddings, labels)
            two = self.view(views.second.cams, second_embeddings, labels)
            t = options.temperature
            terms = {}
            if options.cross_prototype_weight:
                terms["ppc_cp"] = options.cross_prototype_weight * (
                    contrast(one.embeddings, one.pseudo_labels, two.prototypes, t).mean()
                    + contrast(two.embeddings, two.pseudo_labels, one.prototypes, t).mean()) / 2
            if options.cross_cam_weight:
                terms["ppc_cc"] = options.cross_cam_weight * (
                    contrast(one.embeddings, two.pseudo_labels, one.prototypes, t).mean()
                    + contrast(two.embeddings, one.pseudo_labels, two.prototypes, t).mean()) / 2
            if options.intra_weight:
                terms["ppc_intra"] = options.intra_weight * (self.intra(one) + self.intra(two)) / 2
        return terms

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D_backbone, h, w) → (N, dim, h, w) ReLU'd embedding (normalised after alignment)."""
        return F.relu(self.projection(features))

    def view(self, cams: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> _View:
        """One view's (N, C, h, w) class maps and (N, dim, h, w) embeddings → flat L2-normalised embeddings,
        pseudo labels and prototypes (the last two without gradient)."""
        height, width = cams.shape[-2:]
        flat = F.normalize(embeddings.float().permute(0, 2, 3, 1).flatten(0, 2), dim=1)
        with torch.no_grad():
            cams = cams.detach()
            pseudo_labels = class_scores(cams, labels, self.options.bg_threshold).argmax(dim=1).flatten()
            confidence = prototype_confidence(cams, labels).permute(0, 2, 3, 1).flatten(0, 2)
            k = max(1, math.floor(self.options.top_k_fraction * height * width))  # official h*w // 8
            prototypes = estimate_prototypes(flat.detach(), confidence, k)
        return _View(flat, pseudo_labels, prototypes)

    def intra(self, view: _View) -> torch.Tensor:
        options = self.options
        t = options.temperature
        if not options.mining:
            return contrast(view.embeddings, view.pseudo_labels, view.prototypes, t).mean()
        with torch.no_grad():
            similarity = view.embeddings.detach() @ view.prototypes.t()
            keep = semi_hard_negatives(similarity, view.pseudo_labels, options.negative_hard_fraction,
                                       options.negative_keep_fraction)
        per_pixel = contrast(view.embeddings, view.pseudo_labels, view.prototypes, t, keep)
        class_means = []
        for cls in view.pseudo_labels.unique():
            members = (view.pseudo_labels == cls).nonzero().flatten()
            if members.numel() < 2:
                continue
            own = similarity[members, cls]
            class_means.append(per_pixel[members[sample_pixels(own, options.pixel_hard_fraction)]].mean())
        if not class_means:
            return per_pixel.sum() * 0  # no class with two pixels: nothing to contrast, keep the graph
        return torch.stack(class_means).mean()
