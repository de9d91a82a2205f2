"""MCIC, "Memory-Based Cross-Image Contexts for Weakly Supervised Semantic Segmentation" (Fan et al., TPAMI 2022):
a segmenter trained end to end from image labels and saliency, `wsss segment --method mcic`.

Around the project's DeepLab segmenter (whose backbone gives features f, stride 16, and whose head gives the
segmentation s), training adds:
  - classification module: the official CAM head on f (3x3 conv to 1024, ReLU, dropout 0.5, 1x1 conv to 1024,
    ReLU, dropout 0.5, 1x1 conv to the classes; `_VGG16_Largefov` at dilation 1, `head_cam`) gives class maps h;
    logits are their spatial mean; multilabel soft-margin loss, per image divided by its label count (official
    `_criteria_balance_loss`);
  - CAM seeds: h ReLU'd, max-normalised and masked by the image labels, against a background of
    [saliency < `seed_threshold`]; per pixel the argmax, ignored where the winner is below `seed_threshold`;
  - context extractor: per image and class (background included, absent classes masked), the mean of f weighted
    by the segmentation confidence w = max-normalised ReLU(s), kept where w > `enqueue_threshold` and the class
    is the pixel's argmax; a class whose weights sum to more than 1 enters the memory;
  - memory: `memory_size` contexts per class, FIFO (memory.ClassQueue, not normalised, as the official code);
  - context propagation: one-head attention from each pixel of f (query) to the memory entries of the image's
    classes (keys and values), then dropout 0.1, LayerNorm and ReLU, added to f; the segmentation head on these
    enriched features gives the context segmentation s'. Entropy of the attention weights (sparsity term, off by
    default as in the official run, which turns it on with `--use-entropy`: `-o entropy_weight=1`);
  - context seeds: softmax(s') masked by the labels, background (1 - saliency) x `saliency_weight` +
    p_bg x (1 - `saliency_weight`); argmax, ignored below `seed_threshold`;
  - fused seeds: foreground = union of CAM and context seeds, background = their intersection; a pixel claimed
    by two classes, or by none, is ignored;
  - losses: cross-entropy of s and of s' against the CAM seeds (weight max(1 - lambda, 0.6)), the context seeds
    and the fused seeds (weight 1); total = classification + lambda (segmentation + `entropy_weight` entropy),
    lambda(x) = (-2 x^3 / R^3 + 3 x^2 / R^2)^2 over R = `rampup_epochs` of steps, then 1;
  - stop-gradient: the attention path sees f and the low-level features detached and runs the segmentation
    head with frozen weights (and BatchNorm statistics), so s' trains only the attention and LayerNorm, and the
    segmenter alone, without memory, is the test-time model (saved as a plain segmenter checkpoint).
After training, the fused seeds of the training images (with the final memory and full-size images) are written
as pseudo masks `pseudo/mcic/`, for a second-round segmenter (`wsss segment --pseudo mcic`).

Mechanism and defaults checked against the official repository js-fan/MCIC (traineval_mcis.py, mcis_model.py,
memory.py). Deviations:
  - The memory is read before the batch's own contexts enter it, so every context is from another image (the
    official code pushes first, so an image can attend to its own context).
  - Seeds and losses are at the decoder's stride 4 (class maps and saliency resized to it); the official code
    makes CAM seeds at the backbone's resolution.
  - The segmentation head is the project's DeepLabv3+ (ASPP + decoder), not DeepLab-LargeFOV/ASPP on VGG/ResNet-101
    with frozen BatchNorm; BatchNorm trains here (no pretrained statistics to freeze).
  - The official code trains s and s' against [CAM, context, fused] seeds, which the paper reduces to the fused
    seeds; this follows the code.
  - The CAM head's two 1024-wide layers start from random weights and learn at the head's rate (the official
    code copies them from VGG-16's pretrained fc6/fc7, which our backbones do not have, and trains them at the
    backbone's); its last layer is initialised as the official (normal, sd 0.01, zero bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX
from ..models.deeplab import DeepLab
from .memory import ClassQueue


@dataclass(frozen=True)
class McicOptions:
    """MCIC settings (defaults from the official code, REFERENCES.md)."""

    memory_size: int = 64
    enqueue_threshold: float = 0.5
    seed_threshold: float = 0.1
    saliency_weight: float = 0.5
    entropy_weight: float = 0.0  # the official default run has no entropy term; its --use-entropy is 1.0
    rampup_epochs: float = 5.0
    cam_seed_min_weight: float = 0.6

    def __post_init__(self):
        if self.memory_size < 1:
            raise UserError(f"MCIC memory_size must be at least 1, got {self.memory_size}")
        for name in ("enqueue_threshold", "seed_threshold", "saliency_weight", "cam_seed_min_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"MCIC {name} must be in [0, 1], got {getattr(self, name)}")
        if self.entropy_weight < 0 or self.rampup_epochs < 0:
            raise UserError(f"MCIC entropy_weight and rampup_epochs must be >= 0, got {self.entropy_weight} and "
                            f"{self.rampup_epochs}")


def cam_head(channels: int, num_classes: int, width: int = 1024) -> nn.Sequential:
    """The official CAM head (`_VGG16_Largefov(512, C, dilation=1)`): 3x3 conv, ReLU, dropout 0.5, 1x1 conv, ReLU,
    dropout 0.5, 1x1 conv to `num_classes` class maps; the last layer initialised N(0, 0.01) with zero bias."""
    head = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Conv2d(width, num_classes, 1))
    nn.init.normal_(head[-1].weight, 0.0, 0.01)
    nn.init.zeros_(head[-1].bias)
    return head


def rampup(step: int, total: int) -> float:
    """MCIC's polynomial warm-up of the segmentation loss weight: 0 at step 0, 1 from step `total` on."""
    if step >= total:
        return 1.0
    x = step / total
    return (-2 * x ** 3 + 3 * x ** 2) ** 2


