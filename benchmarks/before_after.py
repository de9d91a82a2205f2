"""The inference stages of this checkout against another one (`git worktree add DIR COMMIT`), for a throughput
change that must keep results: `infer-cam` (make all's scales, float32 and the default precision) and the
segmenter's prediction (`segment --predict`), each checkout's turn alternating round by round, on the same images
and checkpoints; then their outputs compared: CAM values (equal share, largest difference, labels changed at the
0.30 foreground threshold) and masks (identical share).

    python benchmarks/before_after.py --against /tmp/before --run runs/bench [--images 256] [--voc-sized 24]

The run needs cam/checkpoint.pt and segment/pseudo-crf/checkpoint.pt (`make bench`). Both checkouts run with this
interpreter. Results: benchmarks/results/before_after.json and the table between the `bench:before-after` markers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.camstore import CamReader  # noqa: E402
from stages.core.io import load_mask  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from subset_run import add_sample_options, sample_paths, subset_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "before_after.json"
FG_THRESHOLD = 0.30

# Run in a child process with a checkout's root first on sys.path: argv = root, work folder, segmenter checkpoint,
# count of images to predict. Prints {name: seconds} as JSON.
CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from stages.config import InferCamConfig, SegmentConfig
from stages.core.checkpoint import load_checkpoint
from stages.core.distributed import processes
from stages.core.runs import Run
from stages.infer_cam import infer_cam
from stages.predict import _segmenter
from stages.segment import predict
work = Path(sys.argv[2])
seconds = {}
for name in ("synthetic", "voc-sized"):
    bench = Run(work / name)
    for amp in (False, True):
        started = time.perf_counter()
        infer_cam(bench, InferCamConfig(split="train", scales=(1.0, 0.5, 1.5), amp=amp), force=True)
        seconds[f"infer-cam {name} {'default' if amp else 'float32'}"] = time.perf_counter() - started
        shutil.copy(bench.path("cams", "train.h5"), work / f"{name}-amp{int(amp)}.h5")
    model = _segmenter(load_checkpoint(sys.argv[3], "segmenter"), sys.argv[3]).to(memory_format=torch.channels_last)
    out = work / f"masks-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.perf_counter()
    predict(model, bench.dataset().split("train"), out, set(), SegmentConfig(), torch.device("cpu"), processes())
    seconds[f"segment --predict {name}"] = time.perf_counter() - started
print(json.dumps(seconds))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (before the change)")
    add_sample_options(parser, images=256, voc_sized=24, work="runs/bench-before-after")
    args = parser.parse_args()
    run, work = sample_paths(args)
    trees = {"before": args.against.resolve(), "after": ROOT}
    for tree in trees:
        for name, count, voc_sized in (("synthetic", args.images, False), ("voc-sized", args.voc_sized, True)):
            bench = subset_run(work / tree / name, run, count, voc_sized)
            bench.path("cam").mkdir(exist_ok=True)
            shutil.copy(run.path("cam", "checkpoint.pt"), bench.path("cam", "checkpoint.pt"))
    segmenter = str(run.path("segment", "pseudo-crf", "checkpoint.pt"))
    seconds: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    for round_index in range(args.rounds):
        for tree, root in trees.items():
            output = subprocess.run([sys.executable, "-c", CHILD, str(root), str(work / tree), segmenter],
                                    check=True, capture_output=True, text=True).stdout
            for name, value in json.loads(output.strip().splitlines()[-1]).items():
                seconds[tree].setdefault(name, []).append(value)
            print(f"round {round_index + 1} {tree}: {output.strip().splitlines()[-1]}", file=sys.stderr)
    result = {"machine": machine_info(), "against": str(args.against), "rounds": args.rounds, "stages": {}}
    for name in seconds["after"]:
        before, after = statistics.median(seconds["before"][name]), statistics.median(seconds["after"][name])
        image_set = next(image_set for image_set in ("synthetic", "voc-sized") if image_set in name.split())
        if name.startswith("infer-cam"):
            amp = int(name.endswith("default"))
            agreement = compare_cams(work / "before" / f"{image_set}-amp{amp}.h5",
                                     work / "after" / f"{image_set}-amp{amp}.h5")
        else:
            agreement = compare_masks(work / "before" / f"masks-{image_set}", work / "after" / f"masks-{image_set}")
        result["stages"][name] = {"before_seconds": seconds["before"][name], "after_seconds": seconds["after"][name],
                                  "speedup": before / after, **agreement}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("before-after", table(result))
    print(table(result))


def compare_cams(before: Path, after: Path) -> dict:
    equal = values = changed = pixels = 0
    largest = 0.0
    with CamReader(before) as old, CamReader(after) as new:
        ids = old.ids()
        assert ids == new.ids()
        for image_id in ids:
            a, _ = old.read(image_id)
            b, _ = new.read(image_id)
            equal += int((a == b).sum())
            values += a.size
            if a.size:
                largest = max(largest, float(np.abs(a - b).max()))
                threshold = np.full((1, *a.shape[1:]), FG_THRESHOLD, np.float32)
                changed += int((np.concatenate([threshold, a]).argmax(0)
                                != np.concatenate([threshold, b]).argmax(0)).sum())
                pixels += a.shape[1] * a.shape[2]
    return {"images": len(ids), "equal_share": equal / values, "max_abs_diff": largest,
            "label_changes_at_fg_threshold": changed / max(pixels, 1)}


def compare_masks(before: Path, after: Path) -> dict:
    names = sorted(path.name for path in before.glob("*.png"))
    assert names == sorted(path.name for path in after.glob("*.png"))
    same = sum(np.array_equal(load_mask(before / name), load_mask(after / name)) for name in names)
    return {"images": len(names), "equal_share": same / len(names)}


def table(result: dict) -> str:
    lines = [f"{result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']}; "
             f"median of {result['rounds']} rounds, checkouts alternating (`python benchmarks/before_after.py "
             f"--against {result['against']}`).",
             "",
             "| stage, images, precision | before s | after s | speedup | outputs that differ | largest difference | "
             "labels changed at 0.30 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["stages"].items():
        cams = "max_abs_diff" in row
        lines.append(f"| {name} ({row['images']}) | {statistics.median(row['before_seconds']):.2f} | "
                     f"{statistics.median(row['after_seconds']):.2f} | {row['speedup']:.2f}x | "
                     f"{1 - row['equal_share']:.1e} {'of values' if cams else 'of masks'} | "
                     + (f"{row['max_abs_diff']:.1e} | {100 * row['label_changes_at_fg_threshold']:.4f}% |" if cams
                        else "– | – |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
