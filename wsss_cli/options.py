"""Options several commands share, declared once: their types, help texts and value parsers.

`training_options(defaults)` gives a command every field of `stages.config.TrainingConfig` and of the backbone
(`BackboneConfig`) as options, with `defaults`' values; the command receives them as two dicts, `training` and
`backbone`, ready for its config. Importing this module loads no torch.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from stages.config import BackboneConfig, TrainingConfig
from stages.core.errors import UserError
from stages.registry import BACKBONES

DEFAULT_RUN = Path("runs/default")

RunOption = Annotated[Path, typer.Option("--run", help="Run folder: where stages read inputs and write outputs.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (GPU N of those CUDA_VISIBLE_DEVICES shows).")]
AmpOption = Annotated[bool, typer.Option(help="Mixed precision: float16 on CUDA, bfloat16 on CPUs with native "
                                              "bf16, else off.")]
SeedOption = Annotated[int, typer.Option(help="Random seed.")]
WorkersOption = Annotated[int, typer.Option(min=0, help="Worker processes for loading / CPU-bound work.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Run even if the manifest says the outputs are up to date "
                                                         "(same config, inputs unchanged).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the training state of the last finished "
                                                           "epoch (same config needed); the result equals an "
                                                           "uninterrupted run's.")]
VerifyOption = Annotated[bool, typer.Option(help="Decode every image and mask once, so that a corrupt or mismatched "
                                                 "file stops indexing rather than training.")]
SkipBadOption = Annotated[bool, typer.Option(help="Leave bad images out (listed in dataset.json's `skipped`) instead "
                                                  "of stopping at the first.")]


def joined(values) -> str:
    return ",".join(str(v) for v in values)


def floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes comma-separated numbers, got {text!r}") from None


def ints(text: str, option: str) -> tuple[int, ...]:
    values = floats(text, option)
    if any(v != int(v) for v in values):
        raise UserError(f"{option} takes comma-separated integers, got {text!r}")
    return tuple(int(v) for v in values)


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pair(text: str, option: str) -> tuple[float, float]:
    values = floats(text, option)
    if len(values) != 2 or values[0] > values[1]:
        raise UserError(f"{option} takes LOW,HIGH with LOW <= HIGH, got {text!r}")
    return values


def key_values(pairs: list[str] | None, flag: str = "--option") -> dict[str, str]:
    values = {}
    for pair_text in pairs or []:
        key, separator, value = pair_text.partition("=")
        if not separator or not key.strip():
            raise UserError(f"{flag} takes KEY=VALUE, got {pair_text!r}")
        values[key.strip()] = value.strip()
    return values


def pretrained_value(text: str) -> str:
    return text if text in ("none", "imagenet", "cam") else str(Path(text))


# Each shared field: (its option's type on the command line, help, parser from that type to the config's value).
_SHARED: dict[str, tuple[type, str, Callable[[Any], Any]]] = {
    "train_split": (str, "Split to train on; default: the dataset's training split (VOC with SBD's masks: "
                         "train_aug, else train).", str),
    "epochs": (int, "Training epochs.", int),
    "batch_size": (int, "The global batch (under torchrun each of N processes takes BATCH_SIZE / N).", int),
    "sync_bn": (bool, "Under torchrun: BatchNorm statistics over the global batch instead of each process's share.",
                bool),
    "lr": (float, "Backbone learning rate (poly decay).", float),
    "head_lr_mult": (float, "Learning-rate multiplier for the new layers.", float),
    "weight_decay": (float, "SGD weight decay.", float),
    "base_size": (int, "Long side the scale augmentation is relative to.", int),
    "crop_size": (int, "Square training crop.", int),
    "scale_range": (str, "MIN,MAX random rescale of the long side.", lambda text: pair(text, "--scale-range")),
    "workers": (int, "Worker processes for loading / CPU-bound work.", int),
    "device": (str, "auto, cpu, cuda or cuda:N (GPU N of those CUDA_VISIBLE_DEVICES shows).", str),
    "amp": (bool, "Mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16, else off.", bool),
    "seed": (int, "Random seed.", int),
    "backbone": (str, "Backbone: " + BACKBONES.help() + ".", str),
    "output_stride": (int, "Backbone output stride: 8, 16 or 32.", int),
    "pretrained": (str, "none, imagenet (torchvision's for ResNets; offline, from the installed packages, for "
                         "efficientnet_lite0/1/2; downloaded by timm for other timm models) or a weights file "
                         "(a state dict in torchvision's or timm's key names); train-affinity also takes cam (the "
                         "CAM checkpoint's weights, its default).", pretrained_value),
    "frozen_bn": (bool, "Keep the backbone's BatchNorm statistics as loaded while training (IRN's FixedBatchNorm for "
                        "its ImageNet ResNet-50); their scale and shift still learn.", bool),
}
_FLAGS = {"sync_bn": "--sync-bn"}  # on/off options that have no --no- form
_MIN_ONE = ("epochs", "batch_size")
_TRAINING = [f.name for f in fields(TrainingConfig)]
_BACKBONE = [f.name for f in fields(BackboneConfig)]


def _option(name: str, default: Any) -> inspect.Parameter:
    kind, help_text, _ = _SHARED[name]
    declared = (_FLAGS[name],) if name in _FLAGS else ()
    minimum = {"min": 1} if name in _MIN_ONE else {"min": 0} if name == "workers" else {}
    shown = joined(default) if isinstance(default, tuple) else default
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=shown,
                             annotation=Annotated[kind, typer.Option(*declared, help=help_text, **minimum)])


def training_options(defaults: TrainingConfig, model_defaults: BackboneConfig) -> Callable:
    """Add the shared training and backbone options to a command, which then takes `training` and `backbone`."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in ("training", "backbone")]
        shared = ([_option(name, getattr(defaults, name)) for name in _TRAINING]
                  + [_option(name, getattr(model_defaults, name)) for name in _BACKBONE])

        @functools.wraps(command)
        def wrapper(**values):
            training = {name: _SHARED[name][2](values.pop(name)) for name in _TRAINING}
            backbone = {name: _SHARED[name][2](values.pop(name)) for name in _BACKBONE}
            return command(**values, training=training, backbone=backbone)

        parameters = own + shared
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        del wrapper.__wrapped__  # typer must see the new signature, not the command's
        return wrapper

    return decorate
