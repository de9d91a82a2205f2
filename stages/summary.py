"""`wsss summary`: the run's results and stage timings, read back from its manifest and `eval/` JSON files."""

from __future__ import annotations

import json

from rich.table import Table

from .core.runs import Run
from .evaluate import percent, results_table


def load_results(run: Run) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(run.path("eval").glob("*.json"))]


def headline(run: Run) -> dict:
    """The numbers a WSSS paper reports: classifier mAP, CAM / pseudo-mask / segmenter mIoU, weak/full ratio."""
    stages = run.manifest()["stages"]
    results = {r["name"]: r for r in load_results(run)}
    numbers: dict = {}
    if "train-cam" in stages:
        numbers["classifier_val_map"] = stages["train-cam"]["metrics"].get("val_map")
    for name, result in results.items():
        numbers[f"{name}_miou"] = result["miou"]
        if result["kind"] == "cam":
            numbers[f"{name}_best_threshold"] = result["best_threshold"]
    weak, full = results.get("segment-pseudo-crf_val"), results.get("segment-gt_val")
    if weak and full and full["miou"]:
        numbers["weak_over_full"] = weak["miou"] / full["miou"]
    numbers["seconds"] = {key: entry["seconds"] for key, entry in stages.items()}
    numbers["total_seconds"] = round(sum(numbers["seconds"].values()), 1)
    return numbers


def summary_tables(run: Run) -> list[Table]:
    tables = []
    numbers = headline(run)
    key_numbers = Table(title=f"wsss run {run.root}")
    key_numbers.add_column("result")
    key_numbers.add_column("value", justify="right")
    if numbers.get("classifier_val_map") is not None:
        key_numbers.add_row("classifier val mAP %", percent(numbers["classifier_val_map"]))
    if "weak_over_full" in numbers:
        key_numbers.add_row("segmenter: pseudo-crf / ground truth", f"{numbers['weak_over_full']:.3f}")
    key_numbers.add_row("total stage time (s)", f"{numbers['total_seconds']:.1f}")
    tables.append(key_numbers)
    results = load_results(run)
    if results:
        tables.append(results_table(results))
    timings = Table(title="stage timings")
    timings.add_column("stage")
    timings.add_column("seconds", justify="right")
    for key, seconds in numbers["seconds"].items():
        timings.add_row(key, f"{seconds:.1f}")
    tables.append(timings)
    return tables
