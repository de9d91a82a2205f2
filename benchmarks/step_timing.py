"""The one way the step benchmarks time training steps: every spec's step takes its turn, round after round, so
machine noise falls on all of them alike; compare medians over rounds."""

from __future__ import annotations

import sys
import time
from typing import Callable

import torch


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of `step`, over `steps` calls (CUDA work waited for)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def interleaved(steps: dict[str, Callable[[], None]], rounds: int, steps_per_round: int,
                device: torch.device) -> dict[str, list[float]]:
    """Per spec, its seconds per step in each round, after 2 warm-up steps each (allocator, kernel choice)."""
    for step in steps.values():
        timed(step, 2, device)
    samples: dict[str, list[float]] = {spec: [] for spec in steps}
    for round_index in range(rounds):
        for spec, step in steps.items():
            samples[spec].append(timed(step, steps_per_round, device))
        print(f"round {round_index + 1}/{rounds}: " + "  ".join(f"{spec} {samples[spec][-1]:.3f}s" for spec in steps),
              file=sys.stderr)
    return samples