def max_normalised(maps: torch.Tensor) -> torch.Tensor:
    """ReLU, then divided by each map's spatial maximum (B, K, H, W)."""
    maps = maps.clamp_min(0)
    return maps / maps.amax((2, 3), keepdim=True).clamp_min(1e-5)


def cam_seeds(cams: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, H, W) seeds from class maps (B, L, H, W), image labels (B, L) and saliency (B, H, W) in [0, 1]."""
    scores = max_normalised(cams) * labels[:, :, None, None]
    background = (saliency < threshold).float()[:, None]
    best, seeds = torch.cat([background, scores], 1).max(1)
    seeds[best < threshold] = IGNORE_INDEX
    return seeds


def context_seeds(logits: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor, threshold: float,
                  saliency_weight: float) -> torch.Tensor:
    """(B, H, W) seeds from segmentation logits (B, L+1, H, W), labels (B, L) and saliency (B, H, W)."""
    probabilities = logits.float().softmax(1)
    background = (1 - saliency[:, None]) * saliency_weight + probabilities[:, :1] * (1 - saliency_weight)
    best, seeds = torch.cat([background, probabilities[:, 1:] * labels[:, :, None, None]], 1).max(1)
    seeds[best < threshold] = IGNORE_INDEX
    return seeds


def fuse_seeds(first: torch.Tensor, second: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Foreground union, background intersection; ignored where that leaves no class or two."""
    one_hot = [F.one_hot(s.clamp_max(num_classes), num_classes + 1)[..., :num_classes] for s in (first, second)]
    fused = torch.cat([torch.minimum(one_hot[0][..., :1], one_hot[1][..., :1]),
                       torch.maximum(one_hot[0][..., 1:], one_hot[1][..., 1:])], -1)
    seeds = fused.argmax(-1)
    seeds[fused.sum(-1) != 1] = IGNORE_INDEX
    return seeds


