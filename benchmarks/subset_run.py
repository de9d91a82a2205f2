"""The throughput benchmarks' inputs: a run folder holding a source run's first training images, as they are or
resized to VOC's sizes (VOC images are larger than the synthetic ones and of mixed sizes, which is what batching
and the CRF's cost depend on)."""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def add_sample_options(parser: argparse.ArgumentParser, *, images: int, voc_sized: int, work: str,
                       run_help: str = "the source run") -> None:
    """The options of a benchmark that measures on samples of a run's images: the run, how many synthetic and
    VOC-sized images, the rounds, the scratch folder."""
    parser.add_argument("--run", type=Path, default=Path("runs/bench"), help=run_help)
    parser.add_argument("--images", type=int, default=images, help="synthetic images")
    parser.add_argument("--voc-sized", type=int, default=voc_sized, help="VOC-sized images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(work), help="scratch folder")


def sample_paths(args: argparse.Namespace) -> tuple[Run, Path]:
    """The source run and the scratch folder of `add_sample_options`' arguments (relative ones from the repository
    root), the scratch folder emptied."""
    run = Run(args.run if args.run.is_absolute() else ROOT / args.run)
    work = args.work if args.work.is_absolute() else ROOT / args.work
    shutil.rmtree(work, ignore_errors=True)
    return run, work
