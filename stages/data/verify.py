"""The verification pass of `wsss data voc|folder`: every indexed image and mask fully decoded and checked once, at
indexing time, so that a corrupt file among tens of thousands is one clear error (or, with `--skip-bad`, a
counted skip) instead of a crash in a loader worker hours into training.

Checks per sample: the image decodes completely (a truncated JPEG fails `Image.load()` as long as Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES` is off, its default); the mask, where there is one, decodes, is a palette or 8-bit
grayscale image of the image's size, and holds only class indices 0..C-1 and 255 (ignore).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX, load_image, load_mask
from .index import DatasetIndex, Sample, SkippedSample

SKIP_HINT = "(use --skip-bad to leave such images out)"
# How many reasons the "skipped N bad images" line quotes.
QUOTED_REASONS = 3


class Problem(NamedTuple):
    sample_id: str
    reason: str  # one line, naming the file


def find_problems(samples: Sequence[Sample], class_count: int, workers: int,
                  progress: Callable[[int], None] | None = None, first_only: bool = False) -> list[Problem]:
    """Problems of `samples` in their order; `class_count` includes background. Decoding runs on `workers`
    threads (Pillow decodes without the GIL). `first_only` stops at the first problem, so a default run that will
    fail anyway does not decode the rest; `progress(1)` is called per sample checked."""
    problems: list[Problem] = []
    pool = ThreadPoolExecutor(max(workers, 1))
    try:
        for sample, reason in zip(samples, pool.map(lambda s: sample_problem(s, class_count), samples)):
            if progress is not None:
                progress(1)
            if reason is not None:
                problems.append(Problem(sample.id, reason))
                if first_only:
                    break
    finally:
        pool.shutdown(cancel_futures=True)
    return problems


def sample_problem(sample: Sample, class_count: int) -> str | None:
    """Why `sample` cannot be used, in one line, or None."""
    try:
        image = load_image(sample.image)
        if sample.mask is not None:
            check_mask(sample, image.shape[:2], class_count)
    except UserError as error:
        return one_line(error)
    return None


def one_line(error: Exception) -> str:
    """The error's message on one line, for the index's `skipped` list and the one-line CLI error."""
    return " ".join(str(error).split())


def check_mask(sample: Sample, image_size: tuple[int, int], class_count: int) -> None:
    mask = load_mask(sample.mask)
    if mask.shape != image_size:
        raise UserError(f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but image {sample.image} is "
                        f"{image_size[1]}x{image_size[0]}")
    # bincount rather than np.unique: no sort.
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    invalid = present[(present >= class_count) & (present != IGNORE_INDEX)]
    if invalid.size:
        raise UserError(f"mask {sample.mask} holds value {int(invalid[0])}: the dataset's classes are "
                        f"0..{class_count - 1}, and {IGNORE_INDEX} means ignore")
    # Pixels of a class the image is not labelled with: the labels and the mask disagree on what the image shows.
    unlabelled = [int(v) for v in present if v not in (0, IGNORE_INDEX) and int(v) not in sample.labels]
    if unlabelled:
        raise UserError(f"mask {sample.mask} has pixels of class {unlabelled[0]}, but image {sample.id!r} is labelled "
                        f"with classes {', '.join(map(str, sample.labels))} only")


def bad_sample_error(problem: Problem) -> UserError:
    return UserError(f"{problem.reason} {SKIP_HINT}")


def distinct_samples(index: DatasetIndex) -> list[Sample]:
    """Every sample once, in split order (VOC's train is inside train_aug: no need to decode it twice)."""
    return list({sample.id: sample for samples in index.splits.values() for sample in samples}.values())


def without_problems(index: DatasetIndex, problems: Sequence[Problem]) -> DatasetIndex:
    """`index` with the problem samples left out of every split and listed in `skipped`, once per split."""
    if not problems:
        return index
    reasons = dict(problems)
    skipped = [SkippedSample(sample.id, split, reasons[sample.id])
               for split, samples in index.splits.items() for sample in samples if sample.id in reasons]
    splits = {split: [s for s in samples if s.id not in reasons] for split, samples in index.splits.items()}
    for split, samples in splits.items():
        if not samples:
            # Later stages cannot work on an empty split; a wholly broken split is not a few bad files.
            first = next(entry for entry in skipped if entry.split == split)
            raise UserError(f"every image of split {split!r} is bad, e.g. {first.reason}")
    return dataclasses.replace(index, splits=splits, skipped=[*index.skipped, *skipped])


def skipped_summary(skipped: Sequence[SkippedSample]) -> str:
    """"skipped N bad images: reason; reason; ..." quoting the first few distinct images."""
    reasons = list({entry.id: entry.reason for entry in skipped}.values())
    quoted = "; ".join(reasons[:QUOTED_REASONS]) + ("; ..." if len(reasons) > QUOTED_REASONS else "")
    return f"skipped {len(reasons)} bad image{'s' if len(reasons) != 1 else ''}: {quoted}"
