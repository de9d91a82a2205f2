"""Time of one CAM training step (forward, losses, backward, SGD step) per method, with and without an add-on
loss, measured side by side in one process: the specs take turns, round after round, and each spec's median
over rounds is compared with its base method's. Results: `benchmarks/results/train_step.json` and benchmarks/README.md.

    python benchmarks/train_step.py [--specs baseline,baseline+ppc,seam,seam+ppc] [--rounds 7] [--steps 5]

The batch is the stage's default shape (16 crops of 112 px, 8 classes) with random pixels and labels; time is
what the network does, the same for any content, except the add-on's per-class loops (a few classes per batch).
Runs on the stage's device and precision (bfloat16 autocast on CPUs with native bf16, float16 on CUDA).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.config import CamModelConfig, TrainCamConfig  # noqa: E402
from stages.core.device import autocast, resolve_device  # noqa: E402
from stages.core.training import make_optimizer  # noqa: E402
from stages.methods import build_aux_loss, build_cam_model, training_terms  # noqa: E402
from readme_table import write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import interleaved  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_step.json"
NUM_CLASSES = 8


def make_step(spec: str, device: torch.device, amp: bool):
    """A closure running one training step of `spec` ("METHOD" or "METHOD+AUX") on a fixed batch."""
    method, _, aux_name = spec.partition("+")
    defaults = TrainCamConfig()
    model = build_cam_model(method, CamModelConfig(), NUM_CLASSES).to(device).train()
    aux = build_aux_loss(aux_name, {}, model, method).to(device) if aux_name else None
    backbone, head = model.param_groups()
    optimizer = make_optimizer(backbone, head + (list(aux.parameters()) if aux else []),
                               defaults)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(defaults.batch_size, 3, defaults.crop_size, defaults.crop_size, generator=generator).to(device)
    labels = (torch.rand(defaults.batch_size, NUM_CLASSES, generator=generator) < 0.2).float()
    labels[:, 0] = 1  # every image has a class
    labels = labels.to(device)

    def step() -> None:
        with autocast(device, amp):
            loss = sum(training_terms(model, aux, images, labels).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="baseline,baseline+ppc,seam,seam+ppc")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per spec per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    args = parser.parse_args()
    device = resolve_device(args.device)
    specs = [spec for spec in args.specs.split(",") if spec]
    samples = interleaved({spec: make_step(spec, device, args.amp) for spec in specs}, args.rounds, args.steps, device)
    medians = {spec: statistics.median(values) for spec, values in samples.items()}
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "amp": args.amp,
        "rounds": args.rounds, "steps_per_round": args.steps,
        "specs": {spec: {"median_step_seconds": medians[spec], "step_seconds": samples[spec],
                         "ratio_to_base": medians[spec] / medians[spec.partition("+")[0]]
                         if spec.partition("+")[0] in medians else None} for spec in specs},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = results_table(results)
    print(table, file=sys.stderr)
    write_readme_table("train-step", table)


def results_table(results: dict) -> str:
    lines = ["| method | s / training step (median) | vs. the method alone |", "|---|---|---|"]
    for spec, numbers in results["specs"].items():
        ratio = numbers["ratio_to_base"]
        lines.append(f"| {spec} | {numbers['median_step_seconds']:.3f} | "
                     f"{'' if ratio is None or '+' not in spec else f'{ratio:.2f}x'} |")
    lines.append(f"\nBatch 16 x 112 px, {results['rounds']} rounds x {results['steps_per_round']} steps taken in turns, "
                 f"{results['threads']} threads, torch {results['torch']}, device {results['device']}; "
                 "`python benchmarks/train_step.py`, raw numbers in `benchmarks/results/train_step.json`.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
