"""Stage `infer-cam`: multi-scale, flipped CAMs for a split, fused and max-normalised per class.

Input: the run's CAM checkpoint and dataset index. Output: the split's CAM file (see `core.camstore`).
As in IRN's make_cam: for each scale the image and its flip go through the network, the maps are upsampled
to the image size rounded up to a multiple of the output stride (`strided_up_size`), cropped to the image and
summed over scales and flips, then each labelled class is divided by its maximum, all on the device (batched
tensor ops; only they, in float16, come back). Only the labelled classes' maps are resized and summed (IRN resizes
all of them and keeps the labelled ones): the same maps, for a fraction of the work on VOC's 20 or COCO's 80
classes, though not bit for bit what this stage wrote when it resized every class in channels_last: that
kernel rounds differently, so up to 2e-5 of the stored float32 values moved by one float16 step, and no pixel's
label at the 0.30 threshold changed (benchmarks/before_after.py; benchmarks/README.md "Where the time goes").
Images of equal size are batched together (in order of size, so VOC's mixed sizes batch too), and each scale's
views go through the network in cache-sized chunks (`core.device.forward_pixel_budget`); benchmarks/infer_cam.py
measures this against the one-image-at-a-time way of the IRN/SEAM code. A writer thread compresses and writes
a batch's maps while the network computes the next (`core.background`).
The CAMs are written as parts of `part_size` images (`cams/.<split>.h5.parts/`), each renamed into place when
complete, then merged: a killed run resumes at the first missing part. Under torchrun the processes take every
N-th part and the main process merges.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .config import CamModelConfig, InferCamConfig
from .core.background import BackgroundWriter
from .core.camstore import CamReader, CamWriter
from .core.checkpoint import checkpoint_normalization, load_checkpoint, model_config
from .core.console import console, progress_bar
from .core.device import memory_format, resolve_device, seed_everything
from .core.distributed import processes
from .core.errors import UserError
from .core.runs import Run, Stage
from .data.loading import same_size_batches
from .methods import cam_model_from_checkpoint
from .models.multiscale import fused_cams, labelled_cams


def infer_cam(run: Run, config: InferCamConfig, *, force: bool = False) -> dict:
    """CAMs of a split; skipped when up to date (see `Run.execute`) unless `force`."""
    dataset = run.dataset()
    samples = dataset.split(config.split)
    checkpoint_path = run.cam_checkpoint.require()
    output = run.cams(config.split, config.raw).path

    def work() -> dict:
        checkpoint = load_checkpoint(checkpoint_path, "cam")
        if checkpoint["class_names"] != dataset.class_names:
            raise UserError(f"{checkpoint_path} was trained on other classes than this run's dataset")
        procs = processes()
        device = resolve_device(config.device)
        seed_everything(config.seed)
        model = cam_model_from_checkpoint(checkpoint, checkpoint_path).to(device, memory_format=memory_format(device))
        normalization = checkpoint_normalization(checkpoint, checkpoint_path)
        output_stride = model_config(CamModelConfig, checkpoint, checkpoint_path).output_stride
        cam_function = model.raw_cams if config.raw and hasattr(model, "raw_cams") else model.cams
        parts_dir = output.parent / f".{output.name}.parts"
        attributes = dict(class_names=dataset.class_names, split=config.split, scales=list(config.scales),
                          config={"infer": asdict(config), "train": checkpoint["config"]},
                          kind="cam_raw" if config.raw else "cam")
        finished = run.resumable_folder(stage, parts_dir, part_size=config.part_size)
        parts = [(parts_dir / f"part-{start:08d}.h5", samples[start:start + config.part_size])
                 for start in range(0, len(samples), config.part_size)]
        todo = [(path, part) for path, part in procs.shard(parts) if path.name not in finished]
        console.print(f"infer-cam: {len(samples)} {config.split} images, scales {list(config.scales)}, "
                      f"flip {config.flip}, device {device}"
                      + (f", {procs.world_size} processes" if procs.distributed else "")
                      + (f"; {len(finished)} of {len(parts)} parts already done" if finished else ""))
        with progress_bar() as bar:
            task = bar.add_task("infer-cam", total=sum(len(part) for _, part in todo), status="")
            for path, part in todo:
                with CamWriter(path, **attributes) as writer, BackgroundWriter() as background:
                    batches = same_size_batches(part, normalization, config.batch_size, config.workers,
                                                pin_memory=device.type == "cuda")
                    for batch_samples, images in batches:
                        classes = [np.array(sample.labels, dtype=np.int64) for sample in batch_samples]
                        cams = fused_cams(cam_function, images.to(device, non_blocking=True), config.scales,
                                          config.flip, device, config.amp, output_stride, classes)
                        background.submit(write_batch, writer, batch_samples, labelled_cams(cams, classes),
                                          classes)
                        bar.update(task, advance=len(batch_samples))
        procs.barrier()
        if procs.is_main:
            merge_parts([path for path, _ in parts], output, attributes)
            shutil.rmtree(parts_dir)
        return {"images": len(samples)}

    stage = Stage(f"infer-cam/{config.split}{'-raw' if config.raw else ''}", config,
                  [run.dataset_index.path, checkpoint_path], [output], work)
    return run.execute(stage, force)


def write_batch(writer: CamWriter, samples, cams, classes) -> None:
    """In the writer thread: each image's maps, copied from the device here rather than in the main thread."""
    for sample, sample_cams, sample_classes in zip(samples, cams, classes):
        writer.write(sample.id, sample_cams.cpu().numpy(), sample_classes)


def merge_parts(parts: list[Path], output: Path, attributes: dict) -> None:
    with CamWriter(output, **attributes) as writer:
        for path in parts:
            with CamReader(path) as reader:
                writer.copy_from(reader)
