"""The choices behind CAM inference on CPU, measured side by side in one run: how many pixels go through the
network per forward (`core.device.forward_pixel_budget`), and two speed-ups that were tried and left out: batch
norm folded into the convolutions, and torch.compile.

    python benchmarks/inference_options.py --run runs/bench [--rounds 2]

Each option runs `multi_scale_sum` (IRN's scales 1.0, 0.5, 1.5, 2.0 with flips: the network, the resizing and the
sums, no loading or writing) on one batch of the synthetic set (16 images, 128x128) and one of VOC-sized images (8
images, 500x375), in float32 and bfloat16; the options take turns round after round and the median counts.
torch.compile's first calls (compilation, once per input shape) are timed apart; torch.profiler gives each
operator's share of the time with the chosen budget. Results:
benchmarks/results/inference_options.json and the table in benchmarks/README.md between the bench:inference-options
markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stages.models.multiscale as multiscale  # noqa: E402
from stages.core.checkpoint import load_checkpoint  # noqa: E402
from stages.core.device import cpu_has_native_bf16, forward_pixel_budget  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "inference_options.json"
SCALES = (1.0, 0.5, 1.5, 2.0)
BATCHES = {"synthetic 128x128": (16, 128, 128), "VOC-sized 500x375": (8, 375, 500)}
BUDGETS = [None, 2**17, 2**18, 2**19, 2**20]
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/bench"), help="a run with cam/checkpoint.pt")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 64  # one compilation per chunk shape (5 here), never eager fallback
    run = Run(args.run if args.run.is_absolute() else ROOT / args.run)
    checkpoint = run.path("cam", "checkpoint.pt")
    model = cam_model_from_checkpoint(load_checkpoint(checkpoint, "cam"), checkpoint).to(
        memory_format=torch.channels_last)
    folded = folded_batchnorm(model)
    precisions = {"float32": False} | ({"bfloat16": True} if cpu_has_native_bf16() else {})
    chosen = forward_pixel_budget(CPU)
    results = {}
    for name, (count, height, width) in BATCHES.items():
        images = torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(0))
        for precision, amp in precisions.items():
            options = {f"pixels per forward: {budget or 'whole batch'}": (model.cams, budget) for budget in BUDGETS}
            options["batch norm folded"] = (folded.cams, chosen)
            compile_seconds = None
            if name.startswith("synthetic"):  # VOC's many sizes would recompile for each; see benchmarks/README.md
                torch._dynamo.reset()  # a fresh cache per precision: dynamo caps recompilations per function
                compiled = torch.compile(model.cams, dynamic=False)
                started = time.perf_counter()
                infer(compiled, images, chosen, amp)
                compile_seconds = time.perf_counter() - started
                options["torch.compile"] = (compiled, chosen)
            seconds: dict[str, list[float]] = {option: [] for option in options}
            for option, (forward, budget) in options.items():
                infer(forward, images, budget, amp)  # warm-up: oneDNN picks its kernels per shape
            for _ in range(args.rounds):
                for option, (forward, budget) in options.items():
                    started = time.perf_counter()
                    infer(forward, images, budget, amp)
                    seconds[option].append(time.perf_counter() - started)
            reference = statistics.median(seconds[f"pixels per forward: {chosen}"])
            results[f"{name}, {precision}"] = {
                "images": count, "compile_seconds": compile_seconds, "profile": profile(model, images, chosen, amp),
                "options": {option: {"seconds": values, "images_per_second": count / statistics.median(values),
                                     "vs_chosen": reference / statistics.median(values)}
                            for option, values in seconds.items()}}
            print(f"{name}, {precision}: " + ", ".join(
                f"{option} {row['images_per_second']:.2f}/s" for option, row in
                results[f"{name}, {precision}"]["options"].items()), file=sys.stderr)
    result = {"machine": machine_info(),
              "scales": list(SCALES), "chosen_budget": chosen, "rounds": args.rounds, "batches": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("inference-options", table(result))
    print(table(result))


def infer(forward, images: torch.Tensor, budget, amp: bool) -> torch.Tensor:
    multiscale.forward_pixel_budget = lambda device: budget  # the option under test, for this call
    return multiscale.multi_scale_sum(forward, images, SCALES, True, CPU, amp)


def profile(model, images: torch.Tensor, budget, amp: bool, top: int = 8) -> dict[str, float]:
    """Where the time goes with the chosen budget: each operator's share of self CPU time (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        infer(model.cams, images, budget, amp)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    shares = sorted(((event.key, event.self_cpu_time_total / total) for event in events), key=lambda kv: -kv[1])
    return {key: round(share, 4) for key, share in shares[:top]}


def folded_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with each BatchNorm that follows a convolution folded into that convolution's weights."""
    folded = copy.deepcopy(model)

    def fold(module: nn.Module) -> None:
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
        for child in module.children():
            fold(child)

    fold(folded)
    return folded


def table(result: dict) -> str:
    options = list(next(iter(result["batches"].values()))["options"])
    lines = ["| batch, precision | " + " | ".join(options) + " |", "|---|" + "---:|" * len(options)]
    for name, batch in result["batches"].items():
        cells = [f"{batch['options'][o]['images_per_second']:.2f} ({batch['options'][o]['vs_chosen']:.2f}x)"
                 if o in batch["options"] else "–" for o in options]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    compile_note = "; ".join(f"{name}: {batch['compile_seconds']:.0f} s" for name, batch in result["batches"].items()
                             if batch["compile_seconds"] is not None)
    lines.append(f"\nImages/s of `multi_scale_sum` (scales {result['scales']} with flips), and in brackets against "
                 f"the chosen {result['chosen_budget']} pixels per forward; median of {result['rounds']} rounds, "
                 f"{result['machine']['cores']} CPU cores, torch {result['machine']['torch']}. torch.compile's "
                 f"compilation, not in these times: {compile_note}. `python benchmarks/inference_options.py`, raw "
                 "numbers in `benchmarks/results/inference_options.json`.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
