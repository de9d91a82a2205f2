"""The throughput benchmarks' inputs: a run folder holding a source run's first training images, as they are or
resized to VOC's sizes (VOC images are larger than the synthetic ones and of mixed sizes, which is what batching
and the CRF's cost depend on)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.core.runs import Run  # noqa: E402
from stages.data.index import DatasetIndex  # noqa: E402

# (width, height), cycled: VOC's most common sizes, landscape twice as often as portrait.
VOC_SIZES = [(500, 375), (375, 500), (500, 375), (500, 333)]


def subset_run(folder: Path, source: Run, count: int, voc_sized: bool = False) -> Run:
    """A run at `folder` whose `train` split is `source`'s first `count` training images (VOC-sized JPEG copies
    when `voc_sized`, without masks)."""
    index = source.dataset()
    samples = index.split("train")[:count]
    if voc_sized:
        (folder / "images").mkdir(parents=True)
        resized = []
        for number, sample in enumerate(samples):
            path = folder / "images" / f"{sample.id}.jpg"
            with Image.open(sample.image) as image:
                image.convert("RGB").resize(VOC_SIZES[number % len(VOC_SIZES)], Image.BILINEAR).save(path, quality=90)
            resized.append(replace(sample, image=str(path), mask=None))
        samples = resized
    folder.mkdir(parents=True, exist_ok=True)
    DatasetIndex(index.name, index.format, index.root, index.class_names, {"train": samples}).save(
        folder / "dataset.json")
    return Run(folder)
