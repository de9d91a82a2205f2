"""Time and memory of one segmenter training step (forward, losses, backward, SGD step) for the memory-bank
methods against plain DeepLab training, measured side by side in one process: the specs take turns, round after
round, and each spec's median over rounds is compared with plain DeepLab's. Results:
`benchmarks/results/segment_step.json` and the table in benchmarks/README.md `bench:segment-step`.

    python benchmarks/segment_step.py [--specs deeplab,memory-1000,memory,mcic] [--rounds 5] [--steps 5]

Specs: `deeplab` (cross-entropy on masks), `memory` (+ cross-image pixel contrast, default memory of 5000 pixels
and 5000 segments per class), `memory-N` (the same with N of each), `mcic`. The memories start full (random unit
vectors), the steady state of a long run. The batch is the stage's default shape (16 crops of 112 px, 9 classes
with background), each image background with two class rectangles. Memory: the bank's own size, and the peak
resident memory (VmHWM) of a process that builds only that spec and runs 5 steps, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.device import autocast, resolve_device  # noqa: E402
from stages.core.training import make_optimizer  # noqa: E402
from stages.methods import build_segment_method  # noqa: E402
from stages.models.deeplab import DeepLab  # noqa: E402
from stages.config import SegmentConfig  # noqa: E402
from readme_table import write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import interleaved, timed  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "segment_step.json"
NUM_CLASSES = 9  # with background, as the synthetic benchmark


def make_batch(config: SegmentConfig, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = config.crop_size
    masks = torch.zeros(config.batch_size, size, size, dtype=torch.long)
    for image in range(config.batch_size):
        first, second = torch.randint(1, NUM_CLASSES, (2,), generator=generator).tolist()
        masks[image, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = first
        masks[image, : size // 4, : size // 3] = second
    labels = torch.zeros(config.batch_size, NUM_CLASSES - 1)
    for image in range(config.batch_size):
        labels[image, masks[image].unique()[1:] - 1] = 1
    return {"image": torch.rand(config.batch_size, 3, size, size, generator=generator).to(device),
            "mask": masks.to(device), "labels": labels.to(device),
            "saliency": (masks > 0).float().to(device)}


def build(spec: str, device: torch.device):
    """(step closure, memory-bank bytes) for `spec`, its memory filled."""
    config = SegmentConfig()
    name, _, size = spec.partition("-")
    method = "mcic" if name == "mcic" else "deeplab"
    contrast = "memory" if name == "memory" else ""
    options = {"pixel_memory": size, "segment_memory": size} if size else {}
    torch.manual_seed(0)
    segmenter = DeepLab(config.model, NUM_CLASSES).to(device)
    trainer = build_segment_method(method, {}, contrast, options, segmenter, NUM_CLASSES, 125).to(device).train()
    backbone, head = segmenter.param_groups()
    optimizer = make_optimizer(backbone, head + trainer.new_parameters(),
                               config)
    batch = make_batch(config, device)
    with autocast(device, config.amp):
        trainer(batch, 0)  # creates the memory
    if method == "mcic":
        queues = [trainer.memory]
    elif contrast:
        queues = [trainer.contrast.memory.pixels, trainer.contrast.memory.segments]
    else:
        queues = []
    bank_bytes = 0
    for queue in queues:
        queue.features.copy_(F.normalize(torch.randn_like(queue.features), dim=2))
        queue.count = [queue.size] * queue.num_classes
        bank_bytes += queue.features.numel() * queue.features.element_size()
    step_index = iter(range(10 ** 9, 2 * 10 ** 9))  # past every warm-up

    def step() -> None:
        with autocast(device, config.amp):
            loss = sum(trainer(batch, next(step_index)).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, bank_bytes


def peak_of_this_process_mib() -> float:
    """VmHWM (peak resident set of this process image; ru_maxrss would carry the parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def peak_rss_mib(spec: str, device: str) -> float:
    """Peak resident memory of a fresh process that builds `spec` and runs 5 steps."""
    output = subprocess.run([sys.executable, __file__, "--rss-of", spec, "--device", device], check=True,
                            capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="deeplab,memory-1000,memory,mcic")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per spec per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rss-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.rss_of:
        step, _ = build(args.rss_of, device)
        timed(step, 5, device)
        print(peak_of_this_process_mib())
        return
    specs = [spec for spec in args.specs.split(",") if spec]
    built = {spec: build(spec, device) for spec in specs}
    samples = interleaved({spec: step for spec, (step, _) in built.items()}, args.rounds, args.steps, device)
    medians = {spec: statistics.median(values) for spec, values in samples.items()}
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "specs": {spec: {"median_step_seconds": medians[spec], "step_seconds": samples[spec],
                         "ratio_to_deeplab": medians[spec] / medians["deeplab"] if "deeplab" in medians else None,
                         "memory_bank_mib": built[spec][1] / 2 ** 20,
                         "peak_rss_mib": peak_rss_mib(spec, args.device)} for spec in specs},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    print(table, file=sys.stderr)
    write_readme_table("segment-step", table)


def results_table(results: dict) -> str:
    lines = ["| segmenter training | s / step (median) | vs. deeplab | memory bank MiB | peak RSS MiB |",
             "|---|---|---|---|---|"]
    for spec, numbers in results["specs"].items():
        ratio = numbers["ratio_to_deeplab"]
        lines.append(f"| {spec} | {numbers['median_step_seconds']:.3f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} | {numbers['memory_bank_mib']:.1f} | "
                     f"{numbers['peak_rss_mib']:.0f} |")
    lines.append(f"\nBatch 16 x 112 px, memories full, {results['rounds']} rounds x {results['steps_per_round']} "
                 f"steps taken in turns, {results['threads']} threads, torch {results['torch']}, device "
                 f"{results['device']}; `python benchmarks/segment_step.py`, raw numbers in "
                 "`benchmarks/results/segment_step.json`.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
