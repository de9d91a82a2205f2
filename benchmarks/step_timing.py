"""The one way the benchmarks time what they compare: every spec (a training step, or a whole run of a stage) takes
its turn, round after round, so machine noise falls on all of them alike; compare medians over rounds."""

from __future__ import annotations

import sys
import time
from typing import Callable, TypeVar

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


Output = TypeVar("Output")


def interleaved_runs(runs: dict[str, Callable[[], Output]], rounds: int, label: str,
                     after_round: Callable[[int, dict[str, Output]], None]) -> dict[str, list[float]]:
    """Per run, its wall seconds in each round; after each round, `after_round(round_index, outputs)` gets every
    run's output, to check them against each other."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds):
        outputs = {}
        for name, run in runs.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - started)
            print(f"{label} round {round_index + 1}: {name} {seconds[name][-1]:.1f} s", file=sys.stderr)
        after_round(round_index, outputs)
    return seconds
