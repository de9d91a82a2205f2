"""End-to-end benchmark on the synthetic default: runs `make all` (the pipeline as users run it), then the
fully supervised upper bound (`wsss segment --labels gt`), and writes the numbers to
`benchmarks/results/pipeline.json` and the table between the `bench:pipeline` markers in README.md.

    python benchmarks/pipeline.py --run runs/bench [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.runs import Run  # noqa: E402
from stages.results import headline  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "pipeline.json"


def sh(*command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_dir = args.run if args.run.is_absolute() else ROOT / args.run
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a benchmark measures a fresh run, never a partly reused one
    wsss = str(ROOT / ".venv" / "bin" / "wsss")

    make_all_seconds = sh("make", "all", f"RUN={run_dir}", f"SEED={args.seed}")
    upper_bound_seconds = sh(wsss, "segment", "--run", str(run_dir), "--labels", "gt", "--seed", str(args.seed))
    sh(wsss, "evaluate", "segment/gt", "--run", str(run_dir), "--split", "val")

    run = Run(run_dir)
    numbers = headline(run)
    stages = run.manifest()["stages"]
    make_all_stages = [key for key in stages if key not in ("segment/gt", "evaluate/segment-gt_val")]
    result = {
        "machine": machine_info(),
        "seed": args.seed,
        "make_all_wall_seconds": round(make_all_seconds, 1),
        # What `make all` spends outside its stages' own timings: starting Python, torch and the CLI for each of
        # its commands, and checking inputs and outputs.
        "make_all_seconds_outside_stages": round(make_all_seconds - sum(stages[k]["seconds"]
                                                                        for k in make_all_stages), 1),
        "upper_bound_wall_seconds": round(upper_bound_seconds, 1),
        "data_wait_share": {key: entry["metrics"]["data_wait_share"] for key, entry in stages.items()
                            if "data_wait_share" in entry.get("metrics", {})},
        **numbers,
        "cam_curve": json.loads(run.path("eval", "cams_train.json").read_text())["curve"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    update_readme(result)
    print(json.dumps({k: v for k, v in result.items() if k != "cam_curve"}, indent=2))


def update_readme(result: dict) -> None:
    def pct(key: str) -> str:
        return f"{100 * result[key]:.1f}" if result.get(key) is not None else "–"

    seconds = result["seconds"]
    rows = [
        ("classifier val mAP", pct("classifier_val_map"), f"train-cam {seconds.get('train-cam', 0):.0f} s"),
        (f"CAM mIoU, train (best bg threshold {result.get('cams_train_best_threshold', 0):.2f})",
         pct("cams_train_miou"), f"infer-cam {seconds.get('infer-cam/train', 0):.0f} s"),
        ("pseudo-mask mIoU, train, `--refine none`", pct("pseudo-none_train_miou"),
         f"pseudo-label {seconds.get('pseudo-label/none', 0):.0f} s"),
        ("pseudo-mask mIoU, train, `--refine crf`", pct("pseudo-crf_train_miou"),
         f"pseudo-label {seconds.get('pseudo-label/crf', 0):.0f} s"),
        ("segmenter val mIoU, trained on CRF pseudo masks", pct("segment-pseudo-crf_val_miou"),
         f"segment {seconds.get('segment/pseudo-crf', 0):.0f} s"),
        ("segmenter val mIoU, trained on ground truth (upper bound)", pct("segment-gt_val_miou"),
         f"segment {seconds.get('segment/gt', 0):.0f} s"),
        ("weak / fully supervised", f"{result['weak_over_full']:.3f}" if "weak_over_full" in result else "–", ""),
        ("`make all` wall time (after install)", f"{result['make_all_wall_seconds']:.0f} s", ""),
    ]
    table = "\n".join(["| result | value | stage time |", "|---|---:|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    note = (f"\n\nMeasured by `make bench` (seed {result['seed']}) on {result['machine']['cores']} CPU cores "
            f"({result['machine']['cpu']}), torch {result['machine']['torch']}; of `make all`'s time "
            f"{result.get('make_all_seconds_outside_stages', float('nan')):.0f} s is outside its stages (starting "
            "each command); raw numbers and the CAM threshold curve in `benchmarks/results/pipeline.json`. Times "
            "differ between machines of this kind and between sessions: compare them side by side only.")
    write_readme_table("pipeline", table + note)


if __name__ == "__main__":
    main()
