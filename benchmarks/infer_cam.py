"""CAM inference throughput: `wsss infer-cam` against the reference way of the IRN/SEAM code, and the network's
achieved FLOP/s against this machine's matrix-multiply peak, side by side in one run.

    python benchmarks/infer_cam.py --run runs/bench [--images 128] [--voc-sized 32] [--rounds 2]

The reference way (IRN's make_cam.py, SEAM's infer_SEAM.py): one image at a time; for each scale one forward of
the image and its flip (a batch of 2), float32, default memory format; the flip merged at the network's output,
the maps upsampled to the image size rounded up to the output stride (IRN's `strided_up_size`), cropped, summed,
each class divided by its maximum, and one `.npy` per image (IRN's dict of `keys` and `high_res`). It runs the
same trained model (`RUN/cam/checkpoint.pt`) on the same images with the same resizing as ours, so the CAMs must
agree: float32 inference to within one float16 step at 1.0 (2^-10; ours are stored as float16), which is
asserted. The default (mixed precision: bfloat16 on CPUs with native bf16) is reported with its deviation.

Two image sets: the run's synthetic 128x128 training images, and VOC-sized copies of them (upscaled to 500x375,
375x500 and 500x333 in the proportions 2:1:1, written as JPEG) since VOC images are larger and of mixed sizes.
The peak is the best of several 4096x4096 `torch.mm` in float32 and bfloat16; the network's FLOPs are counted by
`torch.utils.flop_counter` over the views inference runs. Results: benchmarks/results/infer_cam.json and the
README table between the bench:infer-cam markers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.camstore import CamReader  # noqa: E402
from stages.core.checkpoint import load_checkpoint, model_config  # noqa: E402
from stages.core.device import autocast, cpu_has_native_bf16, forward_pixel_budget  # noqa: E402
from stages.core.io import load_image  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.core.normalization import Normalization  # noqa: E402
from stages.config import CamModelConfig, InferCamConfig  # noqa: E402
from stages.infer_cam import infer_cam  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from stages.models.multiscale import multi_scale_sum  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import interleaved_runs  # noqa: E402
from subset_run import add_sample_options, sample_paths, subset_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "infer_cam.json"
FLOAT16_STEP_AT_ONE = 2.0 ** -10
FG_THRESHOLD = 0.30  # pseudo-label's default: how many pixels change label with bf16 CAMs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_options(parser, images=128, voc_sized=32, work="runs/bench-infer-cam",
                       run_help="a run with cam/checkpoint.pt")
    parser.add_argument("--scales", default="1.0,0.5,1.5,2.0", help="IRN's inference scales")
    args = parser.parse_args()
    run, work = sample_paths(args)
    scales = tuple(float(s) for s in args.scales.split(","))
    checkpoint_path = run.path("cam", "checkpoint.pt")
    checkpoint = load_checkpoint(checkpoint_path, "cam")
    model = cam_model_from_checkpoint(checkpoint, checkpoint_path)
    stride = model_config(CamModelConfig, checkpoint, checkpoint_path).output_stride
    default_dtype = "bfloat16" if cpu_has_native_bf16() else "float32"

    peak = {dtype: matmul_peak(getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    print(f"matmul peak GFLOP/s: {json.dumps({k: round(v / 1e9, 1) for k, v in peak.items()})}", file=sys.stderr)
    image_sets = {"synthetic 128x128": bench_run(work / "synthetic", run, args.images, False, checkpoint_path),
                  "VOC-sized": bench_run(work / "voc-sized", run, args.voc_sized, True, checkpoint_path)}
    results = {}
    for name, bench in image_sets.items():
        samples = bench.dataset().split("train")
        flops = sum(network_flops(model, s, scales) for s in samples)
        variants = {
            "reference (IRN way), float32": lambda: reference_infer(model, samples, scales, stride, work / "npy"),
            "wsss infer-cam, float32": lambda: ours(bench, scales, amp=False),
            f"wsss infer-cam, default ({default_dtype})": lambda: ours(bench, scales, amp=True),
        }
        agreement = {}

        def compare_once(round_index: int, outputs: dict[str, Path]) -> None:
            if round_index == 0:
                reference_dir = outputs["reference (IRN way), float32"]
                agreement.update({variant: compare(samples, reference_dir, bench, amp)
                                  for variant, amp in (("float32", False), (default_dtype, True))})

        seconds = interleaved_runs(variants, args.rounds, name, compare_once)
        assert agreement["float32"]["max_abs_diff"] <= FLOAT16_STEP_AT_ONE, agreement  # the same CAMs
        network = network_seconds(model, samples, scales)
        rows = {}
        reference_seconds = statistics.median(seconds["reference (IRN way), float32"])
        for variant, values in seconds.items():
            median = statistics.median(values)
            dtype = "float32" if "float32" in variant else default_dtype
            rows[variant] = {"seconds": [round(v, 2) for v in values], "images_per_second": len(samples) / median,
                             "speedup_vs_reference": reference_seconds / median,
                             "gflops_per_second": flops / median / 1e9,
                             "fraction_of_matmul_peak": flops / median / peak[dtype],
                             "fraction_of_network_alone": network.get(dtype, math.nan) / median}
        results[name] = {
            "images": len(samples), "image_sizes": sorted({f"{w}x{h}" for w, h in map(image_size, samples)}),
            "network_gflop_per_image": flops / len(samples) / 1e9, "variants": rows, "agreement": agreement,
            "network_only": {dtype: {"gflops_per_second": flops / s / 1e9, "fraction_of_matmul_peak": flops / s / peak[dtype]}
                             for dtype, s in network.items()},
        }
    result = {"machine": machine_info(native_bf16=cpu_has_native_bf16()), "scales": list(scales), "flip": True, "default_precision": default_dtype,
              "matmul_peak_gflops_per_second": {k: v / 1e9 for k, v in peak.items()}, "image_sets": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("infer-cam", table(result))
    print(table(result))


def bench_run(folder: Path, source: Run, count: int, voc_sized: bool, checkpoint: Path) -> Run:
    """A subset run (see subset_run.py) with the source run's CAM checkpoint."""
    bench = subset_run(folder, source, count, voc_sized)
    bench.path("cam").mkdir(exist_ok=True)
    shutil.copy(checkpoint, bench.path("cam", "checkpoint.pt"))
    return bench


