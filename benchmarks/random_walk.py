"""The random walk's throughput: `pseudo-label --refine rw` against another checkout, and batched walks.

1. Stage, before and after: `pseudo-label --refine rw` with this checkout and with another one
   (`git worktree add DIR COMMIT`), turns alternating round by round, each in a child process with its checkout
   first on sys.path, on the same CAMs and affinity checkpoints (both methods, from `benchmarks/affinity.py`'s
   runs: runs/affinity/REGIME-seedN-{irn,psa}), on synthetic images and on VOC-sized copies (CAMs made for them
   by `infer-cam` with the run's classifier); then the masks compared (identical share).
2. Batches: `RandomWalk.refine_score_batch` on the VOC-sized images (both thresholds' stacks, as pseudo-label hands
   them), in batches of 1 and of 8, on the CPU and on CUDA where there is one: images/s and, on CUDA, peak GPU
   memory. On the CPU pseudo-label walks one image per worker process; batches are the GPU's way.

    python benchmarks/random_walk.py --against DIR [--source runs/affinity/resnet10-scratch-seed0] [--images 500]

Results: benchmarks/results/random_walk.json and the table between the `bench:random-walk` markers.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.config import InferCamConfig  # noqa: E402
from stages.core.camstore import CamReader  # noqa: E402
from stages.core.io import load_image, load_mask  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.infer_cam import infer_cam  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from subset_run import subset_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "random_walk.json"
METHODS = ("irn", "psa")
BATCHES = (1, 8)

# argv = checkout root, run folder, mask set name. Prints the stage's seconds as JSON.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from stages.config import PseudoLabelConfig
from stages.core.runs import Run
from stages.pseudo_label import pseudo_label
started = time.perf_counter()
pseudo_label(Run(sys.argv[2]), PseudoLabelConfig(refine="rw", name=sys.argv[3]), force=True)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def work_runs(work: Path, source: Path, images: int, voc_sized: int) -> dict[tuple[str, str], Run]:
    """(method, image set) → a run with the source run's first images, its classifier, CAMs and that method's
    affinity checkpoint."""
    runs = {}
    for method in METHODS:
        origin = Run(f"{source}-{method}")
        for image_set, count, voc in (("synthetic", images, False), ("voc-sized", voc_sized, True)):
            run = subset_run(work / method / image_set, origin, count, voc)
            for artifact in (origin.cam_checkpoint, origin.affinity_checkpoint):
                relative = artifact.path.relative_to(origin.root)
                (run.root / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(artifact.path, run.root / relative)
            if voc:
                infer_cam(run, InferCamConfig(split="train", scales=(1.0, 0.5, 1.5)))
            else:
                run.cams("train").path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin.cams("train").path, run.cams("train").path)
            runs[method, image_set] = run
    return runs


def stage_before_after(runs: dict[tuple[str, str], Run], trees: dict[str, Path], rounds: int) -> dict:
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for round_index in range(rounds):
        for (method, image_set), run in runs.items():
            for tree, root in trees.items():
                output = subprocess.run([sys.executable, "-c", CHILD, str(root), str(run.root), f"rw-{tree}"],
                                        check=True, capture_output=True, text=True).stdout
                value = json.loads(output.strip().splitlines()[-1])["seconds"]
                seconds.setdefault((method, image_set, tree), []).append(value)
                print(f"round {round_index + 1} {method} {image_set} {tree}: {value:.1f} s", file=sys.stderr)
    result = {}
    for (method, image_set), run in runs.items():
        before, after = (seconds[method, image_set, tree] for tree in ("before", "after"))
        names = sorted(path.name for path in run.pseudo("rw-after").path.glob("*.png"))
        same = sum(np.array_equal(load_mask(run.pseudo("rw-before").path / name),
                                  load_mask(run.pseudo("rw-after").path / name)) for name in names)
        result[f"{method} {image_set}"] = {"images": len(names), "before_seconds": before, "after_seconds": after,
                                           "speedup": statistics.median(before) / statistics.median(after),
                                           "identical_masks": same / max(len(names), 1)}
    return result


def batched(runs: dict[tuple[str, str], Run], rounds: int) -> dict:
    import torch

    from stages.config import PseudoLabelConfig
    from stages.refine import ImageItem
    from stages.refine.random_walk import RandomWalk

    config = PseudoLabelConfig()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {}
    for method in METHODS:
        run = runs[method, "voc-sized"]
        samples = run.dataset().split("train")
        with CamReader(run.cams("train").path) as reader:
            cams = [reader.read(sample.id)[0] for sample in samples]
        items = [ImageItem(sample.id, load_image(sample.image)) for sample in samples]
        stacks = [[np.concatenate([np.full((1, *image_cams.shape[1:]), threshold, np.float32), image_cams])
                   for threshold in (config.fg_threshold, config.bg_threshold)] for image_cams in cams]
        for device in devices:
            walk = RandomWalk(run.affinity_checkpoint.path, device)
            walk.refine_score_batch(items[:2], stacks[:2])  # warm-up: allocator, kernels
            for batch in BATCHES:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    for start in range(0, len(items), batch):
                        walk.refine_score_batch(items[start:start + batch], stacks[start:start + batch])
                    if device == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - started)
                entry = {"images": len(items), "seconds": times, "images_per_second": len(items) / min(times)}
                if device == "cuda":
                    entry["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
                result[f"{method} {device} batch {batch}"] = entry
                print(f"{method} {device} batch {batch}: {entry['images_per_second']:.2f} images/s", file=sys.stderr)
    return result


def table(result: dict) -> str:
    lines = ["| `pseudo-label --refine rw` | images | before s | after s | speedup | identical masks |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, entry in result["stage"].items():
        lines.append(f"| {name} | {entry['images']} | {statistics.median(entry['before_seconds']):.1f} | "
                     f"{statistics.median(entry['after_seconds']):.1f} | {entry['speedup']:.2f}x | "
                     f"{entry['identical_masks']:.1%} |")
    lines += ["", "| walk of VOC-sized images (both stacks) | images/s | peak GPU MiB |", "|---|---:|---:|"]
    for name, entry in result["batches"].items():
        peak = f"{entry['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in entry else ""
        lines.append(f"| {name} | {entry['images_per_second']:.2f} | {peak} |")
    machine = result["machine"]
    lines += ["", f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}"
              + (f", {machine['gpu']}" if machine.get("gpu") else "") + f"; against {result['against']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (before the change)")
    parser.add_argument("--source", type=Path, default=Path("runs/affinity/resnet10-scratch-seed0"),
                        help="the affinity runs, without the -irn / -psa suffix")
    parser.add_argument("--images", type=int, default=500, help="synthetic images")
    parser.add_argument("--voc-sized", type=int, default=16, help="VOC-sized images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-random-walk"), help="scratch folder")
    args = parser.parse_args()
    source = args.source if args.source.is_absolute() else ROOT / args.source
    work = args.work if args.work.is_absolute() else ROOT / args.work
    shutil.rmtree(work, ignore_errors=True)
    runs = work_runs(work, source, args.images, args.voc_sized)
    trees = {"before": args.against.resolve(), "after": ROOT}
    result = {"machine": machine_info(), "against": str(args.against), "rounds": args.rounds,
              "stage": stage_before_after(runs, trees, args.rounds), "batches": batched(runs, args.rounds)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("random-walk", table(result))
    print(table(result))


if __name__ == "__main__":
    main()
