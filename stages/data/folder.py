"""Reader for users' own data: a folder of images plus a labels file naming the classes in each image.

Layout:
  root/images/*.jpg|jpeg|png|bmp|webp   (or the images directly in root)
  root/labels.csv or root/labels.json   (see `read_labels_csv` / `read_labels_json`)
  root/classes.txt                      (the class names in order, one per line; or `classes` in labels.json,
                                         or `data folder --classes a,b,c`: exactly one of the three)
  root/masks/{id}.png                   (optional ground truth, used only for evaluation)
Images the labels file does not mention are left out. The class list is explicit so that a typo in a label is an
error (naming the closest class) rather than a new class, names may hold spaces (`potted plant`), and class ids
follow the given order (1 for the first name).
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

from ..core.errors import UserError
from .index import BACKGROUND, DatasetIndex, Sample, check_sample_id

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_SPLIT = "train"
# Split names become file names in the run folder.
SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


class LabelEntry(NamedTuple):
    names: list[str]
    split: str


def read_folder(root: Path, labels_file: Path | None = None, classes: tuple[str, ...] = (),
                progress: Callable[[int], None] | None = None) -> DatasetIndex:
    """Index `root` with the class list `classes` (or the one the folder gives); `progress(1)` is called once per
    labelled image."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    root = root.resolve()
    image_dir = root / "images" if (root / "images").is_dir() else root
    images = find_images(image_dir)
    labels_path = find_labels_file(root, labels_file)
    entries, json_classes = read_labels_json(labels_path) if labels_path.suffix.lower() == ".json" else (None, None)
    foreground = [name for name in class_list(root, classes, json_classes, labels_path) if name != BACKGROUND]
    if entries is None:  # a CSV's label cells are split with the class list (names may hold spaces)
        entries = read_labels_csv(labels_path, foreground)
    if not entries:
        raise UserError(f"labels file {labels_path} lists no images")
    class_names = [BACKGROUND, *foreground]
    class_index = {name: index for index, name in enumerate(class_names)}

    splits: dict[str, list[Sample]] = {}
    for sample_id, entry in entries.items():
        if not entry.names:
            raise UserError(f"image {sample_id!r} has no labels in {labels_path}: "
                            "weak supervision needs at least one class per image")
        if BACKGROUND in entry.names:
            raise UserError(f"image {sample_id!r} is labelled {BACKGROUND!r} in {labels_path}: "
                            "list only the foreground classes")
        for name in entry.names:
            if name not in class_index:
                raise unknown_class(name, sample_id, foreground)
        if sample_id not in images:
            raise UserError(f"labels file {labels_path} lists image {sample_id!r} but {image_dir} has no "
                            f"{sample_id} with extension {'/'.join(IMAGE_EXTENSIONS)}")
        if not SPLIT_NAME.fullmatch(entry.split):
            raise UserError(f"invalid split {entry.split!r} for image {sample_id!r}: "
                            "use letters, digits, '_' and '-' only")
        mask_path = root / "masks" / f"{sample_id}.png"
        labels = tuple(sorted({class_index[name] for name in entry.names}))
        splits.setdefault(entry.split, []).append(
            Sample(sample_id, str(images[sample_id]), str(mask_path) if mask_path.is_file() else None, labels))
        if progress is not None:
            progress(1)

    return DatasetIndex(name=root.name, format="folder", root=str(root), class_names=class_names, splits=splits)


CLASSES_FILE = "classes.txt"


def class_list(root: Path, given: tuple[str, ...], json_classes: list[str] | None, labels_path: Path) -> list[str]:
    """The class names in order, from exactly one of `--classes`, labels.json's `classes` and ROOT/classes.txt."""
    classes_file = root / CLASSES_FILE
    sources = {}
    if given:
        sources["--classes"] = check_class_list(list(given), Path("--classes"))
    if json_classes is not None:
        sources[f"'classes' in {labels_path}"] = json_classes
    if classes_file.is_file():
        lines = [line.strip() for line in classes_file.read_text(encoding="utf-8-sig").splitlines()]
        sources[str(classes_file)] = check_class_list([line for line in lines if line], classes_file)
    if not sources:
        raise UserError(f"no class list for {root}: give the class names in order in {classes_file} (one per "
                        f"line), as 'classes' in labels.json, or with --classes a,b,c (ids follow that order)")
    if len(sources) > 1:
        raise UserError(f"the class list is given twice ({' and '.join(sources)}): keep one")
    return next(iter(sources.values()))


def unknown_class(name: str, sample_id: str, classes: list[str]) -> UserError:
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return UserError(f"unknown class {name!r} for image {sample_id!r} ({hint}classes: {', '.join(classes)})")


