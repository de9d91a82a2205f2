"""A trained segmenter's masks of a list of images, shared by `segment --predict` and `predict`.

Per image: the class probabilities averaged over the test scales (and flips), then their argmax (on the device)
or DeepLab's dense CRF, written as a palette PNG (and, if asked, a colour overlay beside it). Images are batched
by size; a writer thread (or, with the CRF, worker processes) writes a batch while the network predicts the next;
each mask is written atomically, so a killed run leaves only whole masks and its re-run predicts only the rest.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.background import BackgroundWriter
from ..core.console import progress_bar
from ..core.io import load_image, save_mask, save_rgb
from ..core.overlays import mask_overlay
from ..data.index import Sample
from ..data.loading import same_size_batches
from ..refine.crf import CrfParams, crf_from_probabilities
from .multiscale import multi_scale_sum

# DeepLab's CRF post-processing settings (REFERENCES.md: gaussian 1/3, bilateral 67/3/4, 10 iterations).
POSTPROCESS_CRF = CrfParams(gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
                            bilateral_compat=4, iterations=10)


@dataclass(frozen=True)
class PredictionSettings:
    """How masks are predicted: the segment config's fields of the same names."""

    test_scales: tuple[float, ...] = (1.0,)
    test_flip: bool = False
    crf: bool = False
    amp: bool = True
    batch_size: int = 8
    workers: int = 2


@torch.inference_mode()
def predict_masks(model, samples: list[Sample], out_dir: Path, how: PredictionSettings, device: torch.device, *,
                  description: str, overlay_dir: Path | None = None,
                  on_bad: Callable[[Sample, str], None] | None = None) -> int:
    """Write `out_dir/ID.png` for each sample (and `overlay_dir/ID.jpg`, its colours on the image); the number
    written. An overlay is written before its mask, so a mask on disk means the image is done. `on_bad`: see
    `same_size_batches`."""
    # Without CRF the argmax runs on the device and a writer thread encodes the PNGs while the network predicts
    # the next batch. With it, the CRF runs in worker processes instead; at most `max_pending` images'
    # probabilities wait in memory (a VOC image's are 16 MB, so holding a whole split's is not an option).
    crf_pool = multiprocessing.get_context("fork").Pool(max(how.workers, 1)) if how.crf else None
    max_pending = 4 * max(how.workers, 1) + how.batch_size
    pending: deque = deque()
    written = 0
    writer = crf_pool or BackgroundWriter()
    with progress_bar() as bar, writer:
        task = bar.add_task(description + (" + crf" if how.crf else ""), total=len(samples), status="")

        def done(count: int, result=None) -> None:
            nonlocal written
            if result is not None:
                result.get()  # re-raises a worker's error here
            written += count
            bar.update(task, advance=count)

        batches = same_size_batches(samples, model.normalization, how.batch_size, how.workers, on_bad=on_bad,
                                    pin_memory=device.type == "cuda")
        for batch_samples, images in batches:
            probabilities = multi_scale_softmax(model, images.to(device, non_blocking=True), how, device)
            jobs = [(sample.image, out_dir / f"{sample.id}.png",
                     overlay_dir / f"{sample.id}.jpg" if overlay_dir else None) for sample in batch_samples]
            if crf_pool is None:
                # max's indices: the argmax (the first class on ties too), 8x faster than argmax across NCHW planes.
                writer.submit(_write_masks, jobs, probabilities.max(1).indices.to(torch.uint8))
                done(len(jobs))
                continue
            for job, probs in zip(jobs, probabilities.cpu().numpy()):
                pending.append(crf_pool.apply_async(_write_after_crf, (job, probs)))
            while len(pending) > max_pending or (pending and pending[0].ready()):
                done(1, pending.popleft())
        while pending:
            done(1, pending.popleft())
    return written


@torch.inference_mode()
def multi_scale_softmax(model, images: torch.Tensor, how: PredictionSettings, device) -> torch.Tensor:
    """(N, C, H, W) class probabilities averaged over the test scales (and flips), on the device."""
    total = multi_scale_sum(model, images, how.test_scales, how.test_flip, device, how.amp,
                            per_view=lambda logits: F.softmax(logits, dim=1))
    return total.div_(total.sum(1, keepdim=True))


def _write_masks(jobs, masks: torch.Tensor) -> None:
    """In the writer thread: a batch's argmax masks, copied from the device here."""
    for job, mask in zip(jobs, masks.cpu().numpy()):
        _write(job, mask)


def _write_after_crf(job, probabilities: np.ndarray) -> None:
    image = load_image(job[0])
    _write(job, crf_from_probabilities(image, probabilities, POSTPROCESS_CRF).astype(np.uint8), image)


def _write(job, mask: np.ndarray, image: np.ndarray | None = None) -> None:
    image_path, mask_path, overlay_path = job
    if overlay_path is not None:
        save_rgb(overlay_path, mask_overlay(load_image(image_path) if image is None else image, mask))
    save_mask(mask_path, mask)
