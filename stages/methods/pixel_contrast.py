"""Cross-image pixel contrast (Wang et al., ICCV 2021), an add-on loss for segmenter training:
`wsss segment --contrast memory [--contrast-option KEY=VALUE]`.

A projection head (1x1 conv, BatchNorm, ReLU, 1x1 conv to `dim` channels, then L2 normalisation per pixel) embeds
the segmenter's decoder features. Labels (pseudo masks or ground truth, ignore excluded) are taken to the
embedding's resolution by nearest neighbour. Per step:
  - anchors, segmentation-aware hard anchor sampling: per image and class, up to n anchors with
    n = min(`max_anchors` // (image, class) pairs in the batch, `max_anchors_per_class`); half of them hard
    (labelled c, predicted otherwise by the segmenter's own argmax), the rest drawn at random from the class's
    other pixels (fewer hard ones: the rest are random);
  - the memory: per class a pixel queue (`pixels_per_class` random pixels per class per image) and a segment
    queue (the class's mean embedding per image), `pixel_memory` and `segment_memory` entries each, FIFO;
  - the loss, pixel-to-pixel and pixel-to-region at once (the memory holds both kinds), for anchor a with
    positives P(a) (memory entries of its class) and negatives N(a) (the others), at temperature tau:
        L(a) = -(tau / base_tau) * mean_{p in P(a)} log( e^{a.p/tau} / (e^{a.p/tau} + sum_{n in N(a)} e^{a.n/tau}) )
    averaged over anchors that have a positive; weight `weight`, zero for the first `warmup_epochs`;
  - after the loss, the batch's embeddings enter the memory (so an image never contrasts with itself).
The head and the memory are training-only: the saved segmenter is the plain DeepLab.

Defaults follow the official code's memory configuration (tfzhou/ContrastiveSeg, H_48_D_4_MEM: dim 256,
temperature and base temperature 0.07, 1024 anchors, weight 1, memory 5000, 10 pixels per class per image,
warm-up 5000 of 40000 iterations, here 1 of 8 epochs). Deviations:
  - The official code takes the second half of the anchors from the correctly predicted pixels; the paper (and
    this code) draws them at random from the class.
  - Its memory configuration caps anchors at 1 per class per image (`max_views` 1), which leaves no room for
    hard anchors; here the cap is its non-memory configuration's 100, and classes need 2 pixels, not 100
    (our maps are 28x28).
  - When it gathers the memory for the contrast (`_sample_negative`) it skips class 0's queue but keeps the rows
    reserved for it, so r (the queue length) all-zero entries labelled 0 join every anchor's contrast: positives
    of the background anchors, negatives at logit 0 of all others. It also removes entry i from anchor i's
    positives (a leftover of the in-batch variant). Here every class's entries count, there are no zero
    entries, and nothing is removed.
  - Its pixel queue of class c receives K random pixels of the image whatever their class (its issue #65); here
    they are K random pixels of class c.
  - Its pixel queue pointer advances by 1 per push instead of by K (see memory.py).
  - The contrast runs in float32 even under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX
from .memory import PixelSegmentMemory


@dataclass(frozen=True)
class MemoryContrastOptions:
    """Cross-image pixel contrast settings (defaults: official memory configuration, REFERENCES.md)."""

    dim: int = 256
    temperature: float = 0.07
    base_temperature: float = 0.07
    weight: float = 1.0
    warmup_epochs: float = 1.0
    max_anchors: int = 1024
    max_anchors_per_class: int = 100
    pixel_memory: int = 5000
    segment_memory: int = 5000
    pixels_per_class: int = 10

    def __post_init__(self):
        for name in ("dim", "max_anchors", "max_anchors_per_class", "pixel_memory", "segment_memory",
                     "pixels_per_class"):
            if getattr(self, name) < 1:
                raise UserError(f"memory contrast {name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0 or self.base_temperature <= 0:
            raise UserError(f"memory contrast temperatures must be > 0, got {self.temperature} and "
                            f"{self.base_temperature}")
        if self.weight < 0 or self.warmup_epochs < 0:
            raise UserError(f"memory contrast weight and warmup_epochs must be >= 0, got {self.weight} and "
                            f"{self.warmup_epochs}")


def memory_contrast(anchors: torch.Tensor, anchor_labels: torch.Tensor, memory: torch.Tensor,
                    memory_labels: torch.Tensor, temperature: float, base_temperature: float) -> torch.Tensor:
    """The loss above for (A, D) anchors against (M, D) memory entries; 0 when no anchor has a positive."""
    logits = anchors.float() @ memory.float().T / temperature  # (A, M)
    logits = logits - logits.max(1, keepdim=True).values.detach()
    positive = anchor_labels[:, None] == memory_labels[None, :]
    exp_logits = logits.exp()
    negative_sum = (exp_logits * ~positive).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + negative_sum)
    positives = positive.sum(1)
    has_positive = positives > 0
    if not has_positive.any():
        return anchors.sum() * 0.0
    mean_log_prob = (log_prob * positive).sum(1)[has_positive] / positives[has_positive]
    return -(temperature / base_temperature) * mean_log_prob.mean()


def sample_anchors(labels: torch.Tensor, predictions: torch.Tensor, max_anchors: int,
                   max_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation-aware hard anchor sampling over (B, P) labels and predictions.

    Returns (indices into the flattened (B*P) pixels, their labels). Per image and labelled class (ignore and
    classes with fewer than 2 pixels left out), n = min(max_anchors // pairs, max_per_class) anchors: up to n/2
    hard (predicted otherwise), the rest at random from the class's remaining pixels.
    """
    pairs = [(b, c) for b in range(labels.shape[0]) for c in labels[b].unique().tolist()
             if c != IGNORE_INDEX and int((labels[b] == c).sum()) >= 2]
    if not pairs:
        empty = torch.zeros(0, dtype=torch.long, device=labels.device)
        return empty, empty
    per_class = max(1, min(max_anchors // len(pairs), max_per_class))
    chosen, chosen_labels = [], []
    pixels = labels.shape[1]
    for b, c in pairs:
        members = labels[b] == c
        hard = (members & (predictions[b] != c)).nonzero().flatten()
        hard = hard[torch.randperm(len(hard), device=hard.device)[:per_class // 2]]
        rest = (members.clone().index_fill_(0, hard, False)).nonzero().flatten()
        rest = rest[torch.randperm(len(rest), device=rest.device)[:per_class - len(hard)]]
        picked = torch.cat([hard, rest]) + b * pixels
        chosen.append(picked)
        chosen_labels.append(torch.full_like(picked, c))
    return torch.cat(chosen), torch.cat(chosen_labels)


class MemoryPixelContrast(nn.Module):
    """The add-on: `forward(features, logits, labels, step)` → {"contrast": weighted loss}, then enqueues."""

    Options = MemoryContrastOptions

    def __init__(self, feature_channels: int, num_classes: int, options: MemoryContrastOptions,
                 steps_per_epoch: int):
        super().__init__()
        self.options = options
        self.projection = nn.Sequential(
            nn.Conv2d(feature_channels, feature_channels, 1, bias=False),
            nn.BatchNorm2d(feature_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(feature_channels, options.dim, 1),
        )
        self.num_classes = num_classes
        self.warmup_steps = round(options.warmup_epochs * steps_per_epoch)
        self.memory: PixelSegmentMemory | None = None  # made on first use, on the features' device

    def get_extra_state(self) -> dict:
        return self.memory.state() if self.memory is not None else {}

    def set_extra_state(self, state: dict) -> None:
        device = next(self.parameters()).device
        self.memory = PixelSegmentMemory.from_state(state, device) if state else None

    def forward(self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                step: int) -> dict[str, torch.Tensor]:
        """`features` (B, C, h, w) decoder features, `logits` (B, K, h, w) at the same resolution, `labels`
        (B, H, W) class indices with 255 ignored; `step` counts training steps from 0."""
        options = self.options
        projected = self.projection(features)
        with torch.autocast(projected.device.type, enabled=False):
            embeddings = F.normalize(projected.float(), dim=1)
            small_labels = F.interpolate(labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest")
            small_labels = small_labels[:, 0].long()
            if self.memory is None:
                self.memory = PixelSegmentMemory(self.num_classes, options.dim, options.pixel_memory,
                                                 options.segment_memory, options.pixels_per_class, embeddings.device)
            loss = embeddings.sum() * 0.0
            if step >= self.warmup_steps:
                memory, memory_labels = self.memory.contents()
                indices, anchor_labels = sample_anchors(small_labels.flatten(1), logits.argmax(1).flatten(1),
                                                        options.max_anchors, options.max_anchors_per_class)
                if len(indices) and len(memory):
                    anchors = embeddings.flatten(2).transpose(1, 2).reshape(-1, options.dim)[indices]
                    loss = options.weight * memory_contrast(anchors, anchor_labels, memory, memory_labels,
                                                            options.temperature, options.base_temperature)
            self.memory.enqueue(embeddings, small_labels)
        return {"contrast": loss}
