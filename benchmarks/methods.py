"""Compare CAM methods over several seeds on the synthetic benchmark: CAM, pseudo-mask and segmenter mIoU,
and train-cam time per epoch, each as mean and spread. Results: `benchmarks/results/methods.json`.

    python benchmarks/methods.py --methods baseline,seam --seeds 0,1,2 [--regime lite0-imagenet-224]
        [--stop-after pseudo] [--raw-cams] [--fitted-thresholds] [--saliency] [--refine crf,saliency+crf]
        [--segment-on crf]

`--regime` (one of benchmarks/regimes.py's) adds that regime's data, train-cam and segment options to every run
and keeps its runs and results apart: `runs/methods-<regime>/`, `benchmarks/results/methods-<regime>.json` and the
README markers `bench:methods-<regime>` (the default regime, resnet10-scratch, keeps `runs/methods/`,
`methods.json` and `bench:methods`).
Each (method, seed) runs in its own folder `runs/methods/<method>-s<seed>/` with the pipeline of `make all`
(CAM inference at 1.0/0.5/1.5 + flip, IRN thresholds, CRF pseudo masks, segmenter on them); all runs share one
generated dataset. A finished stage is not re-run (its manifest entry exists), so the script can be resumed; an
interrupted training stage continues after its last finished epoch (`--resume`, which gives the result of an
uninterrupted run).
Variants of a method are named `NAME:KEY=VALUE;KEY=VALUE`: each KEY=VALUE goes to `train-cam -o KEY=VALUE`,
except keys spelled as train-cam flags (`--output-stride=8`), which are passed as `--output-stride 8`.
`--saliency` computes the built-in saliency maps of the shared dataset once (run `runs/methods/saliency`, which
also records their quality) and passes them to train-cam (L2G shape transfer) and pseudo-label (`--refine saliency`).
Under the table, each method of VERDICTS against its base seed by seed (`seed_stats.py`'s paired t-test); `--table`
writes both from the results file without running anything.
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

from stages.registry import CAM_METHODS  # noqa: E402
from readme_table import write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from seed_stats import difference_text, paired_difference, verdict_text  # noqa: E402

WSSS = str(ROOT / ".venv" / "bin" / "wsss")
DEFAULT_REGIME = "resnet10-scratch"
COLUMNS = (("cams_train_miou", "CAM (train)"), ("cams-raw_train_miou", "raw CAM (train)"),
           ("pseudo-crf_train_miou", "pseudo masks, CRF (train)"),
           ("pseudo-saliency_train_miou", "pseudo masks, saliency (train)"),
           ("pseudo-saliency+crf_train_miou", "pseudo masks, saliency + CRF (train)"),
           ("pseudo-crf-raw_train_miou", "pseudo masks from raw CAMs, CRF (train)"),
           ("pseudo-crf-fitted_train_miou", "pseudo masks, CRF, fitted fg thr. (train)"),
           ("pseudo-crf-raw-fitted_train_miou", "pseudo masks from raw CAMs, CRF, fitted fg thr. (train)"),
           ("pseudo-crf_train_coverage", "CRF pseudo masks: coverage"),
           ("pseudo-crf_train_miou_confident", "CRF pseudo masks: confident-pixel mIoU"),
           ("segment-pseudo-crf_val_miou", "segmenter (val)"),
           ("segment-pseudo-saliency+crf_val_miou", "segmenter on saliency + CRF masks (val)"))
# README's Methods section shows this regime's results as a compact table: these columns, mean ± sd only, and the
# verdicts on the CAMs alone (the full tables stay in benchmarks/README.md)
README_REGIME = "lite0-imagenet-224"
README_COLUMNS = (("cams_train_miou", "CAM (train)"),
                  ("pseudo-crf_train_miou", "pseudo masks, CRF at IRN's thresholds (train)"),
                  ("pseudo-crf-fitted_train_miou", "same, fg threshold fitted on train (train)"),
                  ("segment-pseudo-crf_val_miou", "segmenter on the CRF masks (val)"))
# (key, title, format) of the numbers given as the median over seeds
MEDIAN_COLUMNS = (("train_cam_epoch_seconds", "train-cam s/epoch", ".1f"),
                  ("train_cam_peak_rss_mib", "train-cam peak MiB", ".0f"))
STAGES = ("cam", "pseudo", "segment")
# Each verdict: a method (spec; "(raw CAMs)" reads its raw-CAM numbers), the base it is compared with seed by seed
# (spelled the same way), and what its paper says the method does to the CAMs. The verdict is on the CAM mIoU; the
# other measures' paired differences are shown beside it.
VERDICTS = (("seam", "baseline", "SEAM raises CAM mIoU over its base"),
            ("seam (raw CAMs)", "baseline", "SEAM's equivariance training raises the raw CAMs too"),
            ("baseline:--aux=ppc", "baseline", "PPC raises CAM mIoU over its base"),
            ("seam:--aux=ppc", "seam", "PPC raises CAM mIoU over its base"),
            ("seam:--aux=ppc (raw CAMs)", "seam (raw CAMs)", "PPC raises SEAM's raw CAMs too"),
            ("l2g", "baseline", "L2G raises CAM mIoU over its base"),
            ("l2g:shape_transfer=false", "baseline", "local-to-global transfer alone raises CAM mIoU"),
            ("l2g", "l2g:shape_transfer=false", "shape transfer raises CAM mIoU further"))
# (title, key of the method's number, key of the same number made from raw CAMs; None: there is none)
VERDICT_MEASURES = (("CAM", "cams_train_miou", "cams-raw_train_miou"),
                    ("pseudo masks, CRF", "pseudo-crf_train_miou", "pseudo-crf-raw_train_miou"),
                    ("pseudo masks, CRF, fitted thr.", "pseudo-crf-fitted_train_miou",
                     "pseudo-crf-raw-fitted_train_miou"),
                    ("segmenter", "segment-pseudo-crf_val_miou", None))


def wsss(*args: str) -> None:
    subprocess.run([WSSS, *args], cwd=ROOT, check=True)


def done(run: Path, key: str) -> bool:
    manifest = run / "manifest.json"
    return manifest.exists() and key in json.loads(manifest.read_text())["stages"]


def fitted_pseudo_masks(run: Path, cams: str) -> None:
    """Pseudo masks whose foreground threshold is the CAMs' best background threshold on train (read from
    eval/<cams>_train.json, so it is fitted on ground truth), background threshold IRN's 0.05: set
    `crf-fitted` (or `crf-raw-fitted`). Shows how much of a method's pseudo-mask score is IRN's fixed 0.30
    fitting or not fitting its CAMs' calibration."""
    mask_set = "crf-raw-fitted" if cams == "cams-raw" else "crf-fitted"
    if done(run, f"evaluate/pseudo-{mask_set}_train"):
        return
    threshold = json.loads((run / "eval" / f"{cams}_train.json").read_text())["best_threshold"]
    raw = ["--raw"] if cams == "cams-raw" else []
    wsss("pseudo-label", "--run", str(run), "--refine", "crf", *raw, "--fg-threshold", str(threshold),
         "--name", mask_set)
    wsss("evaluate", f"pseudo/{mask_set}", "--run", str(run), "--split", "train")


