"""The random walk of an affinity network as a pseudo-label refinement (`wsss pseudo-label --refine rw`).

The affinity checkpoint (the run's `affinity/checkpoint.pt` from `wsss train-affinity`, or
`--affinity-checkpoint PATH`) gives, per image, the affinities of the pixel pairs of its walk; the score stack
goes through the method's walk (`walk_scores`: IRN keeps the background threshold and walks the CAMs, AffinityNet
walks a background made from the CAMs) on a sparse transition matrix (`stages/affinity/walk.py`), so a VOC-sized
image needs memory linear in its pixels. The affinities and the transition are computed once per image, though
pseudo-label refines two score stacks. Put it before the CRF: `--refine rw,crf`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..affinity import affinity_model_from_checkpoint
from ..affinity.pairs import search_directions
from ..affinity.walk import random_walk, transition_matrix
from ..core.checkpoint import checkpoint_normalization, load_checkpoint
from . import ImageItem, RefineInputs, Refinement


class RandomWalk(Refinement):
    def __init__(self, checkpoint: Path):
        payload = load_checkpoint(checkpoint, "affinity")
        self.model = affinity_model_from_checkpoint(payload, checkpoint)
        self.normalization = checkpoint_normalization(payload, checkpoint)

    @classmethod
    def from_inputs(cls, inputs: RefineInputs) -> RandomWalk:
        return cls(inputs.affinity_checkpoint)

    def transition(self, image: np.ndarray) -> tuple[torch.Tensor, object]:
        """The image's transition matrix and what the method's walk needs besides it."""
        affinities, context = self.model.walk_affinities(self.normalization(image)[None])
        directions = search_directions(self.model.options.walk_radius)
        return transition_matrix(affinities, directions, self.model.options.beta), context

    @torch.inference_mode()
    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        if len(scores) == 1:  # an image without classes: nothing to walk
            return scores
        transition, context = item.once("rw_transition", lambda: self.transition(item.image))
        steps = 2 ** self.model.options.log2_steps
        walked = self.model.walk_scores(torch.from_numpy(scores).float(), context,
                                        lambda maps: random_walk(maps, transition, steps))
        return walked.numpy()