def ours(bench: Run, scales, amp: bool) -> Path:
    infer_cam(bench, InferCamConfig(split="train", scales=scales, amp=amp), force=True)
    shutil.copy(bench.path("cams", "train.h5"), bench.path("cams", f"train-amp{int(amp)}.h5"))
    return bench.path("cams", f"train-amp{int(amp)}.h5")


@torch.no_grad()  # as IRN
def reference_infer(model, samples, scales, stride: int, out_dir: Path) -> Path:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for sample in samples:
        image = Normalization()(load_image(sample.image))[None]
        height, width = image.shape[-2:]
        strided_up_size = (-(-height // stride) * stride, -(-width // stride) * stride)
        total = torch.zeros(0)
        for scale in scales:
            scaled = image if scale == 1.0 else F.interpolate(
                image, size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False)
            maps = model.cams(torch.cat([scaled, scaled.flip(-1)]))
            maps = maps[0] + maps[1].flip(-1)  # IRN's CAM network merges the flip at its output resolution
            maps = F.interpolate(maps[None], size=strided_up_size, mode="bilinear",
                                 align_corners=False)[0, :, :height, :width]
            total = maps if total.numel() == 0 else total + maps
        keys = torch.tensor(sample.labels) - 1
        cams = total[keys]
        cams /= F.adaptive_max_pool2d(cams, (1, 1)) + 1e-5
        np.save(out_dir / f"{sample.id}.npy", {"keys": keys.numpy(), "high_res": cams.numpy()})
    return out_dir


def compare(samples, reference_dir: Path, bench: Run, amp: bool) -> dict:
    """Our stored CAMs against the reference's: absolute differences, and the pixels whose label at the
    foreground threshold differs."""
    differences, changed, pixels = [], 0, 0
    with CamReader(bench.path("cams", f"train-amp{int(amp)}.h5")) as reader:
        for sample in samples:
            ours_cams, _ = reader.read(sample.id)
            reference = np.load(reference_dir / f"{sample.id}.npy", allow_pickle=True).item()["high_res"]
            differences.append(np.abs(ours_cams - reference).ravel())
            threshold = np.full((1, *reference.shape[1:]), FG_THRESHOLD, np.float32)
            changed += int((np.concatenate([threshold, ours_cams]).argmax(0)
                            != np.concatenate([threshold, reference]).argmax(0)).sum())
            pixels += reference.shape[1] * reference.shape[2]
    difference = np.concatenate(differences)
    return {"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
            "label_changes_at_fg_threshold": changed / pixels}


def image_size(sample) -> tuple[int, int]:
    with Image.open(sample.image) as image:
        return image.size


def network_flops(model, sample, scales) -> float:
    """FLOPs of the network over one image's views (every scale, with its flip)."""
    width, height = image_size(sample)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        multi_scale_sum(model.cams, torch.zeros(1, 3, height, width), scales, True, torch.device("cpu"), False)
    return counter.get_total_flops()


@torch.inference_mode()
def network_seconds(model, samples, scales) -> dict[str, float]:
    """The network alone (no loading, resizing or writing) over the views of all images, in the forwards
    infer-cam makes: batches of 16 images of one size, each scale's views in chunks of the CPU's pixel budget,
    channels_last; per precision."""
    batch_size = InferCamConfig().batch_size
    budget = forward_pixel_budget(torch.device("cpu"))
    by_size: dict[tuple[int, int], list] = {}
    for sample in samples:
        by_size.setdefault(image_size(sample), []).append(sample)
    forwards = []
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            images = torch.stack([Normalization()(load_image(s.image)) for s in group[start:start + batch_size]])
            height, width = images.shape[-2:]
            for scale in scales:
                scaled = F.interpolate(images, size=(round(height * scale), round(width * scale)), mode="bilinear",
                                       align_corners=False)
                views = torch.cat([scaled, scaled.flip(-1)]).contiguous(memory_format=torch.channels_last)
                forwards += views.split(max(1, budget // (scaled.shape[-2] * scaled.shape[-1])))
    model = model.to(memory_format=torch.channels_last)
    seconds = {}
    for dtype, amp in (("float32", False), ("bfloat16", True)):
        if amp and not cpu_has_native_bf16():
            continue
        with autocast(torch.device("cpu"), amp):
            for example in {view.shape: view for view in forwards}.values():
                model.cams(example)  # warm-up: oneDNN picks its kernels for each shape
            started = time.perf_counter()
            for view in forwards:
                model.cams(view)
            seconds[dtype] = time.perf_counter() - started
    return seconds


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 4096), repeats: int = 4) -> float:
    """FLOP/s of the fastest square matrix product over `sizes` and `repeats`: what this machine's cores reach at
    best through torch (the hardware's nominal peak is not visible from inside a VM)."""
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        torch.mm(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * size ** 3 / (time.perf_counter() - started))
    return best


def table(result: dict) -> str:
    peak = result["matmul_peak_gflops_per_second"]
    lines = [f"Scales {result['scales']} with flips; {result['machine']['cores']} CPU cores, torch "
             f"{result['machine']['torch']}; matmul peak {peak['float32']:.0f} GFLOP/s float32, "
             f"{peak['bfloat16']:.0f} bfloat16 (`python benchmarks/infer_cam.py`).",
             "",
             "| images | way | images/s | vs reference | of network alone | network GFLOP/s (of peak) | CAMs vs "
             "reference: max / mean abs diff, labels changed |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, image_set in result["image_sets"].items():
        for variant, row in image_set["variants"].items():
            dtype = "float32" if "float32" in variant else result["default_precision"]
            agreement = image_set["agreement"][dtype] if not variant.startswith("reference") else None
            lines.append(
                f"| {name} ({image_set['images']}) | {variant} | {row['images_per_second']:.2f} | "
                f"{row['speedup_vs_reference']:.1f}x | {row.get('fraction_of_network_alone', math.nan):.2f} | "
                f"{row['gflops_per_second']:.0f} "
                f"({row['fraction_of_matmul_peak']:.2f}) | "
                + (f"{agreement['max_abs_diff']:.1e} / {agreement['mean_abs_diff']:.1e}, "
                   f"{100 * agreement['label_changes_at_fg_threshold']:.3f}% |" if agreement else "– |"))
        network = ", ".join(f"{dtype} {v['gflops_per_second']:.0f} GFLOP/s ({v['fraction_of_matmul_peak']:.2f} of peak)"
                            for dtype, v in image_set["network_only"].items())
        lines.append(f"| {name} | network alone, batched | | | 1.00 | {network} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