def shared_saliency(runs: Path, data: Path, data_options: list[str]) -> Path:
    """The built-in saliency maps of the shared dataset's train split, computed once; returns their directory."""
    run = runs / "saliency"
    if not done(run, "data"):
        wsss("data", "synth", "--run", str(run), "--out", str(data), *data_options)
    if not done(run, "saliency/train"):
        wsss("saliency", "--run", str(run), "--split", "train")
    return run / "saliency"


def run_pipeline(run: Path, method: str, options: list[str], seed: int, data: Path, stop_after: str,
                 raw_cams: bool, fitted: bool, saliency: Path | None, refine_sets: list[str],
                 segment_on: str, regime: str = DEFAULT_REGIME) -> None:
    from regimes import REGIMES  # here: regimes.py imports this module

    data_options, cam_options, segment_options = (text.split() for text in REGIMES[regime])
    run_args = ["--run", str(run)]
    saliency_args = ["--saliency", str(saliency)] if saliency else []
    if not done(run, "data"):
        wsss("data", "synth", *run_args, "--out", str(data), *data_options)
    if not done(run, "train-cam"):
        option_args = [arg for option in options
                       for arg in (option.split("=", 1) if option.startswith("--") else ("-o", option))]
        wsss("train-cam", *run_args, "--method", method, *cam_options, *option_args, *saliency_args, "--seed",
             str(seed), "--resume")
    if not done(run, "evaluate/cams_train"):
        wsss("infer-cam", *run_args, "--split", "train", "--scales", "1.0,0.5,1.5")
        wsss("evaluate", "cams", *run_args, "--split", "train")
    raw_cams = raw_cams and hasattr(CAM_METHODS.get(method), "raw_cams")  # only methods that refine their CAMs
    if raw_cams and not done(run, "evaluate/cams-raw_train"):
        wsss("infer-cam", *run_args, "--split", "train", "--scales", "1.0,0.5,1.5", "--raw")
        wsss("evaluate", "cams-raw", *run_args, "--split", "train")
    if stop_after == "cam":
        return
    for mask_set in refine_sets:
        if not done(run, f"evaluate/pseudo-{mask_set}_train"):
            uses_saliency = "saliency" in mask_set.split("+")
            wsss("pseudo-label", *run_args, "--refine", mask_set.replace("+", ","), *(saliency_args if uses_saliency else []))
            wsss("evaluate", f"pseudo/{mask_set}", *run_args, "--split", "train")
    if raw_cams and not done(run, "evaluate/pseudo-crf-raw_train"):
        wsss("pseudo-label", *run_args, "--refine", "crf", "--raw")
        wsss("evaluate", "pseudo/crf-raw", *run_args, "--split", "train")
    if fitted:
        for cams in ("cams", "cams-raw") if raw_cams else ("cams",):
            fitted_pseudo_masks(run, cams)
    if stop_after == "pseudo":
        return
    if not done(run, f"evaluate/segment-pseudo-{segment_on}_val"):
        wsss("segment", *run_args, "--labels", "pseudo", "--pseudo", segment_on, "--seed", str(seed),
             *segment_options, "--resume")
        wsss("evaluate", f"segment/pseudo-{segment_on}", *run_args, "--split", "val")


