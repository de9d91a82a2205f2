"""Pseudo-mask refinements, chosen by name with `wsss pseudo-label --refine a,b`.

A refinement can act at two points of pseudo-mask construction (see `stages/pseudo_label.py`):
  - `refine_scores(item, scores)`: on the (K+1, H, W) score stack, background first (e.g. a saliency
    background, PCM);
  - `refine_labels(item, labels, num_labels)`: on a label map of indices into [background] + classes
    (e.g. dense CRF).
Pseudo-label makes two score stacks per image (one per threshold) and hands them to `refine_score_batch` together,
for one image or, where a refinement runs on a GPU, a batch of images (the random walk); its default applies
`refine_scores` to each stack.
`item` is the image and its id (a refinement may read per-image inputs such as a saliency map by id). Steps run
in the order given. The base class leaves both untouched, so each refinement overrides what it uses.
Each refinement is registered by name in `stages.registry.REFINEMENTS` and built by its `from_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import refinement_names
from ..registry import REFINEMENTS


@dataclass(frozen=True)
class ImageItem:
    id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    # Per-image values a refinement computes once: pseudo-label refines two score stacks (its two thresholds).
    computed: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.computed:
            self.computed[key] = compute()
        return self.computed[key]


@dataclass(frozen=True)
class RefineInputs:
    """What refinements may need besides the image: the CAM checkpoint (PCM), saliency maps (saliency), the
    affinity checkpoint (rw) and the device its network runs on."""

    checkpoint: Path | None = None
    affinity_checkpoint: Path | None = None
    saliency_dir: str = ""
    saliency_threshold: float = 0.5
    device: str = "cpu"  # where a refinement with a network of its own runs it (rw)


class Refinement:
    @classmethod
    def from_inputs(cls, inputs: RefineInputs) -> Refinement:
        """The refinement built from what it needs of `inputs` (one that needs nothing ignores them)."""
        return cls()

    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        return scores

    def refine_score_batch(self, items: list[ImageItem], stacks: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """Each image's score stacks after `refine_scores`; `stacks[i]` are the stacks of `items[i]`."""
        return [[self.refine_scores(item, scores) for scores in image_stacks]
                for item, image_stacks in zip(items, stacks)]

    def refine_labels(self, item: ImageItem, labels: np.ndarray, num_labels: int) -> np.ndarray:
        return labels


def parse_refinements(spec: str, inputs: RefineInputs = RefineInputs(), *,
                      labels_only: bool = False) -> list[Refinement]:
    """The refinements `spec` names ('pcm,crf'; 'none' → []), in order, each built from `inputs`. `labels_only`:
    only those that refine label maps, for processes that run nothing else (the others, such as the random walk
    and its network, are not built there)."""
    classes = [REFINEMENTS.get(name) for name in refinement_names(spec)]
    return [cls.from_inputs(inputs) for cls in classes
            if not labels_only or cls.refine_labels is not Refinement.refine_labels]
