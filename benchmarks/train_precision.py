"""Why `make all`'s training takes the time it does on this machine: one training step of each training stage
(train-cam's baseline classifier, and the DeepLab segmenter with cross-entropy), in the stages' way (autocast to
bfloat16 on CPUs with native bf16, float16 on CUDA; channels_last) against the three other combinations of
precision and memory format, side by side (the specs take turns, round after round); then a torch.profiler split
of the stages' way: convolutions forward and backward, batch norm, resizing, the optimizer, the rest.

    python benchmarks/train_precision.py [--rounds 5] [--steps 5] [--device auto]

The batches are the stages' default shapes (16 crops of 112 px, the synthetic benchmark's 8 classes) with random
pixels, labels and masks: the time is the network's, the same for any content. Results:
benchmarks/results/train_precision.json and the table between the `bench:train-precision` markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.config import CamModelConfig, SegmentConfig, TrainCamConfig  # noqa: E402
from stages.core.device import autocast, resolve_device  # noqa: E402
from stages.core.training import make_optimizer  # noqa: E402
from stages.methods import build_cam_model, training_terms  # noqa: E402
from stages.models.deeplab import DeepLab  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import interleaved, timed  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_precision.json"
NUM_CLASSES = 8  # foreground classes of the synthetic benchmark
WAYS = {"mixed, channels_last (the stages')": (True, True), "mixed, default format": (True, False),
        "float32, channels_last": (False, True), "float32, default format": (False, False)}
# Profiler op names → the split's parts; what matches none is "the rest".
PARTS = {"convolution forward": ("aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::_convolution"),
         "convolution backward": ("aten::convolution_backward",),
         "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward",
                        "aten::cudnn_batch_norm", "aten::cudnn_batch_norm_backward"),
         "resizing": ("aten::upsample_bilinear2d", "aten::upsample_bilinear2d_backward"),
         "optimizer": ("Optimizer.step#SGD.step",)}


def make_step(stage: str, device: torch.device, amp: bool, channels_last: bool):
    """A closure running one training step of `stage` (train-cam or segment) on a fixed batch."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if stage == "train-cam":
        config = TrainCamConfig()
        model = build_cam_model("baseline", CamModelConfig(), NUM_CLASSES)
        backbone, head = model.param_groups()
    else:
        config = SegmentConfig()
        model = DeepLab(config.model, NUM_CLASSES + 1)
        backbone, head = model.param_groups()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = make_optimizer(backbone, head, config)
    size = config.crop_size
    images = torch.rand(config.batch_size, 3, size, size, generator=generator).to(device,
                                                                                   memory_format=memory_format)
    labels = (torch.rand(config.batch_size, NUM_CLASSES, generator=generator) < 0.2).float().to(device)
    masks = torch.randint(0, NUM_CLASSES + 1, (config.batch_size, size, size), generator=generator).to(device)

    def losses() -> torch.Tensor:
        if stage == "train-cam":
            return sum(training_terms(model, None, images, labels).values())
        return F.cross_entropy(model(images).float(), masks, ignore_index=255)

    def step() -> None:
        with autocast(device, amp):
            loss = losses()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def profile_split(step, device: torch.device, steps: int) -> dict[str, float]:
    """Shares of the profiled steps' self time per part (PARTS; the rest under "other")."""
    timed(step, 2, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        timed(step, steps, device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals = {part: 0.0 for part in PARTS} | {"other": 0.0}
    for event in profiler.key_averages():
        part = next((name for name, ops in PARTS.items() if event.key in ops), "other")
        totals[part] += getattr(event, attribute)
    whole = sum(totals.values()) or 1.0
    return {part: round(value / whole, 4) for part, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per way per round")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    results = {"machine": machine_info(device=str(device)), "rounds": args.rounds, "steps_per_round": args.steps,
               "stages": {}}
    for stage in ("train-cam", "segment"):
        samples = interleaved({way: make_step(stage, device, *flags) for way, flags in WAYS.items()}, args.rounds,
                              args.steps, device)
        medians = {way: statistics.median(values) for way, values in samples.items()}
        stages_way = next(iter(WAYS))
        results["stages"][stage] = {
            "ways": {way: {"median_step_seconds": round(medians[way], 4), "step_seconds": samples[way],
                           "vs_the_stages_way": round(medians[way] / medians[stages_way], 3)} for way in WAYS},
            "profile_of_the_stages_way": profile_split(make_step(stage, device, *WAYS[stages_way]), device,
                                                       args.steps),
        }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_readme_table("train-precision", table(results))
    print(table(results))


def table(results: dict) -> str:
    ways = list(WAYS)
    parts = list(PARTS) + ["other"]
    lines = ["| stage | " + " | ".join(f"{way}: s / step" for way in ways) + " |",
             "|---|" + "---:|" * len(ways)]
    for stage, result in results["stages"].items():
        cells = [f"{result['ways'][way]['median_step_seconds']:.3f} ({result['ways'][way]['vs_the_stages_way']:.2f}x)"
                 for way in ways]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "| the stages' way, share of the step | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
    for stage, result in results["stages"].items():
        split = result["profile_of_the_stages_way"]
        lines.append(f"| {stage} | " + " | ".join(f"{100 * split[part]:.0f}%" for part in parts) + " |")
    machine = results["machine"]
    lines.append(f"\n{machine['cpu']}, {machine['cores']} cores, device {machine['device']}, torch {machine['torch']}; "
                 f"medians of {results['rounds']} rounds x {results['steps_per_round']} steps taken in turns, batch "
                 "16 x 112 px (`python benchmarks/train_precision.py`, raw numbers in "
                 "`benchmarks/results/train_precision.json`).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