def collect(run: Path) -> dict:
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    numbers = {"train_cam_epoch_seconds": stages["train-cam"]["metrics"]["epoch_seconds"],
               "train_cam_peak_rss_mib": stages["train-cam"].get("peak_rss_mib"),
               "classifier_val_map": stages["train-cam"]["metrics"].get("val_map")}
    for name in ("cams_train", "cams-raw_train", "pseudo-crf_train", "pseudo-saliency_train", "pseudo-saliency+crf_train",
                 "pseudo-crf-raw_train", "pseudo-crf-fitted_train", "pseudo-crf-raw-fitted_train",
                 "segment-pseudo-crf_val", "segment-pseudo-saliency+crf_val"):
        path = run / "eval" / f"{name}.json"
        if path.exists():
            result = json.loads(path.read_text())
            numbers[f"{name}_miou"] = result["miou"]
            for key in ("coverage", "miou_confident"):
                if name.startswith("pseudo-") and result.get(key) is not None:
                    numbers[f"{name}_{key}"] = result[key]
            if "best_threshold" in result:
                numbers[f"{name}_threshold"] = result["best_threshold"]
            numbers.update({f"{name}_{kind}": share for kind, share in result.get("errors", {}).items()})
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
    from regimes import REGIMES  # here: regimes.py imports this module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="baseline", help="comma list; a variant is NAME:KEY=VALUE;KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stop-after", choices=STAGES, default="segment")
    parser.add_argument("--raw-cams", action="store_true", help="methods that refine their CAMs: also score the raw CAMs and pseudo masks made from them")
    parser.add_argument("--fitted-thresholds", action="store_true",
                        help="also make pseudo masks with the foreground threshold set to the CAMs' best "
                             "background threshold on train (fitted on ground truth)")
    parser.add_argument("--saliency", action="store_true",
                        help="compute the built-in saliency maps once and give them to train-cam and pseudo-label")
    parser.add_argument("--refine", default="crf", help="comma list of pseudo-mask sets to make and score, each "
                                                        "a refinement spelled with + (crf, saliency, saliency+crf)")
    parser.add_argument("--segment-on", default="crf", help="the pseudo-mask set the segmenter trains on")
    parser.add_argument("--regime", choices=list(REGIMES), default=DEFAULT_REGIME,
                        help="benchmarks/regimes.py's regime: its data, train-cam and segment options")
    parser.add_argument("--runs", type=Path, help="default: runs/methods (runs/methods-REGIME)")
    parser.add_argument("--table", action="store_true",
                        help="run nothing: write the table and the verdicts from the results file")
    args = parser.parse_args()
    suffix = "" if args.regime == DEFAULT_REGIME else f"-{args.regime}"
    results_path = ROOT / "benchmarks" / "results" / f"methods{suffix}.json"
    if args.table:
        write_tables(json.loads(results_path.read_text()), suffix)
        return
    runs = args.runs or Path(f"runs/methods{suffix}")
    runs = runs if runs.is_absolute() else ROOT / runs
    seeds = [int(seed) for seed in args.seeds.split(",")]
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    refine_sets = [name for name in args.refine.split(",") if name]
    if any("saliency" in name.split("+") for name in refine_sets) and not args.saliency:
        parser.error("pseudo-mask sets with saliency need --saliency")
    saliency = shared_saliency(runs, runs / "synth", REGIMES[args.regime][0].split()) if args.saliency else None
    if saliency:
        info = json.loads((saliency / "info-train.json").read_text())
        results["saliency (built-in mbd, train)"] = {"mae": info.get("mae"), "max_f": info.get("max_f")}
    for spec in args.methods.split(","):
        method, _, option_text = spec.partition(":")
        options = [option for option in option_text.split(";") if option]
        per_seed = []
        for seed in seeds:
            run = run_folder(runs, spec, seed)
            run_pipeline(run, method, options, seed, runs / "synth", args.stop_after, args.raw_cams,
                         args.fitted_thresholds, saliency, refine_sets, args.segment_on, args.regime)
            per_seed.append({"seed": seed, **collect(run)})
        results[spec] = {"seeds": per_seed, "summary": summarise([{k: v for k, v in s.items() if k != "seed"}
                                                                  for s in per_seed])}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    write_tables(results, suffix)


