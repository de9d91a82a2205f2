"""Device choice, mixed precision and seeding: the one place that knows about CUDA."""

from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N (GPU N of those CUDA_VISIBLE_DEVICES shows); under torchrun each process takes
    the GPU of its LOCAL_RANK."""
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA device is available (use --device cpu or auto)")
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if index:
        if "LOCAL_RANK" in os.environ:
            raise UserError(f"--device {name}: under torchrun each process takes the GPU of its LOCAL_RANK; use "
                            "--device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        if int(index) >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (0.."
                            f"{torch.cuda.device_count() - 1})")
        return torch.device("cuda", int(index))
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision: float16 on CUDA; bfloat16 on CPUs with native bf16 (AVX512-BF16 / AMX), where it is
    about 1.6x faster for our convolutions; otherwise (or with enabled=False) plain float32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if enabled and device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def cpu_has_native_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last pays on CUDA tensor cores and on CPU oneDNN convolutions alike."""
    return torch.channels_last


def forward_pixel_budget(device: torch.device) -> int | None:
    """At most this many pixels per inference forward (None: the whole batch at once). On CPUs the network runs
    fastest with a few hundred thousand pixels per forward, whose activations stay in the caches: 8 VOC-sized
    images' views at once ran 1.6x (float32) to 1.7x (bfloat16) slower (benchmarks/inference_options.py).
    GPUs want the whole batch."""
    return None if device.type == "cuda" else 2**18


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def rng_state() -> dict:
    """Every random generator a training step may draw from (torch CPU and CUDA, Python, NumPy), in a form
    `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
