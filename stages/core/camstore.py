"""The CAM artifact: one HDF5 file per split holding every image's class activation maps.

Layout (schema `wsss.cams`, version 1):
  file attributes: schema, schema_version, wsss_version, class_names (JSON), split, scales (JSON),
                   config (JSON of the stage that wrote it), kind ("cam", or e.g. "cam_raw")
  /cams/<image id>: float16 (K, H, W), gzip-compressed, one channel per labelled foreground class,
                    each max-normalised to [0, 1]; attributes `classes` (K class indices, 1..C) and
                    `image_size` (H, W).
The file is written under a temporary name and renamed when complete. `wsss infer-cam` first writes parts of
the same schema (a few hundred images each, so a killed run keeps its finished parts) and then copies them into
one file (`CamWriter.copy_from`), chunks as they are, without decompressing.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from .errors import UserError

CAM_SCHEMA = "wsss.cams"
CAM_SCHEMA_VERSION = 1


class CamWriter:
    """Collects CAMs into a temporary HDF5 file; `close()` renames it onto `path`, `abort()` deletes it."""

    def __init__(self, path: str | os.PathLike, *, class_names: list[str], split: str, scales: list[float],
                 config: dict[str, Any], kind: str = "cam"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._file = h5py.File(self._tmp, "w")
        attrs = self._file.attrs
        attrs["schema"] = CAM_SCHEMA
        attrs["schema_version"] = CAM_SCHEMA_VERSION
        attrs["wsss_version"] = __version__
        attrs["class_names"] = json.dumps(class_names)
        attrs["split"] = split
        attrs["scales"] = json.dumps(list(scales))
        attrs["config"] = json.dumps(config, default=str)
        attrs["kind"] = kind
        self._group = self._file.create_group("cams")

    def write(self, image_id: str, cams: np.ndarray, classes: np.ndarray, scores: np.ndarray | None = None) -> None:
        """`scores`: the classifier's probability of every foreground class, where the classes were predicted
        (`wsss predict`) rather than given."""
        if cams.ndim != 3 or cams.shape[0] != len(classes):
            raise ValueError(f"cams must be (K, H, W) with K = len(classes), got {cams.shape} for {len(classes)}")
        dataset = self._group.create_dataset(
            image_id, data=cams.astype(np.float16), compression="gzip", compression_opts=1, shuffle=True,
            chunks=cams.shape if cams.size else None,
        )
        dataset.attrs["classes"] = np.asarray(classes, dtype=np.int16)
        dataset.attrs["image_size"] = np.asarray(cams.shape[1:], dtype=np.int32)
        if scores is not None:
            dataset.attrs["scores"] = np.asarray(scores, dtype=np.float32)

    def copy_from(self, reader: "CamReader") -> None:
        """Every image's CAMs of another CAM file, compressed chunks and attributes as they are."""
        for image_id in reader.ids():
            reader._file.copy(reader._file["cams"][image_id], self._group, name=image_id)

    def close(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "CamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CamReader:
    """Reads a CAM file, checking its schema first."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"CAM file not found: {self.path} (run `wsss infer-cam` first)")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise UserError(f"cannot read CAM file {self.path}: {error}") from None
        attrs = self._file.attrs
        if attrs.get("schema") != CAM_SCHEMA or attrs.get("schema_version") != CAM_SCHEMA_VERSION:
            self._file.close()
            raise UserError(f"{self.path} is not a wsss CAM file of schema version {CAM_SCHEMA_VERSION}")
        try:
            self.class_names: list[str] = json.loads(attrs["class_names"])
            self.split: str = str(attrs["split"])
            self.scales: list[float] = json.loads(attrs["scales"])
            self.config: dict[str, Any] = json.loads(attrs["config"])
            self.kind: str = str(attrs["kind"])
            if "cams" not in self._file:
                raise KeyError("cams")
        except (KeyError, ValueError) as error:  # ValueError: an attribute that is not the JSON it should be
            self._file.close()
            raise UserError(f"{self.path} is an incomplete wsss CAM file: {type(error).__name__} {error}") from None

    def ids(self) -> list[str]:
        return list(self._file["cams"].keys())

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._file["cams"]

    def __len__(self) -> int:
        return len(self._file["cams"])

    def read(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) float32 CAMs in [0, 1] and their K foreground class indices."""
        try:
            dataset = self._file["cams"][image_id]
        except KeyError:
            raise UserError(f"image {image_id!r} has no CAM in {self.path}") from None
        return dataset[()].astype(np.float32), np.asarray(dataset.attrs["classes"], dtype=np.int64)

    def scores(self, image_id: str) -> np.ndarray | None:
        """The classifier's per-class probabilities stored with a predicted image's CAMs (None if absent)."""
        scores = self._file["cams"][image_id].attrs.get("scores")
        return None if scores is None else np.asarray(scores, dtype=np.float32)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "CamReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
