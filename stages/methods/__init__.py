"""CAM training methods, plugged into `wsss train-cam --method NAME` by name.

A method is an `nn.Module` built from a `CamModelConfig`, with:
  - `forward(images) -> logits (N, C)`: classification, used for validation mAP;
  - `training_losses(images, labels) -> dict[str, Tensor]`: the terms summed into the training loss;
  - `cams(images) -> (N, C, h, w)`: non-negative class activation maps, what `wsss infer-cam` fuses;
  - `param_groups() -> (backbone params, new-layer params)`: new layers get a higher learning rate.
"""

from __future__ import annotations

from .baseline import BaselineCam, CamModelConfig

CAM_METHODS = {
    "baseline": BaselineCam,
}


def build_cam_model(method: str, config: CamModelConfig, num_classes: int):
    from ..core.errors import UserError

    if method not in CAM_METHODS:
        raise UserError(f"unknown CAM method {method!r} (choose from {', '.join(CAM_METHODS)})")
    return CAM_METHODS[method](config, num_classes)


__all__ = ["CAM_METHODS", "CamModelConfig", "build_cam_model"]
