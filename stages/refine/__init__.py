"""Pseudo-mask refinements, chosen by name with `wsss pseudo-label --refine a,b`.

A refinement can act at two points of pseudo-mask construction (see `stages/pseudo_label.py`):
  - `refine_scores(image, scores)`: on the (K+1, H, W) score stack, background first (e.g. a saliency
    background, PCM);
  - `refine_labels(image, labels, num_labels)`: on a label map of indices into [background] + classes
    (e.g. dense CRF).
Steps run in the order given. The base class leaves both untouched, so each refinement overrides what it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import UserError


class Refinement:
    name = "none"

    def refine_scores(self, image: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return scores

    def refine_labels(self, image: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
        return labels


def _registry() -> dict[str, Callable[[Path | None], Refinement]]:
    """name → factory taking the CAM checkpoint (the PCM needs one; the CRF does not)."""
    from .crf import DenseCrf
    from .pcm import PcmRefinement

    return {"crf": lambda checkpoint: DenseCrf(), "pcm": lambda checkpoint: PcmRefinement(checkpoint)}


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


def parse_refinements(spec: str, checkpoint: Path | None = None) -> list[Refinement]:
    registry = _registry()
    return [registry[name](checkpoint) for name in refinement_names(spec)]
