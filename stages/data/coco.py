"""Reader for MS COCO 2014 as weakly supervised segmentation papers use it: train2014 to train, val2014 to evaluate.

Layout (`wsss data coco ROOT`):
  ROOT/annotations/instances_train2014.json, instances_val2014.json
  ROOT/train2014/, ROOT/val2014/            the images, named by the json's `file_name` (or under ROOT/images/)
Splits: `train` is train2014, `val` is val2014. Sample ids are the file names without their suffix
(`COCO_train2014_000000000009`).

Classes: the json's categories in the order of their ids, numbered 1..K; 0 is background. COCO's 80 ids run from
1 to 90 with gaps, so `person` (id 1) is class 1 and `toothbrush` (id 90) class 80, as in the `category_map` of
ReCAM's (IRN-based) `mscoco/dataloader.py`. An image's labels are the categories of its non-crowd annotations.

Ground-truth masks are rendered once from the instance annotations with pycocotools (polygons, uncompressed and
compressed RLE) into the run folder (`Layout.coco_masks(split)`: RUN/coco_masks/SPLIT/ID.png), atomically, on
threads. The rules:
  - Overlaps: the smaller instance wins. Instances are painted largest first (area: the pixels it covers as
    rendered, not the json's `area`), so a cup on a dining table stays a cup whatever order the file lists them
    in; equal areas keep the file's order, the later on top. ReCAM's `mscoco/annToMask.py`, derived from
    cocostuffapi's `cocoSegmentationToSegmentationMap`, paints in the file's order, so the later instance wins
    whatever its size; some copies of that function sort by `area`, descending, first, as here.
  - Crowd regions (iscrowd=1) are 255 (ignore), under the instances: a pixel a non-crowd instance covers keeps its
    class. They give the image no label. (annToMask.py drops crowds, which scores their pixels as background.)
  - Images without any non-crowd annotation have no image label, so weak supervision cannot use them: they are
    left out of both splits and counted (`SplitReport.unlabelled`). WSSS papers quote 82,081 training and 40,137
    validation images, COCO 2014's 82,783 and 40,504 less such images (not checked here against this rule).
  - Polygons of fewer than three points cover no pixel and are dropped (pycocotools would read one of two points
    as a box); their annotation still gives its label.
A mask is rendered again only when what it is made from changed: each split's mask folder keeps, in
`.sources.json`, a digest per mask of its image's size, its annotations and these rules.

Also read: pre-rendered semantic masks, one PNG per image, in the two layouts WSSS repositories' COCO code reads:
  ROOT/SegmentationClass/train2014/COCO_train2014_000000000009.png   named after the image
  ROOT/mask/train2014/9.png                                           named by image id (ReCAM's annToMask.py)
Where a split has such a folder it is used as it is (unless `render`), with no json needed: every mask is one
image, its labels the classes its pixels hold (values 0..80 and 255), the class names COCO's 80. Their crowd and
overlap handling is whatever their maker's was.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.io import IGNORE_INDEX, atomic_path, load_mask, save_mask
from .index import BACKGROUND, DatasetIndex, Sample, check_sample_id
from .verify import Problem, bad_sample_error, one_line, without_problems

COCO_CLASSES = [
    BACKGROUND, "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
SPLIT_FOLDERS = {"train": "train2014", "val": "val2014"}
DEFAULT_SPLITS = ("train", "val")
PRERENDERED_DIRS = ("SegmentationClass", "mask")
IMAGE_PARENTS = (".", "images")
SOURCES_FILE = ".sources.json"  # a dot file: the run's folder fingerprint leaves it out
# Part of every mask's digest: changing how masks are painted must re-render them all.
RENDER_RULES = "coco-semantic-1: smaller instance on top; crowd 255 under instances; polygons < 3 points dropped"
# Class values must fit a uint8 mask beside 255 (ignore).
MAX_CLASSES = IGNORE_INDEX - 1


@dataclass(frozen=True)
class SplitReport:
    """How a split's masks were made, and the images it left out for want of labels."""

    masks: str  # "rendered" or "pre-rendered"
    source: str  # the annotation file or the pre-rendered mask folder
    unlabelled: int  # images left out: no non-crowd annotation (pre-rendered: no class pixel)
    rendered: int = 0  # masks rendered by this call
    reused: int = 0  # masks an earlier call rendered from the same annotations


