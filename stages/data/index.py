"""The dataset index: which images and masks make each split, the class names, and each image's labels.

`wsss data synth|voc|folder` writes it as `dataset.json` in the run folder; every later stage reads it from
there, so the stages never need to know which layout the images came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..core.io import read_json, write_json

INDEX_SCHEMA = "wsss.dataset-index"
INDEX_VERSION = 1
BACKGROUND = "background"


@dataclass(frozen=True)
class Sample:
    """One image. `labels` are the foreground class indices present (1..C; 0 is background)."""

    id: str
    image: str
    mask: str | None
    labels: tuple[int, ...]


@dataclass(frozen=True)
class SkippedSample:
    """An image `wsss data ... --skip-bad` left out of a split, and why (one line)."""

    id: str
    split: str
    reason: str


@dataclass
class DatasetIndex:
    name: str
    format: str  # "synth", "voc" or "folder"
    root: str
    class_names: list[str]  # index 0 is background
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    skipped: list[SkippedSample] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Foreground classes, without background."""
        return len(self.class_names) - 1

    @property
    def training_split(self) -> str:
        """The split the training stages learn from by default, as the field does: VOC's `train_aug` when the
        index has it (SBD's 10,582 images), else `train`; CAMs and pseudo masks are scored on `train`, the
        segmenter on `val`."""
        return "train_aug" if self.format == "voc" and "train_aug" in self.splits else "train"

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            known = ", ".join(sorted(self.splits)) or "none"
            raise UserError(f"unknown split {name!r} in dataset {self.name!r} (known: {known})")
        return self.splits[name]

    def class_index(self, class_name: str) -> int:
        try:
            return self.class_names.index(class_name)
        except ValueError:
            raise UserError(f"unknown class {class_name!r} (known: {', '.join(self.class_names[1:])})") from None

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        data["schema"] = INDEX_SCHEMA
        data["version"] = INDEX_VERSION
        write_json(path, data)

    @classmethod
    def load(cls, path: str | Path) -> "DatasetIndex":
        data = read_json(path, "dataset index")
        if data.get("schema") != INDEX_SCHEMA or data.get("version") != INDEX_VERSION:
            raise UserError(f"{path} is not a wsss dataset index of version {INDEX_VERSION}")
        splits = {
            split: [Sample(s["id"], s["image"], s["mask"], tuple(s["labels"])) for s in samples]
            for split, samples in data["splits"].items()
        }
        # Indexes written before bad images could be skipped have no `skipped` list.
        skipped = [SkippedSample(s["id"], s["split"], s["reason"]) for s in data.get("skipped", [])]
        return cls(data["name"], data["format"], data["root"], list(data["class_names"]), splits, skipped)


def check_sample_id(sample_id: str) -> str:
    """Ids name files and HDF5 datasets: refuse anything that could escape a folder."""
    if not sample_id or "/" in sample_id or "\\" in sample_id or sample_id in (".", "..") or "\0" in sample_id:
        raise UserError(f"invalid image id {sample_id!r}: ids may not be empty or contain path separators")
    return sample_id
