"""The random walk of an affinity network as a pseudo-label refinement (`wsss pseudo-label --refine rw`).

The affinity checkpoint (the run's `affinity/checkpoint.pt` from `wsss train-affinity`, or
`--affinity-checkpoint PATH`) gives, per image, the affinities of the pixel pairs of its walk; each score stack
becomes the method's walk maps (`walk_maps`: IRN's CAMs times 1 - boundary, AffinityNet's CAMs under a background
made from them), which walk on a sparse transition matrix (`stages/affinity/walk.py`), so a VOC-sized image needs
memory linear in its pixels, and come back as scores (`walked_scores`). Put it before the CRF: `--refine rw,crf`.

Pseudo-label's two score stacks of an image (one per threshold) walk together on one transition, and walk once
when their maps are equal, as they are for both methods (both walk only the CAM rows, not the threshold row).
Images come one at a time in pseudo-label's CPU workers, or in batches on a GPU (`--device`), where the images of
a batch go through the affinity network together (those of one size in one forward) and walk as one
block-diagonal matrix.
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
    def __init__(self, checkpoint: Path, device: str = "cpu"):
        payload = load_checkpoint(checkpoint, "affinity")
        self.device = torch.device(device)
        self.model = affinity_model_from_checkpoint(payload, checkpoint).to(self.device)
        self.normalization = checkpoint_normalization(payload, checkpoint)

    @classmethod
    def from_inputs(cls, inputs: RefineInputs) -> RandomWalk:
        return cls(inputs.affinity_checkpoint, inputs.device)

    def affinities(self, items: list[ImageItem]) -> tuple[list[torch.Tensor], list[object]]:
        """Each image's pair affinities (D, h, w) and walk context; the images of one size in one forward."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for position, item in enumerate(items):
            by_size.setdefault(item.image.shape[:2], []).append(position)
        affinities, contexts = [None] * len(items), [None] * len(items)
        for positions in by_size.values():
            images = torch.stack([self.normalization(items[p].image) for p in positions]).to(self.device)
            group_affinities, group_contexts = self.model.walk_affinities(images)
            for p, image_affinities, context in zip(positions, group_affinities, group_contexts):
                affinities[p], contexts[p] = image_affinities, context
        return affinities, contexts

    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        return self.refine_score_batch([item], [[scores]])[0][0]

    @torch.inference_mode()
    def refine_score_batch(self, items: list[ImageItem], stacks: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        walking = [i for i, image_stacks in enumerate(stacks) if len(image_stacks[0]) > 1]  # no class: no walk
        if not walking:
            return stacks
        affinities, contexts = self.affinities([items[i] for i in walking])
        tensors = {i: [torch.from_numpy(scores).float().to(self.device) for scores in stacks[i]] for i in walking}
        maps, channels_of = [], {}  # per image, its stacks' walk maps, each distinct one once
        for i, context in zip(walking, contexts):
            distinct: list[torch.Tensor] = []
            for s, scores in enumerate(tensors[i]):
                stack_maps = self.model.walk_maps(scores, context)
                same = next((d for d, earlier in enumerate(distinct) if torch.equal(earlier, stack_maps)), None)
                if same is None:
                    same = len(distinct)
                    distinct.append(stack_maps)
                channels_of[i, s] = slice(same * len(stack_maps), (same + 1) * len(stack_maps))
            maps.append(torch.cat(distinct))
        directions = search_directions(self.model.options.walk_radius)
        transition = transition_matrix(affinities, directions, self.model.options.beta)
        walked = random_walk(maps, transition, 2 ** self.model.options.log2_steps)
        refined = [list(image_stacks) for image_stacks in stacks]
        for i, image_walked in zip(walking, walked):
            for s, scores in enumerate(tensors[i]):
                refined[i][s] = self.model.walked_scores(scores, image_walked[channels_of[i, s]]).cpu().numpy()
        return refined
