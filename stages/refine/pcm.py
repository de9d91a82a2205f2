"""SEAM's Pixel Correlation Module as a pseudo-label refinement (`wsss pseudo-label --refine pcm`).

The score stack (the background threshold and the CAMs) is carried through the pixel affinity that a SEAM
checkpoint's PCM computes for the image, at the network's feature resolution, then upsampled back: the same
operation SEAM applies to its own CAMs, here usable on CAMs from any method. Each affinity row sums to one, so
the constant background row stays constant and only the CAMs are redistributed between similar pixels.
The affinity of the last image is kept: pseudo-label refines two score stacks (the two thresholds) per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checkpoint import load_checkpoint
from ..core.errors import UserError
from ..data.loading import normalize
from ..methods import CAM_METHODS, cam_model_from_checkpoint
from ..methods.seam import apply_affinity
from . import ImageItem, Refinement


def check_pcm_checkpoint(path: Path) -> dict:
    """The checkpoint's payload, or a one-line error if its method has no PCM (without building the model)."""
    payload = load_checkpoint(path, "cam")
    method = payload["config"]["method"]
    if not hasattr(CAM_METHODS.get(method), "pcm_affinity"):
        raise UserError(f"--refine pcm needs the checkpoint of a method with a PCM (seam); {path} is {method!r}")
    return payload


class PcmRefinement(Refinement):
    name = "pcm"

    def __init__(self, checkpoint: Path):
        self.model = cam_model_from_checkpoint(check_pcm_checkpoint(checkpoint), checkpoint)
        self._last: tuple[str, torch.Tensor, tuple[int, int]] | None = None  # (image id, affinity, feature size)

    def affinity(self, item: ImageItem) -> tuple[torch.Tensor, tuple[int, int]]:
        if self._last is None or self._last[0] != item.id:
            images = normalize(item.image)[None]
            _, features = self.model.cam_and_features(images)
            self._last = (item.id, self.model.pcm_affinity(features, images), tuple(features[-1].shape[-2:]))
        return self._last[1], self._last[2]

    @torch.inference_mode()
    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        affinity, feature_size = self.affinity(item)
        small = F.interpolate(torch.from_numpy(scores)[None].float(), size=feature_size, mode="bilinear",
                              align_corners=False)
        refined = apply_affinity(small, affinity)
        return F.interpolate(refined, size=scores.shape[1:], mode="bilinear", align_corners=False)[0].numpy()
