"""A training stage's per-epoch history (loss terms, validation metrics, timings): what its manifest entry
records and the report plots. Free of torch, so that the report does not load it."""

from __future__ import annotations

TIMINGS = ("seconds", "data_seconds")  # the per-epoch entries that are neither loss terms nor metrics


def loss_terms(epoch: dict[str, float]) -> dict[str, float]:
    """An epoch's mean loss terms (without its timings and validation metrics)."""
    return {name: value for name, value in epoch.items() if name not in TIMINGS and not name.startswith("val_")}


def timing_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The mean epoch time and the share of it spent waiting for data, for a training stage's manifest entry."""
    seconds = sum(epoch["seconds"] for epoch in history)
    return {"epoch_seconds": round(seconds / len(history), 2),
            "data_wait_share": round(sum(epoch.get("data_seconds", 0.0) for epoch in history) / seconds, 4)}


def stage_seconds(entry: dict) -> float:
    """A manifest entry's wall seconds. Its `seconds` covers only the stage's last invocation; a training stage
    resumed after a cut keeps its earlier epochs in its history, so the larger of the two counts."""
    history = entry.get("metrics", {}).get("history", [])
    return max(entry.get("seconds", 0.0), sum(epoch.get("seconds", 0.0) for epoch in history))


def epoch_history(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The per-epoch metrics for the stage's manifest entry (the report plots them from there, without loading the
    checkpoint), rounded to keep the manifest small."""
    return [{name: round(value, 4) for name, value in epoch.items()} for epoch in history]
