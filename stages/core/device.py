"""Device choice, mixed precision and seeding: the one place that knows about CUDA."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA; a no-op on CPU, where results stay in float32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last pays on CUDA tensor cores and on CPU oneDNN convolutions alike."""
    return torch.channels_last


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
