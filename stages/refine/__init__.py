"""Pseudo-mask refinements, chosen by name with `wsss pseudo-label --refine a,b`.

A refinement can act at two points of pseudo-mask construction (see `stages/pseudo_label.py`):
  - `refine_scores(item, scores)`: on the (K+1, H, W) score stack, background first (e.g. a saliency
    background, PCM);
  - `refine_labels(item, labels, num_labels)`: on a label map of indices into [background] + classes
    (e.g. dense CRF).
`item` is the image and its id (a refinement may read per-image inputs such as a saliency map by id). Steps run
in the order given. The base class leaves both untouched, so each refinement overrides what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import UserError


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
    """What refinements may need besides the image: the CAM checkpoint (PCM) and saliency maps (saliency)."""

    checkpoint: Path | None = None
    saliency_dir: str = ""
    saliency_threshold: float = 0.5


class Refinement:
    name = "none"

    def refine_scores(self, item: ImageItem, scores: np.ndarray) -> np.ndarray:
        return scores

    def refine_labels(self, item: ImageItem, labels: np.ndarray, num_labels: int) -> np.ndarray:
        return labels


def _registry() -> dict[str, Callable[[RefineInputs], Refinement]]:
    from .crf import DenseCrf
    from .pcm import PcmRefinement
    from .saliency import SaliencyBackground

    return {
        "crf": lambda inputs: DenseCrf(),
        "pcm": lambda inputs: PcmRefinement(inputs.checkpoint),
        "saliency": lambda inputs: SaliencyBackground(inputs.saliency_dir, inputs.saliency_threshold),
    }


def refinement_names(spec: str) -> list[str]:
    """'none' → []; 'pcm,crf' → ['pcm', 'crf']; an unknown or repeated name is a one-line error."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if names == ["none"]:
        return []
    registry = _registry()
    unknown = [name for name in names if name not in registry]
    if unknown or not names:
        raise UserError(f"unknown refinement {', '.join(unknown) or repr(spec)} "
                        f"(choose none or a comma list of: {', '.join(registry)})")
    if len(set(names)) != len(names):
        raise UserError(f"refinement listed twice in {spec!r}")
    return names


def parse_refinements(spec: str, inputs: RefineInputs = RefineInputs()) -> list[Refinement]:
    registry = _registry()
    return [registry[name](inputs) for name in refinement_names(spec)]
