"""Inter-pixel affinity methods, plugged into `wsss train-affinity --method NAME` by name
(`stages.registry.AFFINITY_METHODS`), and used by the random-walk refinement (`pseudo-label --refine rw`).

A method is an `nn.Module` class built as `Method(AffinityModelConfig, Method.Options(...))`, with:
  - `Options`: a frozen dataclass of its hyper-parameters, training and walk (`train-affinity -o KEY=VALUE`);
  - `stride`: the stride of the map its affinities live on;
  - `training_losses(images, masks) -> dict[str, Tensor]`: the terms summed into the training loss, from
    normalized images (N, 3, H, W) and pseudo masks (N, H, W) (0 background, 255 unknown);
  - `param_groups() -> (base-rate params, new-layer params)`;
  - `walk_affinities(images) -> (pair affinities (N, D, h, w), contexts)`: for normalized images of one size
    (N, 3, H, W), the affinities of the pairs their walk uses (`pairs.search_directions(walk radius)`) and, per
    image, what `walk_maps` needs of it;
  - `walk_maps(scores, context) -> (C, h, w)`: from a pseudo-label score stack (K+1, H, W), background first, the
    maps at `stride` that the walk takes;
  - `walked_scores(scores, walked) -> scores`: the score stack after the walk, from the stack and its walked maps;
  - `walk_radius`, `beta`, `log2_steps` on its `options` (the walk's pairs, transition and length).
The shared geometry is in `pairs`, the walk in `walk`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import AffinityModelConfig
from ..core.checkpoint import load_state, model_config
from ..methods import method_options
from ..registry import AFFINITY_METHODS


def build_affinity_model(method: str, config: AffinityModelConfig, options: dict[str, Any] | None = None):
    model_class = AFFINITY_METHODS.get(method)  # "unknown affinity method ..."
    return model_class(config, method_options(model_class.Options, options or {}, f"affinity method {method!r}"))


def affinity_model_from_checkpoint(payload: dict[str, Any], path) -> nn.Module:
    """The trained affinity model of a loaded `train-affinity` checkpoint payload, in eval mode on the CPU."""
    config = payload["config"]
    model = build_affinity_model(config.get("method", ""), model_config(AffinityModelConfig, payload, path),
                                 config.get("method_options"))
    load_state(model, payload, path)
    return model.eval()
