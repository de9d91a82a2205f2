"""Compare CAM methods over several seeds on the synthetic benchmark: CAM, pseudo-mask and segmenter mIoU,
and train-cam time per epoch, each as mean and spread. Results: `benchmarks/results/methods.json`.

    python benchmarks/methods.py --methods baseline,seam --seeds 0,1,2 [--stop-after pseudo]

Each (method, seed) runs in its own folder `runs/methods/<method>-s<seed>/` with the pipeline of `make all`
(CAM inference at 1.0/0.5/1.5 + flip, IRN thresholds, CRF pseudo masks, segmenter on them); all runs share one
generated dataset. A finished stage is not re-run (its manifest entry exists), so the script can be resumed.
Variants of a method are named `NAME:KEY=VALUE;KEY=VALUE` and passed to `train-cam -o`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WSSS = str(ROOT / ".venv" / "bin" / "wsss")
RESULTS = ROOT / "benchmarks" / "results" / "methods.json"
README = ROOT / "README.md"
MARKERS = ("<!-- bench:methods:start -->", "<!-- bench:methods:end -->")
COLUMNS = (("cams_train_miou", "CAM (train)"), ("cams-raw_train_miou", "raw CAM (train)"),
           ("pseudo-crf_train_miou", "pseudo masks, CRF (train)"), ("segment-pseudo-crf_val_miou", "segmenter (val)"))
STAGES = ("cam", "pseudo", "segment")


def wsss(*args: str) -> None:
    subprocess.run([WSSS, *args], cwd=ROOT, check=True)


def done(run: Path, key: str) -> bool:
    manifest = run / "manifest.json"
    return manifest.exists() and key in json.loads(manifest.read_text())["stages"]


def run_pipeline(run: Path, method: str, options: list[str], seed: int, data: Path, stop_after: str,
                 raw_cams: bool) -> None:
    run_args = ["--run", str(run)]
    if not done(run, "data"):
        wsss("data", "synth", *run_args, "--out", str(data))
    if not done(run, "train-cam"):
        option_args = [arg for option in options for arg in ("-o", option)]
        wsss("train-cam", *run_args, "--method", method, *option_args, "--seed", str(seed))
    if not done(run, "evaluate/cams_train"):
        wsss("infer-cam", *run_args, "--split", "train", "--scales", "1.0,0.5,1.5")
        wsss("evaluate", "cams", *run_args, "--split", "train")
    if raw_cams and not done(run, "evaluate/cams-raw_train"):
        wsss("infer-cam", *run_args, "--split", "train", "--scales", "1.0,0.5,1.5", "--raw")
        wsss("evaluate", "cams-raw", *run_args, "--split", "train")
    if stop_after == "cam":
        return
    if not done(run, "evaluate/pseudo-crf_train"):
        wsss("pseudo-label", *run_args, "--refine", "crf")
        wsss("evaluate", "pseudo/crf", *run_args, "--split", "train")
    if stop_after == "pseudo":
        return
    if not done(run, "evaluate/segment-pseudo-crf_val"):
        wsss("segment", *run_args, "--labels", "pseudo", "--pseudo", "crf", "--seed", str(seed))
        wsss("evaluate", "segment/pseudo-crf", *run_args, "--split", "val")


def collect(run: Path) -> dict:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    numbers = {"train_cam_epoch_seconds": stages["train-cam"]["metrics"]["epoch_seconds"],
               "classifier_val_map": stages["train-cam"]["metrics"].get("val_map")}
    for name in ("cams_train", "cams-raw_train", "pseudo-crf_train", "segment-pseudo-crf_val"):
        path = run / "eval" / f"{name}.json"
        if path.exists():
            numbers[f"{name}_miou"] = json.loads(path.read_text())["miou"]
    return numbers


def summarise(per_seed: list[dict]) -> dict:
    summary = {}
    for key in per_seed[0]:
        values = [numbers[key] for numbers in per_seed if numbers.get(key) is not None]
        if values:
            summary[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1
                            else 0.0, "min": min(values), "max": max(values), "n": len(values)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="baseline", help="comma list; a variant is NAME:KEY=VALUE;KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stop-after", choices=STAGES, default="segment")
    parser.add_argument("--raw-cams", action="store_true", help="also infer and score the raw (unrefined) CAMs")
    parser.add_argument("--runs", type=Path, default=Path("runs/methods"))
    args = parser.parse_args()
    runs = args.runs if args.runs.is_absolute() else ROOT / args.runs
    seeds = [int(seed) for seed in args.seeds.split(",")]
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for spec in args.methods.split(","):
        method, _, option_text = spec.partition(":")
        options = [option for option in option_text.split(";") if option]
        per_seed = []
        for seed in seeds:
            run = runs / f"{spec.replace(':', '_').replace(';', '_').replace('=', '-')}-s{seed}"
            run_pipeline(run, method, options, seed, runs / "synth", args.stop_after, args.raw_cams)
            per_seed.append({"seed": seed, **collect(run)})
        results[spec] = {"seeds": per_seed, "summary": summarise([{k: v for k, v in s.items() if k != "seed"}
                                                                  for s in per_seed])}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    print(table, file=sys.stderr)
    text = README.read_text()
    if MARKERS[0] in text:
        start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
        README.write_text(text[:start] + "\n" + table + "\n" + text[end:])


def results_table(results: dict) -> str:
    """Markdown: mIoU mean ± sample std over seeds (n), and train-cam seconds per epoch (median over seeds)."""
    header = "| method | seeds | " + " | ".join(title for _, title in COLUMNS) + " | train-cam s/epoch |"
    lines = [header, "|---" * (len(COLUMNS) + 3) + "|"]
    for spec, result in results.items():
        summary, seeds = result["summary"], [s["seed"] for s in result["seeds"]]
        cells = []
        for key, _ in COLUMNS:
            s = summary.get(key)
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f} (n={s['n']})" if s else "–")
        epochs = sorted(s["train_cam_epoch_seconds"] for s in result["seeds"])
        lines.append(f"| {spec} | {','.join(map(str, seeds))} | " + " | ".join(cells) + f" | {epochs[len(epochs) // 2]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
