"""A run's results read back: the evaluations in `eval/`, the stage timings in the manifest, and the tables and
headline numbers `wsss evaluate`, `wsss summary` and the report show. Reads only; no stage writes here."""

from __future__ import annotations

import statistics

from rich.table import Table

from .config import SegmentConfig
from .core.errors import UserError
from .core.history import stage_seconds
from .core.io import read_json
from .core.runs import Run


def load_results(run: Run) -> list[dict]:
    return [read_json(path, "evaluation result") for path in sorted(run.eval_dir.glob("*.json"))]


def results_table(results: list[dict], stale: dict[str, str] | None = None) -> Table:
    """One row per evaluation result; `stale` (result name → why) marks those made from out-of-date inputs."""
    stale = stale or {}
    table = Table(title="Evaluation", caption="stale: made from inputs that have changed since (re-run the stage "
                                              "named)" if stale else None)
    for column in ("name", "kind", "split", "images"):
        table.add_column(column)
    table.add_column("mIoU %", justify="right")
    table.add_column("best thr", justify="right")
    if stale:
        table.add_column("stale")
    for result in results:
        threshold = result.get("best_threshold")
        row = [result["name"], result["kind"], result["split"], str(result["num_images"]), percent(result["miou"]),
               "–" if threshold is None else f"{threshold:.2f}"]
        table.add_row(*row, *([stale.get(result["name"], "")] if stale else []))
    return table


def stale_results(run: Run) -> dict[str, str]:
    """Evaluation results (by name) whose `evaluate` stage is stale, with why."""
    return {key.split("/", 1)[1]: why for key, why in run.staleness().items() if key.startswith("evaluate/")}


def per_class_table(result: dict) -> Table:
    """IoU, precision and recall per class of one evaluation result."""
    table = Table(title=f"{result['name']} per class")
    table.add_column("class")
    for column in ("IoU %", "precision %", "recall %"):
        table.add_column(column, justify="right")
    for class_name, scores in result["per_class"].items():
        table.add_row(class_name, percent(scores["iou"]), percent(scores["precision"]), percent(scores["recall"]))
    return table


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


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
    # The default segmenter (pseudo masks) against the same segmenter on ground truth, both on val.
    weak = results.get(run.evaluation_target(f"segment/{SegmentConfig().tag}", "val")[1])
    full = results.get(run.evaluation_target("segment/gt", "val")[1])
    if weak and full and full["miou"]:
        numbers["weak_over_full"] = weak["miou"] / full["miou"]
    numbers["seconds"] = {key: round(stage_seconds(entry), 2) for key, entry in stages.items()}
    numbers["total_seconds"] = round(sum(numbers["seconds"].values()), 1)
    return numbers


def require_run(run: Run) -> Run:
    """The run, or a one-line error if its folder holds no manifest (nothing has run there)."""
    if not run.manifest_path.is_file():
        raise UserError(f"no wsss run at {run.root}: it has no {run.manifest_path.name} (run `wsss data synth "
                        f"--run {run.root}` or another stage there first)")
    return run


def runs_table(runs: list[Run]) -> Table:
    """Several runs (seeds) side by side: each evaluation's mIoU per run, and its mean ± sample sd over the runs
    that have it."""
    results = [{r["name"]: r for r in load_results(run)} for run in runs]
    names = list(dict.fromkeys(name for run_results in results for name in run_results))
    table = Table(title=f"{len(runs)} runs: mIoU %")
    table.add_column("evaluation")
    for run in runs:
        table.add_column(run.root.name, justify="right")
    table.add_column("mean ± sd (n)", justify="right")
    for name in names:
        values = [run_results[name]["miou"] if name in run_results else None for run_results in results]
        present = [100 * v for v in values if v is not None]
        spread = f" ± {statistics.stdev(present):.1f}" if len(present) > 1 else ""
        table.add_row(name, *(percent(v) for v in values), f"{statistics.fmean(present):.1f}{spread} ({len(present)})")
    return table


def summary_tables(run: Run) -> list[Table]:
    tables = []
    numbers = headline(run)
    key_numbers = Table(title=f"wsss run {run.root}")
    key_numbers.add_column("result")
    key_numbers.add_column("value", justify="right")
    if numbers.get("classifier_val_map") is not None:
        key_numbers.add_row("classifier val mAP %", percent(numbers["classifier_val_map"]))
    if "weak_over_full" in numbers:
        key_numbers.add_row(f"segmenter: {SegmentConfig().tag} / ground truth", f"{numbers['weak_over_full']:.3f}")
    key_numbers.add_row("total stage time (s)", f"{numbers['total_seconds']:.1f}")
    tables.append(key_numbers)
    results = load_results(run)
    if results:
        tables.append(results_table(results, stale_results(run)))
    timings = Table(title="stage timings")
    timings.add_column("stage")
    timings.add_column("seconds", justify="right")
    for key, seconds in numbers["seconds"].items():
        timings.add_row(key, f"{seconds:.1f}")
    tables.append(timings)
    return tables