class SplitSource(NamedTuple):
    """Where a split's masks come from: `annotations` (a json to render) or `masks` (a pre-rendered folder)."""

    split: str
    kind: str  # "annotations" or "masks"
    path: Path
    image_dir: Path


class Instance(NamedTuple):
    label: int  # 1..K
    crowd: bool
    segmentation: Any  # as in the json: a list of polygons, or an RLE dict


class ImageRecord(NamedTuple):
    sample_id: str
    image: Path
    height: int
    width: int
    instances: list[Instance]

    @property
    def labels(self) -> tuple[int, ...]:
        return tuple(sorted({instance.label for instance in self.instances if not instance.crowd}))


def split_sources(root: Path, splits: Sequence[str] = DEFAULT_SPLITS, render: bool = False) -> list[SplitSource]:
    """Each split's source, checked to exist: a pre-rendered mask folder (unless `render`), else its annotation
    file; and its image folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"COCO root not found: {root}")
    root = root.resolve()
    if not splits:
        raise UserError("no splits to index: give --splits train,val (or one of them)")
    sources = []
    for split in dict.fromkeys(splits):
        if split not in SPLIT_FOLDERS:
            raise UserError(f"unknown COCO split {split!r}: use train (train2014) and/or val (val2014)")
        folder = SPLIT_FOLDERS[split]
        annotation_file = root / "annotations" / f"instances_{folder}.json"
        mask_dir = next((root / name / folder for name in PRERENDERED_DIRS if (root / name / folder).is_dir()), None)
        image_dir = next((root / parent / folder for parent in IMAGE_PARENTS if (root / parent / folder).is_dir()),
                         None)
        if image_dir is None:
            raise UserError(f"image folder for split {split!r} not found: {root / folder} (or {root}/images/{folder})")
        if mask_dir is not None and not render:
            sources.append(SplitSource(split, "masks", mask_dir, image_dir.resolve()))
        elif annotation_file.is_file():
            sources.append(SplitSource(split, "annotations", annotation_file, image_dir.resolve()))
        else:
            prerendered = " or ".join(f"{root / name / folder}/" for name in PRERENDERED_DIRS)
            raise UserError(f"annotation file for split {split!r} not found: {annotation_file}"
                            + ("" if render else f" (nor a pre-rendered mask folder {prerendered})"))
    return sources


def read_coco(root: Path, mask_folder: Callable[[str], Path], splits: Sequence[str] = DEFAULT_SPLITS,
              workers: int = 8, progress: Callable[[int], None] | None = None, skip_bad: bool = False,
              render: bool = False) -> tuple[DatasetIndex, dict[str, SplitReport]]:
    """Index COCO 2014 under `root`, rendering each split's masks into `mask_folder(split)` (see the module
    docstring); `progress(1)` is called once per indexed image. An annotation that cannot be painted or a
    pre-rendered mask that cannot be read or holds a value that is no class is an error; with `skip_bad` its
    image is left out and listed in the index's `skipped` instead."""
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    sources = split_sources(root, splits, render)
    class_names: list[str] | None = None
    splits_out: dict[str, list[Sample]] = {}
    reports: dict[str, SplitReport] = {}
    problems: list[Problem] = []
    for source in sources:
        names, records = (read_annotations(source.path, source.image_dir) if source.kind == "annotations"
                          else (list(COCO_CLASSES), []))
        # Checked before any mask is painted: a mismatch is found in seconds, not after a split's rendering.
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise UserError(f"the categories of {source.path} differ from the other split's "
                            f"({len(names) - 1} against {len(class_names) - 1} classes, or other names or order): "
                            "both splits must share one class list")
        if source.kind == "annotations":
            labelled = [record for record in records if record.labels]
            check_images_exist(record.image for record in labelled)
            samples, split_problems, rendered, reused = render_split(
                labelled, mask_folder(source.split), workers, progress, first_only=not skip_bad)
            report = SplitReport("rendered", str(source.path), len(records) - len(labelled), rendered, reused)
        else:
            samples, split_problems, unlabelled = read_prerendered(source, workers, progress, first_only=not skip_bad)
            report = SplitReport("pre-rendered", str(source.path), unlabelled)
        records = labelled = []  # let the parsed json go before the next split's is read: peak = the larger split
        if split_problems and not skip_bad:
            raise bad_sample_error(split_problems[0])
        if not samples:
            raise UserError(f"split {source.split!r} has no labelled image in {source.path}")
        problems += split_problems
        splits_out[source.split] = samples
        reports[source.split] = report

    index = DatasetIndex(name="coco2014", format="coco", root=str(Path(root).resolve()),
                         class_names=class_names or list(COCO_CLASSES), splits=splits_out)
    return without_problems(index, problems), reports


