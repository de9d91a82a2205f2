"""Torch datasets over a split: images, multi-hot labels and masks, with augmentation applied to both alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX, load_image, load_mask
from ..core.layout import Artifact
from ..core.normalization import Normalization
from .index import Sample, check_sample_id
from .saliency_maps import DirectorySaliency


def multi_hot(labels: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Foreground labels 1..C → a (C,) 0/1 vector (background has no entry)."""
    target = torch.zeros(num_classes)
    for label in labels:
        target[label - 1] = 1.0
    return target


@dataclass(frozen=True)
class Augment:
    """Random rescale (of the long side), horizontal flip and crop, as IRN/SEAM do for CAM training.

    `base_size` is the long side the scale range is relative to; crops smaller than the image are padded
    (image with the mean colour, mask with the ignore index, saliency with 0). The mask and the saliency map, when
    given, undergo the same geometry as the image. `fill` is the padding colour (the normalization's mean).
    """

    base_size: int
    crop_size: int
    scale_range: tuple[float, float] = (0.7, 1.3)
    flip: bool = True

    def __call__(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray | None,
                 saliency: np.ndarray | None, fill: np.ndarray):
        """→ (image, mask or None, saliency or None), all cropped to `crop_size`."""
        height, width = image.shape[:2]
        long_side = self.base_size * rng.uniform(*self.scale_range)
        scale = long_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        if saliency is not None:
            saliency = np.asarray(Image.fromarray(saliency.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
            saliency = saliency[:, ::-1] if saliency is not None else None
        return random_crop(rng, image, mask, self.crop_size, saliency, fill)


def random_crop(rng, image, mask, crop, saliency, fill):
    height, width = image.shape[:2]
    out_image = np.empty((crop, crop, 3), dtype=np.uint8)
    out_image[:] = fill
    out_mask = np.full((crop, crop), IGNORE_INDEX, dtype=np.uint8) if mask is not None else None
    out_saliency = np.zeros((crop, crop), dtype=np.float32) if saliency is not None else None
    # Offsets place a window of the image in the crop (when the image is smaller) or vice versa.
    y_image = rng.integers(0, max(height - crop, 0) + 1)
    x_image = rng.integers(0, max(width - crop, 0) + 1)
    y_crop = rng.integers(0, max(crop - height, 0) + 1)
    x_crop = rng.integers(0, max(crop - width, 0) + 1)
    h, w = min(crop, height), min(crop, width)
    window = np.s_[y_image:y_image + h, x_image:x_image + w]
    placed = np.s_[y_crop:y_crop + h, x_crop:x_crop + w]
    out_image[placed] = image[window]
    if mask is not None:
        out_mask[placed] = mask[window]
    if saliency is not None:
        out_saliency[placed] = saliency[window]
    return out_image, out_mask, out_saliency


def require_mask_set(masks: Artifact, samples: list[Sample], split: str) -> Path:
    """The mask set's folder, or a one-line error naming the first image of `split` without a mask and the commands
    that make the set for that split."""
    missing = [s.id for s in samples if not (masks.path / f"{s.id}.png").is_file()]
    if missing:
        raise UserError(f"no pseudo mask {masks.path}/{missing[0]}.png ({len(missing)} of {split} missing): run "
                        f"`wsss infer-cam --split {split}` and `{masks.made_by} --split {split}` first")
    return masks.path


def check_mask_sizes(samples: list[Sample], mask_path: Callable[[Sample], str]) -> None:
    """Every mask exists and has its image's size; checked up front (headers only), so a bad file is one clear
    error before training instead of a failure inside a loader worker."""
    for sample in samples:
        path = mask_path(sample)
        try:
            with Image.open(path) as mask, Image.open(sample.image) as image:
                if mask.size != image.size:
                    raise UserError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but image {sample.image} is "
                                    f"{image.size[0]}x{image.size[1]}")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise UserError(f"cannot read mask or image of {sample.id!r}: {error}") from None


class SplitDataset(Dataset):
    """Items: dict(image (3,H,W), labels (C,), mask (H,W) long or absent, index). Augmented if `augment`.

    With `saliency_dir`, items also carry `saliency` (H,W) float in [0, 1] and `has_saliency`: an image without a
    map in the directory gets zeros and False (methods use the map only where it exists).
    Randomness comes from (seed, epoch, index), so a run is reproducible whatever the number of workers.
    Images are normalized with `normalization`, the model's.
    """

    def __init__(self, samples: list[Sample], num_classes: int, normalization: Normalization,
                 augment: Augment | None = None, with_masks: bool = False, mask_dir: str | None = None,
                 seed: int = 0, saliency_dir: str | None = None):
        self.samples = samples
        self.normalization = normalization
        self.num_classes = num_classes
        self.augment = augment
        self.with_masks = with_masks
        self.mask_dir = mask_dir  # pseudo masks: <mask_dir>/<id>.png replace the ground truth
        self.saliency = DirectorySaliency(saliency_dir) if saliency_dir else None
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def mask_path(self, sample: Sample) -> str:
        return f"{self.mask_dir}/{sample.id}.png" if self.mask_dir else sample.mask

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(sample.image)
        mask = load_mask(self.mask_path(sample), self.num_classes + 1) if self.with_masks else None
        saliency = has_saliency = None
        if self.saliency is not None:
            has_saliency = self.saliency.has(sample.id)
            saliency = self.saliency(sample.id, image) if has_saliency else np.zeros(image.shape[:2], np.float32)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask, saliency = self.augment(rng, image, mask, saliency, self.normalization.fill)
        item = {"image": self.normalization(image), "labels": multi_hot(sample.labels, self.num_classes),
                "index": index}
        if mask is not None:
            item["mask"] = torch.from_numpy(mask.astype(np.int64))
        if saliency is not None:
            item["saliency"] = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))
            item["has_saliency"] = has_saliency
        return item


