"""Input normalization: what a backbone's weights expect of an image, (image / 255 - mean) / std per channel.

Each backbone says which (`create_backbone(...).normalization`: ImageNet statistics for torchvision's ResNets,
mean = std = 0.5 for EfficientNet-Lite, timm's pretrained config for other timm models); checkpoints record it
(`save_checkpoint`), and every stage that feeds a model images normalizes them with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → (3, H, W) float32, normalized."""
        mean = np.asarray(self.mean, dtype=np.float32) * 255
        std = np.asarray(self.std, dtype=np.float32) * 255
        return torch.from_numpy(((image.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())

    @property
    def fill(self) -> np.ndarray:
        """The uint8 colour that normalizes to (about) zero: what crops are padded with."""
        return (np.asarray(self.mean, dtype=np.float32) * 255).astype(np.uint8)

    def to(self, target: Normalization, images: torch.Tensor) -> torch.Tensor:
        """Images normalized with this normalization, re-normalized for `target` (the identity when equal)."""
        if target == self:
            return images
        def channels(values):
            return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * channels(self.std) + channels(self.mean) - channels(target.mean)) / channels(target.std)

    def record(self) -> dict[str, list[float]]:
        return {key: list(value) for key, value in asdict(self).items()}

    @classmethod
    def from_record(cls, record: Any, where: str) -> Normalization:
        try:
            normalization = cls(tuple(map(float, record["mean"])), tuple(map(float, record["std"])))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where} has no usable input normalization (mean and std)") from None
        if len(normalization.mean) != 3 or len(normalization.std) != 3 or min(normalization.std) <= 0:
            raise UserError(f"{where} has no usable input normalization (mean and std)")
        return normalization