# ---- the annotation file


def read_annotations(path: Path, image_dir: Path) -> tuple[list[str], list[ImageRecord]]:
    """The class names (background first) and every image of a COCO instances file, in the file's order, with
    its instances. A structural fault (not COCO's format, an id twice, an annotation of an unknown image or
    category) is an error naming the file; a bad segmentation is left for rendering to report per image."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise UserError(f"annotation file {path} is not a COCO instances file: expected a JSON object with "
                        "'images', 'annotations' and 'categories' lists")
    class_of, class_names = category_classes(data["categories"], path)

    images: dict[int, ImageRecord] = {}
    seen_ids: set[str] = set()
    for entry in data["images"]:
        image_id, file_name = field(entry, "id", int, path, "image"), field(entry, "file_name", str, path, "image")
        height, width = field(entry, "height", int, path, "image"), field(entry, "width", int, path, "image")
        if height < 1 or width < 1:
            raise UserError(f"image {image_id} in {path} is {width}x{height}: sizes must be positive")
        if image_id in images:
            raise UserError(f"image id {image_id} appears twice in {path}")
        if PurePosixPath(file_name).name != file_name or "\\" in file_name:
            raise UserError(f"image {image_id} in {path} has file name {file_name!r}: expected a plain file name "
                            "in the split's image folder")
        sample_id = check_sample_id(PurePosixPath(file_name).stem)
        if sample_id in seen_ids:
            raise UserError(f"two images of {path} share the id {sample_id!r} (file name {file_name!r})")
        seen_ids.add(sample_id)
        images[image_id] = ImageRecord(sample_id, image_dir / file_name, height, width, [])

    for entry in data["annotations"]:
        image_id = field(entry, "image_id", int, path, "annotation")
        category = field(entry, "category_id", int, path, "annotation")
        if image_id not in images:
            raise UserError(f"annotation {entry.get('id')} in {path} is of image {image_id}, which the file does "
                            "not list")
        if category not in class_of:
            raise UserError(f"annotation {entry.get('id')} in {path} has category {category}, which the file does "
                            "not list")
        crowd = entry.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise UserError(f"annotation {entry.get('id')} in {path} has iscrowd {crowd!r}: expected 0 or 1")
        images[image_id].instances.append(Instance(class_of[category], bool(crowd), entry.get("segmentation")))
    return class_names, list(images.values())


def field(entry: Any, key: str, kind: type, path: Path, what: str) -> Any:
    """`entry[key]`, checked to be a `kind` (bool is no int here); else a one-line error naming the file."""
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        shown = json.dumps(entry)[:80] if isinstance(entry, (dict, list)) else repr(entry)
        raise UserError(f"{what} {shown} in {path} has no {kind.__name__} {key!r}")
    return value


def category_classes(categories: list, path: Path) -> tuple[dict[int, int], list[str]]:
    """COCO category id → class 1..K in the order of the ids, and the class names, background first."""
    names_by_id: dict[int, str] = {}
    for entry in categories:
        category_id, name = field(entry, "id", int, path, "category"), field(entry, "name", str, path, "category")
        if category_id in names_by_id:
            raise UserError(f"category id {category_id} appears twice in {path}")
        if not name.strip() or name.strip() == BACKGROUND:
            raise UserError(f"category {category_id} of {path} is named {name!r}: give each category a name other "
                            f"than {BACKGROUND!r}")
        names_by_id[category_id] = name.strip()
    if not names_by_id:
        raise UserError(f"annotation file {path} lists no categories")
    if len(names_by_id) > MAX_CLASSES:
        raise UserError(f"annotation file {path} lists {len(names_by_id)} categories: masks hold at most "
                        f"{MAX_CLASSES}")
    ordered = sorted(names_by_id)
    return ({category_id: index for index, category_id in enumerate(ordered, start=1)},
            [BACKGROUND, *(names_by_id[category_id] for category_id in ordered)])


def check_images_exist(paths) -> None:
    """Fail on a missing image before spending time painting thousands of masks."""
    for path in paths:
        if not path.is_file():
            raise UserError(f"image not found: {path}")


# ---- rendering


def render_split(records: list[ImageRecord], folder: Path, workers: int, progress: Callable[[int], None] | None,
                 first_only: bool) -> tuple[list[Sample], list[Problem], int, int]:
    """Render (or reuse) every record's mask into `folder`: the samples, the problems, how many masks were
    rendered and how many reused. Masks of images no longer indexed are removed, so the folder holds exactly the
    split's masks. `first_only` stops at the first problem (the run will fail anyway)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise UserError("rendering COCO masks needs pycocotools: pip install pycocotools") from None
    # pycocotools' decode predates numpy 2's `copy` keyword and says so once per mask; the result is right.
    warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                            category=DeprecationWarning, module="pycocotools")
    folder.mkdir(parents=True, exist_ok=True)
    known = read_sources(folder)
    done: dict[str, str] = {}
    samples: list[Sample] = []
    problems: list[Problem] = []
    counts = {"rendered": 0, "reused": 0}

    def one(record: ImageRecord) -> tuple[str, str | None, str | None]:
        """(outcome, digest, problem): outcome is rendered, reused or bad."""
        digest = source_digest(record)
        path = folder / f"{record.sample_id}.png"
        if known.get(record.sample_id) == digest and path.is_file():
            return "reused", digest, None
        try:
            save_mask(path, paint(record, mask_utils))
        except UserError as error:
            return "bad", None, one_line(error)
        return "rendered", digest, None

    pool = ThreadPoolExecutor(workers)
    try:
        for record, (outcome, digest, problem) in zip(records, pool.map(one, records)):
            if progress is not None:
                progress(1)
            # A bad sample stays in the list for `without_problems` to move to the index's `skipped`.
            samples.append(Sample(record.sample_id, str(record.image), str(folder / f"{record.sample_id}.png"),
                                  record.labels))
            if outcome == "bad":
                problems.append(Problem(record.sample_id, problem))
                if first_only:
                    break
                continue
            counts[outcome] += 1
            done[record.sample_id] = digest
    finally:
        pool.shutdown(cancel_futures=True)
        # What was rendered is kept for the next call, even when this one stops early or is interrupted.
        write_sources(folder, {**known, **done})
    if not (first_only and problems):  # every record was seen: the folder is made to hold this split's masks only
        remove_strays(folder, set(done))
        write_sources(folder, done)
    return samples, problems, counts["rendered"], counts["reused"]


