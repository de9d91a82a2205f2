"""Saliency as the background source of pseudo masks (`wsss pseudo-label --refine saliency`).

As in MCIC's seeds from the CAM (seed note 000; js-fan/MCIC `compute_seed_from_cam`): pixels whose saliency is
below `threshold` are background (score 1, above any max-normalised CAM); salient pixels keep the stage's
constant background score, so there a CAM of one of the image's classes (the only channels in the stack) must
exceed it. Within pseudo-label's two thresholds this gives: non-salient → background; salient with a CAM above
the foreground threshold → that class; salient with CAMs between the two thresholds → ignored; salient with all
CAMs below the background threshold → background (an object the image's labels do not name).
Deviation: MCIC ignores every salient pixel below its single seed threshold (0.1); here the lowest band goes to
background, as IRN's background threshold would.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import UserError
from ..data.saliency_maps import MAKE_MAPS_HINT, DirectorySaliency
from . import ImageItem, RefineInputs, Refinement


class SaliencyBackground(Refinement):
    def __init__(self, directory: str, threshold: float = 0.5):
        if not directory:
            raise UserError(f"--refine saliency needs saliency maps: {MAKE_MAPS_HINT}")
        if not 0 < threshold <= 1:
            raise UserError(f"saliency threshold must be in (0, 1], got {threshold}")
        self.source = DirectorySaliency(directory, hint=MAKE_MAPS_HINT)
        self.threshold = threshold

    @classmethod
    def from_inputs(cls, inputs: RefineInputs) -> SaliencyBackground:
        return cls(inputs.saliency_dir, inputs.saliency_threshold)

    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        saliency = item.once("saliency", lambda: self.source(item.id, item.image))
        background = np.where(saliency < self.threshold, np.float32(1), scores[0])
        return np.concatenate([background[None].astype(scores.dtype), scores[1:]])