def run_name(spec: str) -> str:
    """A method variant spelled as a folder name: `seam:--aux=ppc` → `seam_--aux-ppc`."""
    return spec.replace(':', '_').replace(';', '_').replace('=', '-')


def run_folder(runs: Path, spec: str, seed: int) -> Path:
    """Where a method variant's run with one seed lives: `seam:--aux=ppc`, seed 1 → `runs/seam_--aux-ppc-s1`."""
    return runs / f"{run_name(spec)}-s{seed}"


def write_tables(results: dict, suffix: str) -> None:
    text = results_table(results)
    verdicts = verdict_table(results)
    if verdicts:
        text += ("\n\nEach method against its base, seed by seed (method minus base, mIoU points: mean ± sd of the "
                 "paired differences, per seed in brackets; **bold**: beyond the seed spread, a paired t-test at 5%, "
                 "`benchmarks/seed_stats.py`). The verdict is on the CAMs, what the papers claim.\n\n" + verdicts)
    print(text, file=sys.stderr)
    write_readme_table(f"methods{suffix}", text)
    if suffix == f"-{README_REGIME}":
        write_readme_table(f"methods-summary{suffix}", results_table(results, README_COLUMNS, per_seed_values=False)
                           + "\n\n" + verdict_table(results, VERDICT_MEASURES[:1]))


def results_table(results: dict, columns: tuple = COLUMNS, per_seed_values: bool = True) -> str:
    """Markdown: each number of `columns` (mIoU, coverage: %) as mean ± sample std over the seeds, with the
    per-seed values in brackets when `per_seed_values`, and train-cam's seconds per epoch and peak memory (median
    over seeds). A column no method has a number for is left out."""
    results = {spec: result for spec, result in results.items() if "summary" in result}
    columns = [(key, title) for key, title in columns if any(key in r["summary"] for r in results.values())]
    medians = [(key, title, spec) for key, title, spec in MEDIAN_COLUMNS
               if any(median_of(r, key, spec) != "–" for r in results.values())]
    header = ("| method | seeds | " + " | ".join([title for _, title in columns] + [title for _, title, _ in medians])
              + " |")
    lines = [header, "|---" * (len(columns) + len(medians) + 2) + "|"]
    for spec, result in results.items():
        summary, seeds = result["summary"], [s["seed"] for s in result["seeds"]]
        cells = []
        for key, _ in columns:
            s = summary.get(key)
            values = " / ".join(f"{100 * seed[key]:.1f}" for seed in result["seeds"] if seed.get(key) is not None)
            brackets = f" ({values})" if per_seed_values else ""
            cells.append("–" if not s else f"{100 * s['mean']:.1f}" if s["n"] == 1
                         else f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}{brackets}")
        cells += [median_of(result, key, number_format) for key, _, number_format in medians]
        lines.append(f"| {spec} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_table(results: dict, measures: tuple = VERDICT_MEASURES) -> str:
    """Markdown: one row per VERDICTS entry whose method and base both have results (empty when none has), with the
    paired difference of each of `measures`; the first, the CAMs, carries the verdict."""
    def per_seed(name: str, key: str, raw_key: str | None) -> dict[int, float]:
        """A method's number per seed; spelled "SPEC (raw CAMs)", its raw CAMs' number."""
        key = raw_key if name.endswith(" (raw CAMs)") else key
        seeds = results.get(name.removesuffix(" (raw CAMs)"), {}).get("seeds", [])
        return {s["seed"]: s[key] for s in seeds if key is not None and s.get(key) is not None}

    lines = []
    for method, base, claim in VERDICTS:
        changes = [paired_difference(per_seed(method, key, raw_key), per_seed(base, key, raw_key))
                   for _, key, raw_key in measures]
        if changes[0] is not None:
            lines.append(f"| {method} | {base} | {claim} | " + " | ".join(map(difference_text, changes))
                         + f" | {verdict_text(changes[0])} |")
    if not lines:
        return ""
    header = ("| method | against | the paper's claim | " + " | ".join(f"{title} change" for title, *_ in measures)
              + " | in the paper's direction? |")
    return "\n".join([header, "|---" * (len(measures) + 4) + "|", *lines])


def median_of(result: dict, key: str, spec: str) -> str:
    values = sorted(seed[key] for seed in result["seeds"] if seed.get(key) is not None)
    return format(values[len(values) // 2], spec) if values else "–"


if __name__ == "__main__":
    main()
