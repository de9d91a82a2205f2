"""Memory-bank methods over several seeds on the synthetic benchmark: the segmenter with and without cross-image
pixel contrast (`segment --contrast memory`) on the same pseudo masks and on ground truth, and MCIC
(`segment --method mcic`, from image labels and saliency) against the two-stage pipeline.
Results: `benchmarks/results/memory_methods.json` and the table in benchmarks/README.md `bench:memory-methods`.

    python benchmarks/memory_methods.py --seeds 0,1,2 [--variants pseudo-crf-memory,mcic,...]
        [--contrast-option pixel_memory=1000 ...] [--regime lite0-imagenet-224] [--method seam:--aux=ppc]

Each seed works in the methods benchmark's `runs/methods/baseline-s<seed>/` (run `benchmarks/methods.py
--methods baseline --seeds ...` first): its CRF pseudo masks and its segmenter on them (`segment/pseudo-crf`,
same code path, same seed) are the two-stage pipeline this compares with; `--method` works in another method's
runs instead (its CRF pseudo masks, when they beat the baseline's) and adds `-on-<its run name>` to the results
file and markers. MCIC reads the shared dataset's built-in saliency maps (`runs/methods/saliency/saliency`, made
by `methods.py --saliency`). Finished stages are not re-run, so the script can be resumed. `--regime` (one of
benchmarks/regimes.py's) works in that regime's methods runs (`runs/methods-<regime>/`, from `methods.py
--regime`), adds its segment options, and writes
`memory_methods-<regime>.json` and the markers `bench:memory-methods-<regime>`. Under the table, each variant of
VERDICTS against the one it changes, seed by seed (`seed_stats.py`'s paired t-test); `--table` writes both from the
results file without running anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from readme_table import write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from seed_stats import difference_text, paired_difference, verdict_text  # noqa: E402

WSSS = str(ROOT / ".venv" / "bin" / "wsss")
DEFAULT_REGIME = "resnet10-scratch"
# variant → (segment tag, extra `wsss segment` arguments; CONTRAST stands for the contrast options, SALIENCY for
# the saliency maps of the regime's methods runs)
VARIANTS = {
    "pseudo-crf": ("pseudo-crf", ["--labels", "pseudo", "--pseudo", "crf"]),
    "pseudo-crf-memory": ("pseudo-crf-memory", ["--labels", "pseudo", "--pseudo", "crf", "--contrast", "memory",
                                                "CONTRAST"]),
    "gt": ("gt", ["--labels", "gt"]),
    "gt-memory": ("gt-memory", ["--labels", "gt", "--contrast", "memory", "CONTRAST"]),
    "mcic": ("mcic", ["--method", "mcic", "--saliency", "SALIENCY"]),
    "pseudo-mcic": ("pseudo-mcic", ["--labels", "pseudo", "--pseudo", "mcic"]),  # second round on MCIC's seeds
}
NAMES = {"pseudo-crf": "segmenter on CRF pseudo masks", "pseudo-crf-memory": "same + memory contrast",
         "gt": "segmenter on ground truth", "gt-memory": "same + memory contrast",
         "mcic": "MCIC (end to end)", "pseudo-mcic": "segmenter on MCIC's seeds (2nd round)"}

# Each verdict: a variant, the variant it is compared with seed by seed (same run folder), what its paper claims.
VERDICTS = (("pseudo-crf-memory", "pseudo-crf", "memory contrast raises the segmenter (on pseudo masks)"),
            ("gt-memory", "gt", "memory contrast raises the segmenter on ground truth too"),
            ("mcic", "pseudo-crf", "MCIC, end to end, matches or beats the two-stage chain"),
            ("pseudo-mcic", "pseudo-crf", "a second round on MCIC's seeds beats the two-stage chain"))


def wsss(*args: str) -> None:
    subprocess.run([WSSS, *args], cwd=ROOT, check=True)


def stages_of(run: Path) -> dict:
    manifest = run / "manifest.json"
    return json.loads(manifest.read_text())["stages"] if manifest.exists() else {}


def run_variant(run: Path, variant: str, seed: int, contrast_options: list[str], segment_options: list[str]) -> None:
    tag, extra = VARIANTS[variant]
    if f"evaluate/segment-{tag}_val" in stages_of(run):
        return
    contrast = [a for option in contrast_options for a in ("--contrast-option", option)]
    saliency = [str(run.parent / "saliency" / "saliency")]
    args = [arg for item in extra
            for arg in {"CONTRAST": contrast, "SALIENCY": saliency}.get(item, [item])]
    wsss("segment", "--run", str(run), *args, "--seed", str(seed), *segment_options, "--resume")  # see methods.py
    wsss("evaluate", f"segment/{tag}", "--run", str(run), "--split", "val")
    if variant == "mcic":
        wsss("evaluate", "pseudo/mcic", "--run", str(run), "--split", "train")


def collect(run: Path) -> dict:
    stages = stages_of(run)
    numbers = {}
    for variant, (tag, _) in VARIANTS.items():
        evaluation = run / "eval" / f"segment-{tag}_val.json"
        if evaluation.exists():
            numbers[f"{variant}_val_miou"] = json.loads(evaluation.read_text())["miou"]
            segment = stages[f"segment/{tag}"]
            numbers[f"{variant}_epoch_seconds"] = segment["metrics"]["epoch_seconds"]
            if segment.get("peak_rss_mib") is not None:
                numbers[f"{variant}_peak_rss_mib"] = segment["peak_rss_mib"]
    seeds = run / "eval" / "pseudo-mcic_train.json"
    if seeds.exists():
        numbers["mcic_seeds_train_miou"] = json.loads(seeds.read_text())["miou"]
        numbers["mcic_seeds_ignored_fraction"] = stages["pseudo-label/mcic"]["metrics"]["ignored_fraction"]
    crf = run / "eval" / "pseudo-crf_train.json"
    if crf.exists():
        numbers["pseudo_crf_train_miou"] = json.loads(crf.read_text())["miou"]
    return numbers


def summarise(per_seed: list[dict]) -> dict:
    summary = {}
    for key in sorted({k for numbers in per_seed for k in numbers}):
        values = [numbers[key] for numbers in per_seed if key in numbers]
        summary[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return summary


def table(summary: dict) -> str:
    def cell(key: str, scale: float = 100.0, digits: int = 1) -> str:
        if key not in summary:
            return "–"
        entry = summary[key]
        return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f} (n={entry['n']})"
    lines = ["| segmenter | val mIoU % | s / epoch | peak MiB |", "|---|---|---|---|"]
    for variant in VARIANTS:
        lines.append(f"| {NAMES[variant]} | {cell(f'{variant}_val_miou')} | "
                     f"{cell(f'{variant}_epoch_seconds', 1.0)} | {cell(f'{variant}_peak_rss_mib', 1.0, 0)} |")
    lines.append(f"\nMCIC's seeds on train: mIoU {cell('mcic_seeds_train_miou')} %, ignored "
                 f"{cell('mcic_seeds_ignored_fraction')} % (CRF pseudo masks: {cell('pseudo_crf_train_miou')} %).")
    return "\n".join(lines)


def verdict_table(per_seed: dict) -> str:
    """Markdown: each VERDICTS entry with both sides measured, as the paired difference of val mIoU over the seeds
    (**bold**: beyond the seed spread, a paired t-test at 5%, `benchmarks/seed_stats.py`); empty when none is."""
    def values(variant: str) -> dict[int, float]:
        return {int(seed): numbers[f"{variant}_val_miou"] for seed, numbers in per_seed.items()
                if f"{variant}_val_miou" in numbers}

    lines = []
    for variant, base, claim in VERDICTS:
        change = paired_difference(values(variant), values(base))
        if change is None:
            continue
        lines.append(f"| {NAMES[variant]} | {NAMES[base]} | {claim} | {difference_text(change)} | "
                     f"{verdict_text(change)} |")
    if not lines:
        return ""
    return "\n".join(["| segmenter | against | the paper's claim | val mIoU change | in the paper's direction? |",
                      "|---|---|---|---|---|", *lines])


def main() -> None:
    from methods import run_folder, run_name
    from regimes import REGIMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--contrast-option", action="append", default=[],
                        help="KEY=VALUE passed to --contrast-option of the memory-contrast variants")
    parser.add_argument("--regime", choices=list(REGIMES), default=DEFAULT_REGIME,
                        help="benchmarks/regimes.py's regime: its methods runs and segment options")
    parser.add_argument("--method", default="baseline",
                        help="the methods benchmark's variant (as spelled there) whose runs and CRF pseudo masks to "
                             "train in; another than baseline adds -on-<its run name> to the results file and markers")
    parser.add_argument("--table", action="store_true",
                        help="run nothing: write the table and the verdicts from the results file")
    args = parser.parse_args()
    regime_suffix = "" if args.regime == DEFAULT_REGIME else f"-{args.regime}"
    runs = ROOT / "runs" / f"methods{regime_suffix}"
    suffix = regime_suffix + ("" if args.method == "baseline" else f"-on-{run_name(args.method)}")
    results_path = ROOT / "benchmarks" / "results" / f"memory_methods{suffix}.json"
    if args.table:
        results = json.loads(results_path.read_text())
        write_tables(results["summary"], results["per_seed"], suffix)
        return
    segment_options = REGIMES[args.regime][2].split()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown} (choose from {', '.join(VARIANTS)})")
    for variant in variants:  # variant-major: each comparison gets all its seeds before the next one starts
        for seed in seeds:
            run = run_folder(runs, args.method, seed)
            if not (run / "pseudo" / "crf").is_dir():
                sys.exit(f"{run} has no CRF pseudo masks: run benchmarks/methods.py --methods {args.method}"
                         f"{' --regime ' + args.regime if regime_suffix else ''} first")
            run_variant(run, variant, seed, args.contrast_option, segment_options)
    per_seed = {seed: collect(run_folder(runs, args.method, seed)) for seed in seeds}
    summary = summarise(list(per_seed.values()))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({"regime": args.regime, "method": args.method, "seeds": seeds,
                                        "contrast_options": args.contrast_option,
                                        "per_seed": per_seed, "summary": summary}, indent=2) + "\n")
    write_tables(summary, per_seed, suffix)


def write_tables(summary: dict, per_seed: dict, suffix: str) -> None:
    text = table(summary)
    verdicts = verdict_table(per_seed)
    if verdicts:
        text += "\n\nEach segmenter against the one it changes, seed by seed (val mIoU points):\n\n" + verdicts
    write_readme_table(f"memory-methods{suffix}", text)
    print(text)


if __name__ == "__main__":
    main()