def paint(record: ImageRecord, mask_utils) -> np.ndarray:
    """The image's semantic mask: crowd regions 255, then instances largest first (the smaller one wins)."""
    height, width = record.height, record.width
    canvas = np.zeros((height, width), np.uint8)
    crowds, things = [], []
    for number, instance in enumerate(record.instances, start=1):
        try:
            rle = instance_rle(instance.segmentation, height, width, mask_utils)
            region = None if rle is None else mask_utils.decode(rle).astype(bool)
        except Exception as error:  # pycocotools raises bare Exceptions ("input type is not supported.") too
            raise UserError(f"cannot paint annotation {number} of image {record.sample_id!r} "
                            f"({width}x{height} px): {one_line(error)}") from None
        if region is not None:
            (crowds if instance.crowd else things).append((region, instance.label))
    for region, _ in crowds:
        canvas[region] = IGNORE_INDEX
    areas = [int(np.count_nonzero(region)) for region, _ in things]
    # sorted() is stable: equal areas keep the file's order, and the later one is painted on top.
    for position in sorted(range(len(things)), key=lambda i: -areas[i]):
        region, label = things[position]
        canvas[region] = label
    return canvas


def instance_rle(segmentation: Any, height: int, width: int, mask_utils) -> dict | None:
    """One RLE of an annotation's segmentation, or None where it covers nothing (no polygon of 3 points)."""
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in polygon):
                raise ValueError("a polygon must be a list of numbers")
            if len(polygon) % 2:
                raise ValueError(f"a polygon has an odd number of coordinates ({len(polygon)})")
            if len(polygon) >= 6:
                polygons.append([float(v) for v in polygon])
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)) if polygons else None
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if list(size or ()) != [height, width]:
            raise ValueError(f"its RLE's size (height, width) is {size}, the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if not all(isinstance(count, int) and count >= 0 for count in counts) or sum(counts) != height * width:
                raise ValueError(f"its uncompressed RLE counts do not add up to the image's {height * width} pixels")
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, (str, bytes)):  # compressed RLE
            return {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError("its segmentation is neither a list of polygons nor an RLE with 'counts' and 'size'")


def source_digest(record: ImageRecord) -> str:
    """What the mask is made of: the rules, the image size and its instances (classes, crowd flags, shapes)."""
    text = json.dumps([RENDER_RULES, record.height, record.width, record.instances], separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def read_sources(folder: Path) -> dict[str, str]:
    """Each mask's digest as the last call left it; nothing (everything is rendered) if unreadable."""
    try:
        sources = json.loads((folder / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}


def write_sources(folder: Path, sources: dict[str, str]) -> None:
    # Not write_json: it indents, and at 80,000 masks the compact form is a fraction of the size.
    with atomic_path(folder / SOURCES_FILE) as tmp:
        tmp.write_text(json.dumps(sources, separators=(",", ":")))


def remove_strays(folder: Path, keep: set[str]) -> None:
    """Delete the masks of images this split no longer indexes (the folder is the run's, filled only here)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".png") and entry.name[:-4] not in keep:
                os.unlink(entry.path)


# ---- pre-rendered masks


def read_prerendered(source: SplitSource, workers: int, progress: Callable[[int], None] | None,
                     first_only: bool) -> tuple[list[Sample], list[Problem], int]:
    """The split's samples from a folder of semantic masks: each mask is one image, its labels the classes its
    pixels hold. Masks without any class pixel are left out and counted, as images without annotations are."""
    year = SPLIT_FOLDERS[source.split]
    masks = sorted(path for path in source.path.iterdir() if path.suffix == ".png" and not path.name.startswith("."))
    if not masks:
        raise UserError(f"pre-rendered mask folder {source.path} holds no .png masks")
    images = []
    for mask in masks:
        # IRN/ReCAM's annToMask.py names a mask by the image's numeric id; MCTformer's releases by its file name.
        name = f"COCO_{year}_{int(mask.stem):012d}.jpg" if mask.stem.isdigit() else f"{mask.stem}.jpg"
        images.append(source.image_dir / name)
    check_images_exist(images)

    def one(mask: Path) -> tuple[tuple[int, ...], str | None]:
        try:
            return labels_from_mask(mask, len(COCO_CLASSES)), None
        except UserError as error:
            return (), one_line(error)

    samples, problems, unlabelled = [], [], 0
    pool = ThreadPoolExecutor(workers)
    try:
        for mask, image, (labels, problem) in zip(masks, images, pool.map(one, masks)):
            if progress is not None:
                progress(1)
            sample_id = check_sample_id(image.stem)
            if problem is not None:  # kept in the list for `without_problems` to move to the index's `skipped`
                samples.append(Sample(sample_id, str(image), str(mask), ()))
                problems.append(Problem(sample_id, problem))
                if first_only:
                    break
            elif labels:
                samples.append(Sample(sample_id, str(image), str(mask), labels))
            else:
                unlabelled += 1
    finally:
        pool.shutdown(cancel_futures=True)
    return samples, problems, unlabelled


def labels_from_mask(mask_path: Path, class_count: int) -> tuple[int, ...]:
    """The classes a mask's pixels hold; a value that is neither a class (0..class_count-1) nor 255 is an error."""
    mask = load_mask(mask_path)
    # bincount rather than np.unique: no sort, which matters over 120,000 masks.
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    invalid = present[(present >= class_count) & (present != IGNORE_INDEX)]
    if invalid.size:
        raise UserError(f"mask {mask_path} has class value {int(invalid[0])}: COCO masks hold 0..{class_count - 1} "
                        f"and {IGNORE_INDEX} (ignore)")
    return tuple(int(value) for value in present if value not in (0, IGNORE_INDEX))
