"""SEAM's Pixel Correlation Module as a pseudo-label refinement (`wsss pseudo-label --refine pcm`).

The score stack (the background threshold and the CAMs) is carried through the pixel affinity that a SEAM
checkpoint's PCM computes for the image, at the network's feature resolution, then upsampled back: the same
operation SEAM applies to its own CAMs, here usable on CAMs from any method. Each affinity row sums to one, so
the constant background row stays constant and only the CAMs are redistributed between similar pixels.
The affinity is computed once per image (`ImageItem.once`), though pseudo-label refines two score stacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.checkpoint import checkpoint_normalization, load_checkpoint
from ..core.errors import UserError
from ..methods import cam_model_from_checkpoint
from ..methods.common import apply_affinity
from ..registry import CAM_METHODS
from . import ImageItem, RefineInputs, Refinement


def check_pcm_checkpoint(path: Path) -> dict:
    """The checkpoint's payload, or a one-line error if its method has no PCM (without building the model)."""
    payload = load_checkpoint(path, "cam")
    method = payload["config"]["method"]
    if method not in CAM_METHODS or not hasattr(CAM_METHODS.get(method), "pcm_affinity"):
        raise UserError(f"--refine pcm needs the checkpoint of a method with a PCM (seam); {path} is {method!r}")
    return payload


class PcmRefinement(Refinement):
    def __init__(self, checkpoint: Path):
        payload = check_pcm_checkpoint(checkpoint)
        self.model = cam_model_from_checkpoint(payload, checkpoint)
        self.normalization = checkpoint_normalization(payload, checkpoint)

    @classmethod
    def from_inputs(cls, inputs: RefineInputs) -> PcmRefinement:
        return cls(inputs.checkpoint)

    def affinity(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The image's PCM affinity and the feature map size it lives at."""
        images = self.normalization(image)[None]
        _, features = self.model.cam_and_features(images)
        return self.model.pcm_affinity(features, images), tuple(features[-1].shape[-2:])

    @torch.inference_mode()
    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        affinity, feature_size = item.once("pcm_affinity", lambda: self.affinity(item.image))
        small = F.interpolate(torch.from_numpy(scores)[None].float(), size=feature_size, mode="bilinear",
                              align_corners=False)
        refined = apply_affinity(small, affinity)
        return F.interpolate(refined, size=scores.shape[1:], mode="bilinear", align_corners=False)[0].numpy()
