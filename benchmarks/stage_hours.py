"""How long did the stages of some run folders take? Wall hours from their manifests, per folder and in all.

    python benchmarks/stage_hours.py runs/methods-lite0-imagenet-224/*/

A stage's time is its manifest entry's `seconds`, which covers only its last invocation; a training stage resumed
after a cut (`--resume`) also keeps its earlier epochs in its history, so for those the larger of `seconds` and the
sum of the history's epoch seconds is taken. Time a cut-off invocation spent outside its finished epochs, and
stages still unfinished, are not counted: the totals are a lower bound.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.core.history import stage_seconds


def run_seconds(run: Path) -> float | None:
    """The seconds of all finished stages of a run folder; None when it has no manifest."""
    manifest = run / "manifest.json"
    if not manifest.exists():
        return None
    return sum(stage_seconds(entry) for entry in json.loads(manifest.read_text())["stages"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with a manifest.json)")
    args = parser.parse_args()
    total = 0.0
    for run in args.runs:
        seconds = run_seconds(run)
        if seconds is None:
            print(f"{run}: no manifest.json, skipped")
            continue
        total += seconds
        print(f"{run}: {seconds / 3600:.2f} h")
    print(f"total: {total / 3600:.2f} h of stage wall time")


if __name__ == "__main__":
    main()
