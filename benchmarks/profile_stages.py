"""Where the stages' time goes besides the network, on this machine, side by side in one run:

- `infer-cam` (make all's scales 1.0/0.5/1.5 with flips) and the segmenter's prediction (`segment --predict`),
  each against the network alone: the same forwards, on inputs decoded, resized and flipped beforehand; in the
  default precision (bfloat16 on CPUs with native bf16, float16 autocast on CUDA);
- a torch.profiler breakdown of each stage's main thread: the network, resizing (upsampling maps, scaling
  inputs), fusion and masks (sums, flips, softmax, argmax, normalising, copies), waiting for the loader, and the
  rest (Python, file writing not moved off the main thread, start-up);
- how long training waits for its loader: one epoch of `train-cam` and of `segment` (`data_wait_share`, which
  every training stage records in its manifest entry);
- the CAM fusion (`fused_cams` on 8 VOC-sized images) resizing every class's map against only the labelled
  classes' (1 or 2 per image), for 8 (synthetic), 20 (VOC) and 80 (COCO) classes: the run's CAM network with its
  maps repeated to that many.

    python benchmarks/profile_stages.py --run runs/bench [--images 512] [--voc-sized 32] [--rounds 2]

The run needs cam/checkpoint.pt and segment/pseudo-crf/checkpoint.pt (`make bench`). Images: the run's first
synthetic training images, and VOC-sized copies (benchmarks/subset_run.py). Results:
benchmarks/results/profile_stages.json and the table between the `bench:profile-stages` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.config import (CamModelConfig, InferCamConfig, SegmentConfig, TrainCamConfig)  # noqa: E402
from stages.core.checkpoint import checkpoint_normalization, load_checkpoint, model_config  # noqa: E402
from stages.core.device import autocast, forward_pixel_budget, memory_format, resolve_device  # noqa: E402
from stages.core.distributed import processes  # noqa: E402
from stages.core.io import load_image  # noqa: E402
from stages.infer_cam import infer_cam  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from stages.models.multiscale import fused_cams, labelled_cams  # noqa: E402
from stages.predict import _segmenter  # noqa: E402
from stages.segment import predict as segment_predict  # noqa: E402
from stages.segment import segment  # noqa: E402
from stages.train_cam import train_cam  # noqa: E402
from readme_table import machine_info, write_readme_table  # noqa: E402  (benchmarks/, the script's folder)
from step_timing import timed  # noqa: E402
from subset_run import add_sample_options, sample_paths, subset_run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "profile_stages.json"
CAM_SCALES = (1.0, 0.5, 1.5)  # make all's
NETWORK = "network"  # the record_function label around each forward
RESIZING = ("aten::upsample_bilinear2d",)
LOADER = "enumerate(DataLoader)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sample_options(parser, images=512, voc_sized=32, work="runs/bench-profile")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    run, work = sample_paths(args)
    device = resolve_device(args.device)
    cam_path = run.path("cam", "checkpoint.pt")
    segmenter_path = run.path("segment", "pseudo-crf", "checkpoint.pt")
    cam_checkpoint = load_checkpoint(cam_path, "cam")
    cam_model = cam_model_from_checkpoint(cam_checkpoint, cam_path).to(device, memory_format=memory_format(device))
    stride = model_config(CamModelConfig, cam_checkpoint, cam_path).output_stride
    cam_normalization = checkpoint_normalization(cam_checkpoint, cam_path)
    segmenter = _segmenter(load_checkpoint(segmenter_path, "segmenter"), segmenter_path)
    segmenter = segmenter.to(device, memory_format=memory_format(device))

    result = {"machine": machine_info(device=str(device)), "cam_scales": list(CAM_SCALES), "inference": {},
              "training": {}}
    for name, count, voc_sized in (("synthetic 128x128", args.images, False), ("VOC-sized", args.voc_sized, True)):
        bench = subset_run(work / name.split()[0], run, count, voc_sized)
        bench.path("cam").mkdir(exist_ok=True)
        shutil.copy(cam_path, bench.path("cam", "checkpoint.pt"))
        samples = bench.dataset().split("train")
        masks_dir = work / "predictions"
        stages = {
            "infer-cam": dict(
                run_stage=lambda: infer_cam(bench, InferCamConfig(split="train", scales=CAM_SCALES,
                                                                  device=args.device), force=True),
                module=cam_model, forward="cams", normalization=cam_normalization, scales=CAM_SCALES, flip=True,
                stride=stride, batch_size=InferCamConfig().batch_size),
            "segment --predict": dict(
                run_stage=lambda: predict_split(segmenter, samples, masks_dir, device),
                module=segmenter, forward="forward", normalization=segmenter.normalization, scales=(1.0,),
                flip=False, stride=1, batch_size=SegmentConfig().batch_size),
        }
        for stage, spec in stages.items():
            seconds = []
            for round_index in range(args.rounds):
                seconds.append(timed(spec["run_stage"], 1, device))
                print(f"{name} {stage} round {round_index + 1}: {seconds[-1]:.2f} s", file=sys.stderr)
            network = network_alone(spec, samples, device)
            breakdown = profiled(spec, device)
            stage_seconds = statistics.median(seconds)
            result["inference"].setdefault(name, {})[stage] = {
                "images": len(samples), "stage_seconds": seconds, "network_alone_seconds": network,
                "images_per_second": len(samples) / stage_seconds,
                "network_alone_images_per_second": len(samples) / network,
                "fraction_of_network_alone": network / stage_seconds, "profile": breakdown}
            print(f"{name} {stage}: {network / stage_seconds:.2f} of the network alone; profile "
                  f"{json.dumps(breakdown)}", file=sys.stderr)

    result["fusion_by_class_count"] = fusion_by_class_count(cam_model, stride, device, args.rounds)
    train_bench = subset_run(work / "training", run, args.images)
    for stage, run_stage in {
        "train-cam": lambda: train_cam(train_bench, TrainCamConfig(epochs=1, val_split="", device=args.device),
                                       force=True),
        "segment": lambda: segment(train_bench, SegmentConfig(epochs=1, labels="gt", predict_splits=(),
                                                              device=args.device), force=True),
    }.items():
        metrics = run_stage()
        result["training"][stage] = {"images": args.images, "epoch_seconds": metrics["epoch_seconds"],
                                     "data_wait_share": metrics["data_wait_share"]}
        print(f"{stage}: {json.dumps(result['training'][stage])}", file=sys.stderr)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme_table("profile-stages", table(result))
    print(table(result))


def fusion_by_class_count(model, stride: int, device: torch.device, rounds: int) -> dict:
    images = torch.randn(8, 3, 375, 500, device=device)
    result = {}
    for count in (8, 20, 80):
        def cams(views, count=count):
            maps = model.cams(views)
            return maps.repeat(1, math.ceil(count / maps.shape[1]), 1, 1)[:, :count]
        classes = [np.arange(1, 3) + index % (count - 1) if index % 2 else np.array([1 + index % count])
                   for index in range(len(images))]
        ways = {"every class": lambda: fused_cams(cams, images, CAM_SCALES, True, device, True, stride),
                "labelled classes": lambda: labelled_cams(
                    fused_cams(cams, images, CAM_SCALES, True, device, True, stride, classes), classes)}
        seconds = {way: [] for way in ways}
        for _ in range(rounds):
            for way, function in ways.items():
                seconds[way].append(timed(function, 1, device))
        result[str(count)] = {way: statistics.median(values) for way, values in seconds.items()}
        print(f"fusion with {count} classes: {json.dumps(result[str(count)])}", file=sys.stderr)
    return result


def predict_split(model, samples, out_dir: Path, device: torch.device) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    segment_predict(model, samples, out_dir, set(), SegmentConfig(), device, processes())


@torch.inference_mode()
def network_alone(spec: dict, samples, device: torch.device) -> float:
    """Seconds of the stage's forwards alone: its batches (images of one size, in its batch size), each scale's
    views (and flips) in the chunks of the device's pixel budget, channels_last, prepared beforehand."""
    by_size: dict[tuple, list] = {}
    for sample in samples:
        image = spec["normalization"](load_image(sample.image))
        by_size.setdefault(tuple(image.shape), []).append(image)
    budget = forward_pixel_budget(device)
    forwards = []
    for images in by_size.values():
        for start in range(0, len(images), spec["batch_size"]):
            batch = torch.stack(images[start:start + spec["batch_size"]])
            height, width = batch.shape[-2:]
            for scale in spec["scales"]:
                scaled = batch if scale == 1.0 else F.interpolate(
                    batch, size=(round(height * scale), round(width * scale)), mode="bilinear", align_corners=False)
                views = torch.cat([scaled, scaled.flip(-1)]) if spec["flip"] else scaled
                per_forward = len(views) if budget is None else max(1, budget // (scaled.shape[-2] * scaled.shape[-1]))
                forwards += [chunk.contiguous(memory_format=memory_format(device)).to(device)
                             for chunk in views.split(per_forward)]
    forward = getattr(spec["module"], spec["forward"])

    def run_forwards(views) -> None:
        for view in views:
            with autocast(device, True):  # per forward, as the stage enters it
                forward(view).float()

    run_forwards({view.shape: view for view in forwards}.values())  # warm-up: the kernels' choice per shape
    return timed(lambda: run_forwards(forwards), 1, device)


def profiled(spec: dict, device: torch.device) -> dict[str, float]:
    """The stage's main-thread wall time by kind of work, in seconds, from one profiled run."""
    # The label goes on the class's method: infer-cam builds its own model from the checkpoint.
    cls, name = type(spec["module"]), spec["forward"]
    original = getattr(cls, name)

    def labelled(self, *args, **kwargs):
        with record_function(NETWORK):
            return original(self, *args, **kwargs)

    setattr(cls, name, labelled)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        with profile(activities=activities) as profiler:
            wall = timed(spec["run_stage"], 1, device)
    finally:
        setattr(cls, name, original)
    events = [event for event in profiler.events() if event.cpu_parent is None]
    thread = next(event.thread for event in events if event.name == NETWORK)
    kinds = {"network": 0.0, "resizing": 0.0, "fusion and masks": 0.0, "waiting for data": 0.0}
    for event in events:
        if event.thread != thread:
            continue
        seconds = event.cpu_time_total / 1e6
        if event.name == NETWORK:
            kinds["network"] += seconds
        elif event.name.startswith(LOADER):
            kinds["waiting for data"] += seconds
        elif event.name in RESIZING:
            kinds["resizing"] += seconds
        elif event.name.startswith("aten::"):
            kinds["fusion and masks"] += seconds
    kinds["other"] = wall - sum(kinds.values())
    return {kind: round(seconds, 3) for kind, seconds in {"wall": wall, **kinds}.items()}


def table(result: dict) -> str:
    machine = result["machine"]
    lines = [f"{machine['cpu']}, {machine['cores']} cores, device {machine['device']}, torch {machine['torch']} "
             "(`python benchmarks/profile_stages.py`). Shares of one profiled run's wall time.",
             "",
             "| images | stage | images/s | network alone | of network alone | network | resizing | fusion and "
             "masks | waiting for data | other |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, stages in result["inference"].items():
        for stage, row in stages.items():
            profile_ = row["profile"]
            shares = " | ".join(f"{100 * profile_[kind] / profile_['wall']:.0f}%" for kind in
                                ("network", "resizing", "fusion and masks", "waiting for data", "other"))
            lines.append(f"| {name} ({row['images']}) | {stage} | {row['images_per_second']:.1f} | "
                         f"{row['network_alone_images_per_second']:.1f} | {row['fraction_of_network_alone']:.2f} | "
                         f"{shares} |")
    lines += ["", "| training (one epoch) | images | epoch seconds | waiting for data |", "|---|---:|---:|---:|"]
    for stage, row in result["training"].items():
        lines.append(f"| {stage} | {row['images']} | {row['epoch_seconds']:.1f} | "
                     f"{100 * row['data_wait_share']:.1f}% |")
    lines += ["", "| CAM fusion of 8 VOC-sized images | 8 classes | 20 classes | 80 classes |", "|---|---:|---:|---:|"]
    fusion = result["fusion_by_class_count"]
    for way in ("every class", "labelled classes"):
        lines.append(f"| {way}, seconds | " + " | ".join(f"{fusion[count][way]:.2f}" for count in fusion) + " |")
    lines.append("| speedup | " + " | ".join(f"{fusion[c]['every class'] / fusion[c]['labelled classes']:.2f}x"
                                            for c in fusion) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
