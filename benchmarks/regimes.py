"""Which training regime should `make all` run? The baseline chain per regime and seed, side by side.

Each regime is `make all` with extra stage options (the Makefile's DATA_OPTIONS / CAM_OPTIONS / SEGMENT_OPTIONS),
then the same segmenter trained on ground truth (`segment --labels gt`, the full-supervision bound). Per run it
records the classifier's val mAP, CAM mIoU (best threshold), pseudo-mask mIoU (none, crf), the segmenter on pseudo
masks and on ground truth (val), and every stage's seconds, into `benchmarks/results/regimes.json`, written after
each run so a long measurement can be stopped and resumed (`--resume` skips the (regime, seed) pairs it holds).

The protocol was fixed before any result: regimes below, seeds 0-2, means and sd over seeds.

A diagnostic added after seed 0 (it decides nothing): the CRF pseudo masks with the foreground threshold fitted on
the CAMs' own sweep (the best background threshold, fitted on ground truth, so an oracle) instead of IRN's 0.30,
`pseudo-crf-fitted_train_miou`. It tells how much of a regime's pseudo-mask score is its CAMs' calibration against
IRN's fixed threshold. `--add-fitted` adds it to finished runs whose folders are still there.

    python benchmarks/regimes.py [--regimes resnet10-scratch,lite0-imagenet] [--seeds 0,1,2] [--resume]
    python benchmarks/regimes.py --add-fitted
    python benchmarks/regimes.py --table     # the table of benchmarks/README.md, from the results file
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.runs import Run  # noqa: E402
from stages.results import headline  # noqa: E402
from methods import fitted_pseudo_masks  # noqa: E402  (benchmarks/, the script's folder)
from readme_table import machine_info, write_readme_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "regimes.json"
LITE0 = "--backbone efficientnet_lite0 --pretrained imagenet"

# name: (data options, train-cam options, segment options). From-scratch resnet10 is today's default; lite0 with
# ImageNet weights at a tenth of the from-scratch learning rates (0.01 and 0.005; head x10), at OS16
# and OS8, and on 224 px images (14x14 maps at OS16; crop and base size follow the image size).
REGIMES: dict[str, tuple[str, str, str]] = {
    "resnet10-scratch": ("", "", ""),
    "lite0-imagenet": ("", f"{LITE0} --lr 0.01", f"{LITE0} --lr 0.005"),
    "lite0-imagenet-os8": ("", f"{LITE0} --lr 0.01 --output-stride 8", f"{LITE0} --lr 0.005"),
    "lite0-imagenet-224": ("--image-size 224", f"{LITE0} --lr 0.01 --crop-size 192 --base-size 224",
                           f"{LITE0} --lr 0.005 --crop-size 192 --base-size 224"),
}
KEYS = ("classifier_val_map", "cams_train_miou", "pseudo-none_train_miou", "pseudo-crf_train_miou",
        "pseudo-crf-fitted_train_miou", "segment-pseudo-crf_val_miou", "segment-gt_val_miou")


def sh(*command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def run_folder(regime: str, seed: int) -> Path:
    return ROOT / "runs" / "regimes" / f"{regime}-seed{seed}"


def fitted_miou(run_dir: Path) -> float:
    """The diagnostic of the module docstring: CRF pseudo masks at the CAMs' fitted threshold, their train mIoU."""
    fitted_pseudo_masks(run_dir, "cams")
    return json.loads((run_dir / "eval" / "pseudo-crf-fitted_train.json").read_text())["miou"]


