"""Does the random walk beat the CRF? The affinity methods' pseudo masks on a regime's runs, side by side.

Protocol, fixed before any result. For each seed and method, in a copy of the regime's run folder from
`benchmarks/regimes.py` (runs/regimes/REGIME-seedN: CAMs of train and the CRF pseudo masks, IRN's thresholds):
  - `train-affinity --method irn`, then `pseudo-label --refine rw` with IRN's background 0.25 for both thresholds
    (set `rw-irn`, IRN's own semantic labels) and `--refine rw,crf` with the default 0.30 / 0.05 (`rw-irn+crf`);
  - `train-affinity --method psa`, then `pseudo-label --refine rw` (`rw-psa`, every pixel labelled);
  - each set and the run's `crf` set evaluated on train: mIoU, coverage (labelled share), confident-pixel mIoU;
  - stage seconds from the manifest, and the walk's seconds per image and peak memory on VOC-sized copies
    (500x375) of 8 train images in a child process (`--voc-sized`);
  - with `--segment SET`: the segmenter (`make all`'s options) trained on that set, evaluated on val, against
    the run's segmenter on `crf` (choose SET by the mean mIoU over seeds, after the pseudo-mask phase; with
    `--resume`, a seed whose sets are measured trains on them in its runs as they are).
Everything goes to benchmarks/results/affinity.json after each run (`--resume` keeps the runs it holds).

    python benchmarks/affinity.py --regime lite0-imagenet --seeds 0,1,2 [--segment rw-irn+crf] [--resume]
    python benchmarks/affinity.py --table   # the table between the bench:affinity markers, from the results file
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

from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from regimes import REGIMES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "affinity.json"
WSSS = str(ROOT / ".venv" / "bin" / "wsss")
# set name: (train-affinity method, pseudo-label options)
MASK_SETS = {
    "rw-irn": ("irn", ["--refine", "rw", "--fg-threshold", "0.25", "--bg-threshold", "0.25"]),
    "rw-irn+crf": ("irn", ["--refine", "rw,crf"]),
    "rw-psa": ("psa", ["--refine", "rw"]),
}
KEYS = ("miou", "coverage", "miou_confident")


def sh(*command: str) -> None:
    subprocess.run(command, cwd=ROOT, check=True)


def evaluation(run: Path, name: str, split: str) -> dict:
    return json.loads((run / "eval" / f"{name}_{split}.json").read_text())


def measure(regime: str, seed: int, segment_set: str) -> dict:
    source = ROOT / "runs" / "regimes" / f"{regime}-seed{seed}"
    if not (source / "pseudo" / "crf").is_dir():
        raise SystemExit(f"{source} has no CRF pseudo masks: run `python benchmarks/regimes.py --regimes {regime} "
                         f"--seeds {seed}` first")
    record = {"regime": regime, "seed": seed, "sets": {"crf": pick(evaluation(source, "pseudo-crf", "train"))},
              "seconds": {}}
    for method in dict.fromkeys(method for method, _ in MASK_SETS.values()):
        run = method_run(source, regime, seed, method)  # one copy per method: each holds its own affinity network
        sh(WSSS, "train-affinity", "--run", str(run), "--method", method, "--seed", str(seed))
        record["seconds"][f"train-affinity-{method}"] = stage_seconds(run, "train-affinity")
        record[f"voc_sized_{method}"] = voc_sized(run)
        for name, (set_method, options) in MASK_SETS.items():
            if set_method != method:
                continue
            sh(WSSS, "pseudo-label", "--run", str(run), *options, "--name", name)
            sh(WSSS, "evaluate", f"pseudo/{name}", "--run", str(run), "--split", "train")
            record["seconds"][f"pseudo-label-{name}"] = stage_seconds(run, f"pseudo-label/{name}")
            record["sets"][name] = pick(evaluation(run, f"pseudo-{name}", "train"))
    if segment_set:
        record["segment"] = segmenters(regime, seed, segment_set)
    return record


def segmenters(regime: str, seed: int, segment_set: str) -> dict:
    """The segmenter (the regime's options) trained on `segment_set` in its method's run, against the regime
    run's segmenter on the CRF masks: val mIoU of each."""
    source = ROOT / "runs" / "regimes" / f"{regime}-seed{seed}"
    run = method_run(source, regime, seed, MASK_SETS[segment_set][0], fresh=False)
    _, _, segment_options = REGIMES[regime]
    sh(WSSS, "segment", "--run", str(run), "--pseudo", segment_set, "--seed", str(seed), *segment_options.split())
    sh(WSSS, "evaluate", f"segment/pseudo-{segment_set}", "--run", str(run), "--split", "val")
    return {segment_set: evaluation(run, f"segment-pseudo-{segment_set}", "val")["miou"],
            "crf": evaluation(source, "segment-pseudo-crf", "val")["miou"]}


def method_run(source: Path, regime: str, seed: int, method: str, fresh: bool = True) -> Path:
    """runs/affinity/REGIME-seedN-METHOD: a copy of the regime's run (without its predictions), made afresh."""
    run = ROOT / "runs" / "affinity" / f"{regime}-seed{seed}-{method}"
    if fresh:
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(source, run, ignore=shutil.ignore_patterns("pred_*", "report.html"))
    return run


def pick(result: dict) -> dict:
    return {key: result.get(key) for key in KEYS}


def stage_seconds(run: Path, key: str) -> float:
    return json.loads((run / "manifest.json").read_text())["stages"][key]["seconds"]


VOC_SIZED = r"""
import json, resource, sys, time
import numpy as np, torch
from PIL import Image
from stages.core.camstore import CamReader
from stages.core.runs import Run
from stages.refine import ImageItem
from stages.refine.random_walk import RandomWalk
run = Run(sys.argv[1])
walk = RandomWalk(run.affinity_checkpoint.path)
samples = run.dataset().split("train")[:8]
times = []
with CamReader(run.cams("train").path) as reader:
    for sample in samples:
        image = np.asarray(Image.open(sample.image).convert("RGB").resize((500, 375), Image.BILINEAR))
        cams, _ = reader.read(sample.id)
        cams = torch.nn.functional.interpolate(torch.from_numpy(cams)[None], size=(375, 500), mode="bilinear")[0]
        scores = np.concatenate([np.full((1, 375, 500), 0.25, np.float32), cams.numpy()])
        started = time.perf_counter()
        walk.refine_scores(ImageItem(sample.id, image), scores)
        times.append(time.perf_counter() - started)
print(json.dumps({"seconds_per_image": float(np.median(times)), "threads": torch.get_num_threads(),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def voc_sized(run: Path) -> dict:
    """The walk's median seconds per VOC-sized image and the child's peak RSS (affinity network included)."""
    output = subprocess.run([sys.executable, "-c", VOC_SIZED, str(run)], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    summary = {}
    for name in dict.fromkeys(n for r in runs for n in r["sets"]):
        summary[name] = {}
        for key in KEYS:
            values = [r["sets"][name][key] for r in runs if name in r["sets"] and r["sets"][name][key] is not None]
            if values:
                summary[name][key] = {"mean": statistics.fmean(values), "values": values,
                                      "sd": statistics.stdev(values) if len(values) > 1 else None}
    return summary


def table(results: dict) -> str:
    """Per regime: each mask set's mIoU, coverage and confident-pixel mIoU (mean ± sd, per seed in brackets), the
    stages' seconds (median over seeds), the walk on VOC-sized images, and the segmenters where measured."""
    lines = []
    for regime in dict.fromkeys(run["regime"] for run in results["runs"]):
        runs = sorted((run for run in results["runs"] if run["regime"] == regime), key=lambda run: run["seed"])
        seeds = ",".join(str(run["seed"]) for run in runs)
        lines += [f"Regime `{regime}`, seeds {seeds}, on {results['machine']['cpu']} "
                  f"({results['machine']['cores']} cores):", "",
                  "| mask set | mIoU (train) | coverage | confident-pixel mIoU | pseudo-label s |",
                  "|---|---|---|---|---:|"]
        for name in dict.fromkeys(name for run in runs for name in run["sets"]):
            cells = []
            for key in KEYS:
                values = [run["sets"][name][key] for run in runs
                          if name in run["sets"] and run["sets"][name][key] is not None]
                cells.append(spread(values))
            seconds = sorted(run["seconds"][f"pseudo-label-{name}"] for run in runs
                             if f"pseudo-label-{name}" in run["seconds"])
            median = f"{seconds[len(seconds) // 2]:.0f}" if seconds else "–"  # crf: made by the regime's run
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {median} |")
        lines += ["", "| affinity method | train-affinity s | walk s per VOC-sized image | peak RSS MiB |",
                  "|---|---:|---:|---:|"]
        for method in dict.fromkeys(method for method, _ in MASK_SETS.values()):
            train = sorted(run["seconds"][f"train-affinity-{method}"] for run in runs
                           if f"train-affinity-{method}" in run["seconds"])
            walks = [run[f"voc_sized_{method}"] for run in runs if f"voc_sized_{method}" in run]
            if train:
                lines.append(f"| {method} | {train[len(train) // 2]:.0f} | "
                             f"{statistics.median(w['seconds_per_image'] for w in walks):.2f} | "
                             f"{max(w['peak_rss_mib'] for w in walks):.0f} |")
        segmented = [run for run in runs if run.get("segment")]
        if segmented:
            lines += ["", "| segmenter trained on | val mIoU |", "|---|---|"]
            for name in dict.fromkeys(name for run in segmented for name in run["segment"]):
                lines.append(f"| `{name}` | {spread([run['segment'][name] for run in segmented])} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def spread(values: list[float]) -> str:
    """mIoU-like shares as % : mean ± sd (per value), or the one value."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return (f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f} ("
            + " / ".join(f"{100 * v:.1f}" for v in values) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only write the README table from the results file")
    parser.add_argument("--regime", choices=list(REGIMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--segment", default="", help="also train the segmenter on this mask set")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    args = parser.parse_args()
    if args.table:
        write_readme_table("affinity", table(json.loads(RESULTS.read_text())))
        return
    if not args.regime:
        parser.error("--regime is required (or --table)")
    if args.segment and args.segment not in MASK_SETS:
        parser.error(f"--segment takes one of {', '.join(MASK_SETS)}")
    runs = json.loads(RESULTS.read_text())["runs"] if args.resume and RESULTS.exists() else []
    done = {(r["regime"], r["seed"], bool(r.get("segment"))) for r in runs}
    for seed in (int(s) for s in args.seeds.split(",")):
        if (args.regime, seed, bool(args.segment)) in done:
            continue
        started = time.perf_counter()
        previous = next((r for r in runs if (r["regime"], r["seed"]) == (args.regime, seed)), None)
        if args.segment and previous is not None:  # its mask sets are measured: their runs are trained on as they are
            record = {**previous, "segment": segmenters(args.regime, seed, args.segment)}
            record["segment_wall_seconds"] = round(time.perf_counter() - started, 1)
        else:
            record = measure(args.regime, seed, args.segment)
            record["wall_seconds"] = round(time.perf_counter() - started, 1)
        runs = [r for r in runs if (r["regime"], r["seed"]) != (args.regime, seed)] + [record]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"machine": machine_info(), "summary": summarise(runs), "runs": runs},
                                      indent=2) + "\n")
        print(f"affinity: {args.regime} seed {seed} done -> {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
