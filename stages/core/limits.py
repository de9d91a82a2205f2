"""Every number a stage config holds, with its allowed range: one table, checked where a config is made.

A field's name means the same thing in every config (`lr`, `crop_size`, `workers`...), so the table is keyed by
name. `check_numbers(config)` walks a config's fields (nested configs included): every number must be finite and,
for a name in `LIMITS`, within its range; a tuple's elements are checked one by one. A test walks every config
and fails on a numeric field missing from the table, so a new option cannot go unchecked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Limit:
    low: float
    high: float
    open_low: bool = False  # low itself not allowed
    open_high: bool = False
    flag: str = ""  # the command-line option, where it is not --FIELD-NAME

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


POSITIVE = dict(open_low=True)
PROBABILITY = Limit(0, 1)
CHANNELS = Limit(1, 8192)
SIZE = Limit(16, 16384)  # pixels of a training image side; below 16 the deepest maps vanish

LIMITS: dict[str, Limit] = {
    # training (train-cam, train-affinity, segment)
    "epochs": Limit(1, 10_000),
    "batch_size": Limit(1, 65_536),
    "lr": Limit(0, 100, **POSITIVE),
    "head_lr_mult": Limit(0, 10_000, **POSITIVE),
    "weight_decay": Limit(0, 1),
    "base_size": SIZE,
    "crop_size": SIZE,
    "scale_range": Limit(0, 100, **POSITIVE),
    "workers": Limit(0, 512),
    "seed": Limit(0, 2**32 - 1),  # numpy's seed range
    # models
    "output_stride": Limit(8, 32),
    "aspp_rates": Limit(1, 256),
    "aspp_channels": CHANNELS,
    "decoder_channels": CHANNELS,
    "low_level_channels": CHANNELS,
    # inference, pseudo labels, evaluation, report
    "scales": Limit(0, 16, **POSITIVE),
    "test_scales": Limit(0, 16, **POSITIVE),
    "part_size": Limit(1, 10_000_000),
    "fg_threshold": PROBABILITY,
    "bg_threshold": PROBABILITY,
    "saliency_threshold": PROBABILITY,
    "thresholds": PROBABILITY,
    "class_threshold": PROBABILITY,
    "cam_scales": Limit(0, 16, **POSITIVE),
    "num_samples": Limit(0, 100_000, flag="--samples"),
    # the synthetic benchmark (data synth)
    "num_train": Limit(1, 10_000_000),
    "num_val": Limit(0, 10_000_000),
    "image_size": Limit(32, 2048),
    "num_classes": Limit(2, 1000),
    "objects_per_image": Limit(1, 8),
    "two_class_prob": PROBABILITY,
    "object_scale": Limit(0, 1, **POSITIVE),
    "marker_scale": Limit(0, 0.2, **POSITIVE),
    "context_prob": PROBABILITY,
    "context_distractor_prob": PROBABILITY,
    "occluder_prob": PROBABILITY,
    "colour_jitter": Limit(0, 1, open_high=True),
    "noise_std": Limit(0, 255),
    "jpeg_quality": Limit(1, 100),
}


def numbers_of(value) -> list[float]:
    values = value if isinstance(value, tuple) else (value,)
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_numbers(config) -> None:
    """One-line UserError for the first number of `config` (a dataclass) that is not finite or out of range."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value)
            continue
        limit = LIMITS.get(field.name)
        option = limit.flag if limit and limit.flag else "--" + field.name.replace("_", "-")
        for number in numbers_of(value):
            if not math.isfinite(number):
                raise UserError(f"{option} must be a finite number, got {number}")
            if limit is not None and not limit.holds(number):
                raise UserError(f"{option} must be in {limit}, got {number:g}")