def seed_cross_entropy(logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over seeded pixels (0 when there are none)."""
    loss = F.cross_entropy(logits.float(), seeds, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (seeds != IGNORE_INDEX).sum().clamp_min(1)


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """Mean entropy of attention rows (..., M) that attend to something."""
    entropy = -(attention * torch.log(attention + 1e-5)).sum(-1)
    rows = attention.sum(-1) > 0
    return entropy[rows].mean() if rows.any() else attention.sum() * 0.0


class ContextAttention(nn.Module):
    """Cross-image context propagation: one-head attention of query pixels to memory entries, with a mask."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, features: torch.Tensor, memory: torch.Tensor,
                allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, C, H, W), memory (M, C), allowed (B, M) bool → (context (B, C, H, W), attention
        (B, HW, M)). An image with no allowed entry gets zero context and zero attention rows."""
        batch, channels, height, width = features.shape
        queries = self.query(features.flatten(2).transpose(1, 2))  # (B, HW, C)
        logits = queries @ self.key(memory).T / channels ** 0.5  # (B, HW, M)
        logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
        attention = logits.softmax(-1).nan_to_num(0.0)  # rows with nothing allowed are all -inf
        context = self.out(attention @ self.value(memory))  # (B, HW, C)
        context = F.relu(self.norm(F.dropout(context, 0.1, self.training)))
        context = context * allowed.any(1)[:, None, None]  # no memory for the image: no context
        return context.transpose(1, 2).reshape(batch, channels, height, width), attention


class McicTrainer(nn.Module):
    """The training-only parts around a DeepLab `segmenter`; `forward(batch, step)` → loss terms, where batch has
    "image", "labels" (B, L) multi-hot foreground labels and "saliency" (B, H, W) in [0, 1]."""

    Options = McicOptions
    uses_masks = False
    uses_saliency = True

    def __init__(self, segmenter: DeepLab, num_classes: int, options: McicOptions, steps_per_epoch: int):
        """`num_classes` counts background."""
        super().__init__()
        self.segmenter = segmenter
        self.options = options
        self.num_classes = num_classes
        channels = segmenter.backbone.channels[-1]
        self.classifier = cam_head(channels, num_classes - 1)
        self.attention = ContextAttention(channels)
        self.rampup_steps = max(1, round(options.rampup_epochs * steps_per_epoch))
        self.memory: ClassQueue | None = None  # made on first use, on the features' device

    def new_parameters(self) -> list[nn.Parameter]:
        """The parameters MCIC adds to the segmenter (they train at the head's learning rate)."""
        return list(self.classifier.parameters()) + list(self.attention.parameters())

    def forward(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        options = self.options
        images, labels, saliency = batch["image"], batch["labels"], batch["saliency"]
        outputs = self.branches(images, labels)
        classification = F.multilabel_soft_margin_loss(outputs["class_maps"].float().mean((2, 3)), labels,
                                                       reduction="none")
        classification = (classification / labels.sum(1).clamp_min(1)).mean()
        self.enqueue(outputs["features"], outputs["logits"].detach(), outputs["with_background"])

        logits, context_logits = outputs["logits"], outputs["context_logits"]
        with torch.no_grad():
            seeds_cam, seeds_context, seeds_fused = self.all_seeds(outputs, labels, saliency, logits.shape[-2:])
        weight = rampup(step, self.rampup_steps)
        cam_weight = max(1 - weight, options.cam_seed_min_weight)
        segmentation = sum(scale * (seed_cross_entropy(logits, seeds) + seed_cross_entropy(context_logits, seeds))
                           for scale, seeds in ((cam_weight, seeds_cam), (1.0, seeds_context), (1.0, seeds_fused)))
        terms = {"cls": classification, "seg": weight * segmentation}
        if options.entropy_weight > 0:
            terms["entropy"] = weight * options.entropy_weight * attention_entropy(outputs["attention"])
        return terms

    def branches(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class maps, segmentation logits (stride 4), and the context path's logits and attention."""
        stages = self.segmenter.backbone(images)
        features = stages[-1]
        with_background = torch.cat([torch.ones_like(labels[:, :1]), labels], 1)
        context, attention = self.propagate(features.detach(), with_background)
        enriched = [s.detach() for s in stages[:-1]] + [features.detach() + context.to(features.dtype)]
        return {
            "features": features.detach(), "with_background": with_background, "attention": attention,
            "class_maps": self.classifier(features),
            "logits": self.segmenter.classifier(self.segmenter.decode(stages)),
            "context_logits": frozen(self.segmenter.classifier, self.segmenter.decode(enriched, apply=frozen)),
        }

    def all_seeds(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, saliency: torch.Tensor,
                  size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CAM, context and fused seeds at `size`."""
        def resized(maps: torch.Tensor) -> torch.Tensor:
            return F.interpolate(maps.detach().float(), size=size, mode="bilinear", align_corners=False)
        saliency = resized(saliency[:, None])[:, 0]
        seeds_cam = cam_seeds(resized(outputs["class_maps"]), labels, saliency, self.options.seed_threshold)
        seeds_context = context_seeds(resized(outputs["context_logits"]), labels, saliency,
                                      self.options.seed_threshold, self.options.saliency_weight)
        return seeds_cam, seeds_context, fuse_seeds(seeds_cam, seeds_context, self.num_classes)

    @torch.no_grad()
    def seeds(self, images: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        """Fused seeds (B, H, W) at the images' size, from the current memory (not updated)."""
        outputs = self.branches(images, labels)
        return self.all_seeds(outputs, labels, saliency, images.shape[-2:])[2]

    def get_extra_state(self) -> dict:
        return self.memory.state() if self.memory is not None else {}

    def set_extra_state(self, state: dict) -> None:
        device = next(self.parameters()).device
        self.memory = ClassQueue.from_state(state, False, device) if state else None

    def propagate(self, features: torch.Tensor, with_background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context from the memory entries of each image's classes: (B, C, h, w) and attention (B, hw, M)."""
        if self.memory is None:
            self.memory = ClassQueue(self.num_classes, self.options.memory_size, features.shape[1], normalize=False,
                                     device=features.device)
        present = with_background.amax(0).nonzero().flatten().tolist()
        memory, memory_labels = self.memory.contents(present)
        allowed = with_background[:, memory_labels] > 0  # (B, M)
        return self.attention(features.float(), memory, allowed)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, logits: torch.Tensor, with_background: torch.Tensor) -> None:
        """Each image's class contexts, weighted by confident segmentation, into the memory."""
        confidence = F.interpolate(logits.float(), size=features.shape[-2:], mode="bilinear", align_corners=False)
        confidence = max_normalised(confidence) * with_background[:, :, None, None]
        winner = F.one_hot(confidence.argmax(1), self.num_classes).permute(0, 3, 1, 2)
        weights = confidence * (confidence > self.options.enqueue_threshold) * winner  # (B, L+1, h, w)
        totals = weights.sum((2, 3))  # (B, L+1)
        contexts = weights.flatten(2) @ features.float().flatten(2).transpose(1, 2)  # (B, L+1, C)
        contexts = contexts / totals[..., None].clamp_min(1e-5)
        for image, class_index in (totals > 1).nonzero().tolist():
            self.memory.push(class_index, contexts[image, class_index][None])


def frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `module` on `x` with its weights detached and its buffers copied: gradients reach `x` only, and
    BatchNorm running statistics are left as they are."""
    state = {name: p.detach() for name, p in module.named_parameters()}
    state.update({name: b.clone() for name, b in module.named_buffers()})
    return functional_call(module, state, (x,))
