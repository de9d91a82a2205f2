"""Reader for PASCAL VOC 2012, with or without the SBD augmented masks (`SegmentationClassAug/`).

Image-level labels come from the segmentation masks where they exist, else from the detection
annotations (`Annotations/{id}.xml`), so splits such as `train_aug` that mix both still get labels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX, load_mask
from .index import DatasetIndex, Sample, check_sample_id
from .verify import Problem, bad_sample_error, one_line, without_problems

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
DEFAULT_SPLITS = ("train_aug", "train", "val")
# Where split lists live: the official layout, the usual SBD layout, and some SBD releases' flat layout.
SPLIT_LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", ".")
# The SBD masks are preferred: they cover train_aug, and agree with SegmentationClass where both exist.
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")


def read_voc(root: Path, splits: Sequence[str] = DEFAULT_SPLITS, workers: int = 8,
             progress: Callable[[int], None] | None = None, skip_bad: bool = False) -> DatasetIndex:
    """Index the VOC2012 folder under `root`; `progress(1)` is called once per distinct image read.

    A mask that cannot be read or holds values outside 0..20 and 255 is an error; with `skip_bad` its image is
    left out and listed in the index's `skipped` instead.
    """
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    voc_dir = find_voc_dir(Path(root))
    # Only the default list may skip splits this copy of VOC lacks; splits the user named must exist.
    required = tuple(splits) != DEFAULT_SPLITS
    split_ids: dict[str, list[str]] = {}
    for split in splits:
        list_file = find_split_list(voc_dir, split, required)
        if list_file is not None:
            split_ids[split] = read_split_list(list_file)
    if not split_ids:
        wanted = ", ".join(f"{split}.txt" for split in splits)
        raise UserError(f"no split lists found in {voc_dir}: looked for {wanted} in "
                        "ImageSets/Segmentation/, ImageSets/SegmentationAug/ and the VOC2012 folder itself")

    distinct_ids = list(dict.fromkeys(sample_id for ids in split_ids.values() for sample_id in ids))
    # Fail on a missing image before spending time reading thousands of masks.
    for sample_id in distinct_ids:
        if not image_path(voc_dir, sample_id).is_file():
            raise UserError(f"image not found: {image_path(voc_dir, sample_id)}")

    def read_one(sample_id: str) -> tuple[Sample, Problem | None]:
        """The sample, and the problem of its mask if it has one (its labels are then empty)."""
        mask_path = find_mask(voc_dir, sample_id)
        labels, problem = (), None
        if mask_path is None:
            labels = labels_from_annotation(voc_dir, sample_id)
        else:
            try:
                labels = labels_from_mask(mask_path)
            except UserError as error:
                problem = Problem(sample_id, one_line(error))
        sample = Sample(sample_id, str(image_path(voc_dir, sample_id)), str(mask_path) if mask_path else None, labels)
        return sample, problem

    samples: dict[str, Sample] = {}
    problems: list[Problem] = []
    with ThreadPoolExecutor(workers) as pool:
        for sample, problem in pool.map(read_one, distinct_ids):
            samples[sample.id] = sample
            if problem is not None:
                problems.append(problem)
            if progress is not None:
                progress(1)
    if problems and not skip_bad:
        raise bad_sample_error(problems[0])

    index = DatasetIndex(
        name="voc2012",
        format="voc",
        root=str(voc_dir),
        class_names=list(VOC_CLASSES),
        splits={split: [samples[sample_id] for sample_id in ids] for split, ids in split_ids.items()},
    )
    return without_problems(index, problems)


def find_voc_dir(root: Path) -> Path:
    """The VOC2012 folder, given itself, `VOCdevkit/`, or the folder holding `VOCdevkit/`."""
    if not root.is_dir():
        raise UserError(f"VOC root not found: {root}")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate.resolve()
    raise UserError(f"no JPEGImages/ folder in {root}, {root}/VOC2012 or {root}/VOCdevkit/VOC2012: "
                    "pass the VOC2012 folder, VOCdevkit/ or the folder holding VOCdevkit/")


def find_split_list(voc_dir: Path, split: str, required: bool) -> Path | None:
    candidates = [voc_dir / folder / f"{split}.txt" for folder in SPLIT_LIST_DIRS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if required:
        raise UserError(f"split list for {split!r} not found: {candidates[0]} "
                        f"(also looked for {candidates[1]} and {candidates[2]})")
    return None


def read_split_list(list_file: Path) -> list[str]:
    """Ids from a list of bare ids or of DeepLab lines "/JPEGImages/{id}.jpg /SegmentationClassAug/{id}.png"."""
    ids: list[str] = []
    seen: set[str] = set()
    try:
        lines = list_file.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"split list {list_file} is not a text file") from None
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            sample_id = fields[0]
        elif len(fields) == 2:
            sample_id = PurePosixPath(fields[0]).stem
        else:
            raise UserError(f"{list_file}:{line_number}: expected an image id or 'image_path mask_path', got {line!r}")
        check_sample_id(sample_id)
        if sample_id in seen:
            raise UserError(f"duplicate image id {sample_id!r} in {list_file} (line {line_number})")
        seen.add(sample_id)
        ids.append(sample_id)
    if not ids:
        raise UserError(f"split list {list_file} lists no images")
    return ids


def image_path(voc_dir: Path, sample_id: str) -> Path:
    return voc_dir / "JPEGImages" / f"{sample_id}.jpg"


def find_mask(voc_dir: Path, sample_id: str) -> Path | None:
    for folder in MASK_DIRS:
        path = voc_dir / folder / f"{sample_id}.png"
        if path.is_file():
            return path
    return None


def labels_from_mask(mask_path: Path) -> tuple[int, ...]:
    mask = load_mask(mask_path)
    # bincount rather than np.unique: no sort, which matters over ten thousand masks.
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    present = present[(present != 0) & (present != IGNORE_INDEX)]
    invalid = present[present >= len(VOC_CLASSES)]
    if invalid.size:
        raise UserError(f"mask {mask_path} has class value {int(invalid[0])}: VOC masks hold 0..20 and 255 (ignore)")
    return tuple(int(value) for value in present)


def labels_from_annotation(voc_dir: Path, sample_id: str) -> tuple[int, ...]:
    """Every object's class in the detection annotation, difficult and truncated ones included."""
    xml_path = voc_dir / "Annotations" / f"{sample_id}.xml"
    if not xml_path.is_file():
        raise UserError(f"no labels for image {sample_id!r}: none of "
                        f"{', '.join(f'{folder}/{sample_id}.png' for folder in MASK_DIRS)} or {xml_path} exists")
    try:
        tree = ElementTree.parse(xml_path)
    except ElementTree.ParseError as error:
        raise UserError(f"cannot parse annotation {xml_path}: {error}") from None
    labels = set()
    for object_element in tree.getroot().iter("object"):
        class_name = (object_element.findtext("name") or "").strip()
        if class_name not in VOC_CLASSES[1:]:
            raise UserError(f"annotation {xml_path} has unknown class {class_name!r}")
        labels.add(VOC_CLASSES.index(class_name))
    return tuple(sorted(labels))
