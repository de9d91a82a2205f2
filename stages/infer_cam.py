"""Stage `infer-cam`: multi-scale, flipped CAMs for a split, fused and max-normalised per class.

Input: `cam/checkpoint.pt` and the dataset index. Output: `cams/<split>.h5` (see `core.camstore`).
As in IRN's make_cam: for each scale the image and its flip go through the network, the maps are upsampled
to the image size and summed over scales and flips, then each labelled class is divided by its maximum.
Images of equal size are batched together, which is where the speed comes from on the synthetic set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .core.camstore import CamWriter, cam_file_name
from .core.checkpoint import load_checkpoint
from .core.console import console, progress_bar
from .core.device import memory_format, resolve_device, seed_everything
from .core.errors import UserError
from .core.runs import Run
from .data.loading import same_size_batches
from .methods import cam_model_from_checkpoint
from .models.multiscale import multi_scale_sum
from .train_cam import CHECKPOINT


@dataclass(frozen=True)
class InferCamConfig:
    split: str = "train"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    raw: bool = False  # methods that refine their CAMs (SEAM's PCM): write the unrefined ones instead
    batch_size: int = 16
    workers: int = 1
    device: str = "auto"
    amp: bool = True
    seed: int = 0


def infer_cam(run: Run, config: InferCamConfig) -> dict:
    if not config.scales or any(s <= 0 for s in config.scales):
        raise UserError(f"scales must be positive numbers, got {list(config.scales)}")
    dataset = run.dataset()
    samples = dataset.split(config.split)
    checkpoint_path = run.require(CHECKPOINT, "run `wsss train-cam` first")
    checkpoint = load_checkpoint(checkpoint_path, "cam")
    if checkpoint["class_names"] != dataset.class_names:
        raise UserError(f"{checkpoint_path} was trained on other classes than this run's dataset")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    train_config = checkpoint["config"]
    model = cam_model_from_checkpoint(checkpoint, checkpoint_path).to(device, memory_format=memory_format(device))

    output = run.path(cam_file_name(config.split, config.raw))
    cam_function = model.raw_cams if config.raw and hasattr(model, "raw_cams") else model.cams
    with run.stage(f"infer-cam/{config.split}{'-raw' if config.raw else ''}", asdict(config)) as record:
        record.inputs += [run.path("dataset.json"), checkpoint_path]
        console.print(f"infer-cam: {len(samples)} {config.split} images, scales {list(config.scales)}, "
                      f"flip {config.flip}, device {device}")
        with CamWriter(output, class_names=dataset.class_names, split=config.split, scales=list(config.scales),
                       config={"infer": asdict(config), "train": train_config},
                       kind="cam_raw" if config.raw else "cam") as writer, progress_bar() as bar:
            task = bar.add_task("infer-cam", total=len(samples), status="")
            for batch_samples, images in same_size_batches(samples, config.batch_size, config.workers):
                cams = fused_cams(cam_function, images.to(device), config.scales, config.flip, device, config.amp)
                for sample, sample_cams in zip(batch_samples, cams):
                    classes = np.array(sample.labels, dtype=np.int64)
                    writer.write(sample.id, normalise_per_class(sample_cams[classes - 1]), classes)
                bar.update(task, advance=len(batch_samples))
        record.outputs.append(output)
        record.metrics["images"] = len(samples)
    return record.metrics


def fused_cams(cam_function, images: torch.Tensor, scales, flip: bool, device: torch.device,
               amp: bool = True) -> np.ndarray:
    """(N, 3, H, W) normalised images → (N, C, H, W) CAMs summed over scales (and flips), not yet normalised."""
    return multi_scale_sum(cam_function, images, scales, flip, device, amp).cpu().numpy()


def normalise_per_class(cams: np.ndarray) -> np.ndarray:
    """ReLU then divide each class map by its maximum (IRN: + 1e-5 so an all-zero map stays zero)."""
    cams = np.maximum(cams, 0)
    return cams / (cams.max(axis=(1, 2), keepdims=True) + 1e-5)