def measure(regime: str, seed: int) -> dict:
    data, cam, segment = REGIMES[regime]
    run_dir = run_folder(regime, seed)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a partly reused one
    wsss = str(ROOT / ".venv" / "bin" / "wsss")
    make_all = sh("make", "all", f"RUN={run_dir}", f"SEED={seed}", f"DATA_OPTIONS={data}", f"CAM_OPTIONS={cam}",
                  f"SEGMENT_OPTIONS={segment}")
    sh(wsss, "segment", "--run", str(run_dir), "--labels", "gt", "--seed", str(seed), *segment.split())
    sh(wsss, "evaluate", "segment/gt", "--run", str(run_dir), "--split", "val")
    numbers = headline(Run(run_dir))
    return {"regime": regime, "seed": seed, "options": {"data": data, "train-cam": cam, "segment": segment},
            "make_all_wall_seconds": round(make_all, 1), **numbers,
            "pseudo-crf-fitted_train_miou": fitted_miou(run_dir)}


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for regime in dict.fromkeys(r["regime"] for r in runs):
        mine = [r for r in runs if r["regime"] == regime]
        summary[regime] = {"seeds": [r["seed"] for r in mine]}
        for key in KEYS + ("make_all_wall_seconds",):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                summary[regime][key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values)
                                        if len(values) > 1 else None, "values": values}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    parser.add_argument("--table", action="store_true", help="only write the README table from the results file")
    parser.add_argument("--add-fitted", action="store_true",
                        help="only add the fitted-threshold diagnostic to finished runs whose folders are there")
    args = parser.parse_args()
    if args.add_fitted:
        add_fitted()
        return
    if args.table:
        write_readme_table("regimes", table(json.loads(RESULTS.read_text())["runs"]))
        return
    regimes = args.regimes.split(",")
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        parser.error(f"unknown regime {unknown[0]!r} (choose from {', '.join(REGIMES)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = json.loads(RESULTS.read_text())["runs"] if args.resume and RESULTS.exists() else []
    done = {(r["regime"], r["seed"]) for r in runs}
    for seed in seeds:  # every regime of a seed before the next seed, so a stopped run leaves whole comparisons
        for regime in regimes:
            if (regime, seed) in done:
                continue
            runs.append(measure(regime, seed))
            save(runs)
            print(f"regimes: {regime} seed {seed} done -> {RESULTS}", flush=True)


def save(runs: list[dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(), "summary": summarise(runs), "runs": runs},
                                  indent=2) + "\n")


COLUMNS = (("classifier_val_map", "classifier val mAP"), ("cams_train_miou", "CAM (train)"),
           ("pseudo-crf_train_miou", "pseudo masks, CRF at IRN's 0.30 (train)"),
           ("pseudo-crf-fitted_train_miou", "pseudo masks, CRF at the fitted threshold (train; oracle diagnostic)"),
           ("segment-pseudo-crf_val_miou", "segmenter on CRF masks (val)"),
           ("segment-gt_val_miou", "segmenter on ground truth (val)"))


def table(runs: list[dict]) -> str:
    """Per regime: mean ± sd over its seeds and the per-seed values, in %, and the mean `make all` seconds."""
    header = "| regime | seeds | " + " | ".join(title for _, title in COLUMNS) + " | `make all` s |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 3)]
    for regime in dict.fromkeys(run["regime"] for run in runs):
        mine = sorted((run for run in runs if run["regime"] == regime), key=lambda run: run["seed"])
        cells = []
        for key, _ in COLUMNS:
            values = [100 * run[key] for run in mine if run.get(key) is not None]
            if not values:
                cells.append("–")
                continue
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.1f}{spread} ({' / '.join(f'{v:.1f}' for v in values)})")
        seconds = statistics.fmean(run["make_all_wall_seconds"] for run in mine)
        seeds = ",".join(str(run["seed"]) for run in mine)
        lines.append(f"| {regime} | {seeds} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def add_fitted() -> None:
    """The fitted-threshold diagnostic for every finished run that lacks it and whose folder is still there."""
    runs = json.loads(RESULTS.read_text())["runs"]
    for entry in runs:
        run_dir = run_folder(entry["regime"], entry["seed"])
        if entry.get("pseudo-crf-fitted_train_miou") is None and (run_dir / "eval" / "cams_train.json").exists():
            entry["pseudo-crf-fitted_train_miou"] = fitted_miou(run_dir)
            save(runs)
            print(f"regimes: fitted threshold of {entry['regime']} seed {entry['seed']} added", flush=True)


if __name__ == "__main__":
    main()