def split_label_names(text: str, classes: list[str]) -> list[str]:
    """A labels cell as class names: split at ';' or '|' when it has them; otherwise its words are matched
    against the class list, longest name first, so that `potted plant cat` is two classes. A word that starts
    no class name stays a name of its own (reported as unknown)."""
    if any(separator in text for separator in ";|"):
        return [name.strip() for name in re.split(r"[;|]", text) if name.strip()]
    words, names = text.split(), []
    longest = max((len(name.split()) for name in classes), default=1)
    while words:
        for size in range(min(longest, len(words)), 0, -1):
            candidate = " ".join(words[:size])
            if candidate in classes or size == 1:
                names.append(candidate)
                words = words[size:]
                break
    return names


def find_images(image_dir: Path) -> dict[str, Path]:
    """Image files by id (file stem); two files with one stem would make the id ambiguous."""
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if path.stem in images:
            raise UserError(f"two images share the id {path.stem!r}: {images[path.stem].name} and {path.name} "
                            f"in {image_dir}")
        images[path.stem] = path
    return images


def find_labels_file(root: Path, labels_file: Path | None) -> Path:
    if labels_file is not None:
        labels_file = Path(labels_file)
        if not labels_file.is_file():
            raise UserError(f"labels file not found: {labels_file}")
        if labels_file.suffix.lower() not in (".csv", ".json"):
            raise UserError(f"labels file {labels_file} must be a .csv or .json file")
        return labels_file
    for candidate in (root / "labels.csv", root / "labels.json"):
        if candidate.is_file():
            return candidate
    raise UserError(f"no labels file in {root}: expected labels.csv or labels.json (or pass one explicitly)")


def read_labels_csv(path: Path, classes: list[str]) -> dict[str, LabelEntry]:
    """A CSV with a header holding `id` and `labels` (names separated by ';', '|' or spaces; see
    `split_label_names`), optionally `split`."""
    entries: dict[str, LabelEntry] = {}
    # utf-8-sig: spreadsheet programs often start a CSV with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        try:
            header = [column.strip().lower() for column in reader.fieldnames or []]
            if "id" not in header or "labels" not in header:
                raise UserError(f"labels file {path} needs a header with 'id' and 'labels' columns, got {header}")
            reader.fieldnames = header
            for row in reader:
                sample_id = check_sample_id((row["id"] or "").strip())
                if sample_id in entries:
                    raise UserError(f"duplicate image id {sample_id!r} in {path} (line {reader.line_num})")
                names = split_label_names(row["labels"] or "", classes)
                split = (row.get("split") or "").strip() or DEFAULT_SPLIT
                entries[sample_id] = LabelEntry(names, split)
        except (UnicodeDecodeError, csv.Error) as error:
            raise UserError(f"cannot read labels file {path}: {error}") from None
    return entries


def read_labels_json(path: Path) -> tuple[dict[str, LabelEntry], list[str] | None]:
    """Either {"classes": [...], "images": {id: [names] or {"labels": [names], "split": s}}} or {id: [names]}.

    Returns the entries and the declared class names (None when the file declares none).
    """
    data = parse_json_without_duplicate_keys(path)
    if not isinstance(data, dict):
        raise UserError(f"labels file {path} must hold a JSON object")
    if isinstance(data.get("images"), dict):
        images, declared_classes = data["images"], data.get("classes")
    elif "classes" in data:
        raise UserError(f"labels file {path} has 'classes' but no 'images' object mapping ids to labels")
    else:
        images, declared_classes = data, None
    if declared_classes is not None:
        declared_classes = check_class_list(declared_classes, path)

    entries: dict[str, LabelEntry] = {}
    for sample_id, value in images.items():
        check_sample_id(sample_id)
        if isinstance(value, dict):
            names, split = value.get("labels"), value.get("split", DEFAULT_SPLIT)
        else:
            names, split = value, DEFAULT_SPLIT
        if not is_string_list(names) or not isinstance(split, str):
            raise UserError(f"image {sample_id!r} in {path}: expected a list of class names, "
                            "or an object with 'labels' (a list of class names) and optionally 'split'")
        entries[sample_id] = LabelEntry([name.strip() for name in names if name.strip()], split)
    return entries, declared_classes


def parse_json_without_duplicate_keys(path: Path) -> Any:
    """The JSON in `path`; a key given twice is an error, where `json` would silently keep the last one (an image
    listed twice would lose its first labels)."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in pairs:
            if key in data:
                raise UserError(f"duplicate key {key!r} in labels file {path}: each image id may appear once")
            data[key] = value
        return data

    try:
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"labels file {path} is not valid JSON: {error}") from None


def check_class_list(classes: Any, path: Path) -> list[str]:
    if not is_string_list(classes) or not all(name.strip() for name in classes):
        raise UserError(f"'classes' in {path} must be a list of non-empty class names")
    names = [name.strip() for name in classes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"'classes' in {path} lists {duplicates[0]!r} more than once")
    return names


def is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
