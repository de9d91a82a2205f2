"""CAM training methods, plugged into `wsss train-cam --method NAME` by name.

Every method and add-on is registered by name in `stages.registry` (CAM_METHODS, CAM_ADDONS, SEGMENT_METHODS,
SEGMENT_CONTRASTS); the builders below look their classes up there, which imports a method's module only when
it is used. Tensor helpers several methods share live in `common`.

A method is an `nn.Module` class built as `Method(CamModelConfig, num_classes, Method.Options(...))`, with:
  - `Options`: a frozen dataclass of the method's own hyper-parameters (`train-cam --option KEY=VALUE`);
  - `forward(images) -> logits (N, C)`: classification, used for validation mAP;
  - `training_losses(images, labels) -> dict[str, Tensor]`: the terms summed into the training loss;
  - `cams(images) -> (N, C, h, w)`: non-negative class activation maps, what `wsss infer-cam` fuses;
  - `param_groups() -> (backbone params, new-layer params)`: new layers get a higher learning rate;
  - optionally `uses_saliency` (True when its options need saliency maps): `training_losses` then also gets
    `saliency` (N, H, W) in [0, 1] and `has_saliency` (N,) (False where an image has no map);
  - optionally `training_views(images, labels) -> TrainingViews`: its terms plus both views' class maps and
    features, which makes it usable with an add-on loss.

An add-on loss (`wsss train-cam --aux NAME`) is an `nn.Module` class built as `Aux(feature_channels,
Aux.Options(...))`, the channels of the backbone's last features, whose `forward(TrainingViews, labels)` returns
extra terms (dict[str, Tensor]). Its parameters train with the new layers' learning rate; it is not saved in the
checkpoint (inference does not use it).

Segmenter training methods (`wsss segment --method NAME`) wrap a DeepLab: `Method(segmenter, num_classes,
Method.Options(...), steps_per_epoch)`, with `uses_masks` / `uses_saliency` (what its batches need),
`new_parameters()` (its training-only layers) and `forward(batch, step) -> dict[str, Tensor]`; optionally
`seeds(images, labels, saliency)` (pseudo masks it can write). A method that uses masks takes an add-on contrast
loss (`--contrast NAME`): `Contrast(decoder_channels, num_classes, Contrast.Options(...), steps_per_epoch)`
called as `contrast(features, logits, masks, step)`. Only the segmenter is saved.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..config import CamModelConfig
from ..core.checkpoint import load_state, model_config
from ..core.errors import UserError
from ..registry import CAM_ADDONS, CAM_METHODS, SEGMENT_CONTRASTS, SEGMENT_METHODS


def build_cam_model(method: str, config: CamModelConfig, num_classes: int, options: dict[str, Any] | None = None):
    model_class = CAM_METHODS.get(method)  # "unknown CAM method ..." (choose from the registered names)
    return model_class(config, num_classes, method_options(model_class.Options, options or {}, f"method {method!r}"))


def build_aux_loss(name: str, options: dict[str, Any], model: nn.Module, method: str) -> nn.Module:
    """The add-on loss `name` for a built CAM model; an error if the model has no two views to give it."""
    aux_class = CAM_ADDONS.get(name)  # "unknown add-on loss ..."
    if not hasattr(model, "training_views"):
        two_view = ", ".join(n for n in CAM_METHODS if hasattr(CAM_METHODS.get(n), "training_views"))
        raise UserError(f"--aux {name} needs a method with two views ({two_view}); {method!r} has none")
    return aux_class(model.backbone.channels[-1], method_options(aux_class.Options, options, f"add-on {name!r}"))


def build_segment_method(name: str, options: dict[str, Any], contrast: str, contrast_options: dict[str, Any],
                         segmenter: nn.Module, num_classes: int, steps_per_epoch: int) -> nn.Module:
    """The training wrapper of segment method `name` around `segmenter`, with add-on contrast `contrast` (or "")."""
    method_class = SEGMENT_METHODS.get(name)  # "unknown segment method ..."
    method_opts = method_options(method_class.Options, options, f"segment method {name!r}")
    if not contrast:
        return method_class(segmenter, num_classes, method_opts, steps_per_epoch)
    contrast_class = SEGMENT_CONTRASTS.get(contrast)  # "unknown contrast loss ..."
    if not method_class.uses_masks:
        raise UserError(f"--contrast {contrast} needs mask labels; segment method {name!r} trains without them")
    add_on = contrast_class(segmenter.classifier.in_channels, num_classes,
                            method_options(contrast_class.Options, contrast_options, f"contrast {contrast!r}"),
                            steps_per_epoch)
    return method_class(segmenter, num_classes, method_opts, steps_per_epoch, contrast=add_on)


def cam_model_from_checkpoint(payload: dict[str, Any], path) -> nn.Module:
    """The trained CAM model of a loaded `train-cam` checkpoint payload, in eval mode on the CPU (the weights
    come from the checkpoint, so no pretrained backbone is fetched)."""
    config = payload["config"]
    model = build_cam_model(config.get("method", ""), model_config(CamModelConfig, payload, path),
                            len(payload["class_names"]) - 1, config.get("method_options"))
    load_state(model, payload, path)
    return model.eval()


class CamTraining(torch.nn.Module):
    """The CAM model and its add-on loss as one module whose forward computes the training terms: what
    DistributedDataParallel wraps, and what the training state saves."""

    def __init__(self, model: torch.nn.Module, aux: torch.nn.Module | None):
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, images: torch.Tensor, labels: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
        return training_terms(self.model, self.aux, images, labels, **extra)


def training_terms(model, aux, images: torch.Tensor, labels: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
    """One batch's loss terms: the method's own, plus an add-on's (`aux`, or None) computed on its two views."""
    if aux is None:
        return model.training_losses(images, labels, **extra)
    views = model.training_views(images, labels, **extra)
    return {**views.losses, **aux(views, labels)}


def method_options(options_class, values: dict[str, Any], owner: str):
    """Build a method's (or add-on's) Options from KEY=VALUE pairs, converting each value to the field's type;
    `owner` names it in errors ("method 'seam'")."""
    fields = {field.name: field for field in dataclasses.fields(options_class)}
    converted = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"{owner} has no option {key!r} (its options: {known})")
        default = getattr(options_class(), key)
        converted[key] = _convert(value, default, key)
    return options_class(**converted)


def _convert(value: Any, default: Any, key: str) -> Any:
    if not isinstance(value, str):
        return type(default)(value) if not isinstance(default, tuple) else tuple(value)
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            element = type(default[0]) if default else str
            return tuple(element(part) for part in value.split(",") if part.strip())
        return type(default)(value)
    except ValueError:
        raise UserError(f"option {key}={value!r}: expected a {type(default).__name__} like {default!r}") from None


__all__ = ["CamTraining", "build_aux_loss", "build_cam_model", "build_segment_method", "cam_model_from_checkpoint",
           "method_options", "training_terms"]