class _ImageBatches(Dataset):
    """Planned batches of images (lists of positions in `samples`), each decoded, normalised and stacked in a
    loader worker, so that a batch crosses to the main process in one transfer rather than one per image (per
    image, the transfer cost as much as decoding a small image). Item: the runs of equal decoded size as
    (positions, (N, 3, H, W) images), and the images that could not be read as (position, reason) (with
    `tolerant`; else the error is raised)."""

    def __init__(self, samples: list[Sample], batches: list[list[int]], normalization: Normalization,
                 tolerant: bool = False):
        self.samples = samples
        self.batches = batches
        self.normalization = normalization
        self.tolerant = tolerant

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[list[tuple[list[int], torch.Tensor]], list[tuple[int, str]]]:
        runs: list[tuple[list[int], list[torch.Tensor]]] = []
        bad = []
        for position in self.batches[index]:
            check_sample_id(self.samples[position].id)
            try:
                image = self.normalization(load_image(self.samples[position].image))
            except UserError as error:
                if not self.tolerant:
                    raise
                bad.append((position, str(error)))
                continue
            if runs and runs[-1][1][0].shape == image.shape:
                runs[-1][0].append(position)
                runs[-1][1].append(image)
            else:  # a size its header did not give (e.g. a decoder that applies an orientation): its own run
                runs.append(([position], [image]))
        return [(positions, torch.stack(images)) for positions, images in runs], bad


def same_size_batches(samples: list[Sample], normalization: Normalization, batch_size: int, workers: int,
                      on_bad: Callable[[Sample, str], None] | None = None, pin_memory: bool = False):
    """Yield (samples, (N, 3, H, W) normalized images) for inference, batching images of one size.

    The images are taken in order of size (read from the headers), so a dataset of mixed sizes such as VOC, where
    most images are 500x375 or 375x500, still batches: no padding, so each image's result is what it would be alone.
    An image that cannot be read is a one-line error, or, given `on_bad`, left out after `on_bad(sample, reason)`.
    `pin_memory`: for batches bound for a GPU (then copied with `non_blocking=True`).
    """
    sizes = {}
    for sample in samples:
        try:
            sizes[sample.id] = _image_size(sample)
        except UserError as error:
            if on_bad is None:
                raise
            on_bad(sample, str(error))
    samples = sorted((s for s in samples if s.id in sizes), key=lambda s: sizes[s.id])  # stable within a size
    batches: list[list[int]] = []
    for position, sample in enumerate(samples):
        if not batches or len(batches[-1]) == batch_size or sizes[samples[batches[-1][0]].id] != sizes[sample.id]:
            batches.append([])
        batches[-1].append(position)
    loader = DataLoader(_ImageBatches(samples, batches, normalization, tolerant=on_bad is not None),
                        batch_size=None, num_workers=workers, pin_memory=pin_memory)
    for runs, bad in loader:
        for position, reason in bad:
            on_bad(samples[position], reason)
        for positions, images in runs:
            yield [samples[position] for position in positions], images


def _image_size(sample: Sample) -> tuple[int, int]:
    try:
        with Image.open(sample.image) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"cannot read image {sample.image}: {error}") from None
