"""The run folder: where every stage reads its inputs and writes its outputs, and its manifest.

`manifest.json` has one entry per stage invocation key (e.g. `train-cam`, `pseudo-label/crf`): the config,
input and output paths, start time, duration and metrics, so a reader can tell what produced each file.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..data.index import DatasetIndex
from .errors import UserError
from .io import read_json, write_json

MANIFEST = "manifest.json"
DATASET_INDEX = "dataset.json"


@dataclass
class StageRecord:
    """What a stage fills in while it runs; written to the manifest only if the stage succeeds."""

    key: str
    config: dict[str, Any]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class Run:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def require(self, relative: str | Path, hint: str) -> Path:
        """The path of an input artifact, or a one-line error naming the stage that makes it."""
        path = self.root / relative
        if not path.exists():
            raise UserError(f"missing input {path}: {hint}")
        return path

    def dataset(self) -> DatasetIndex:
        self.require(DATASET_INDEX, "run `wsss data synth` (or `wsss data voc` / `wsss data folder`) first")
        return DatasetIndex.load(self.root / DATASET_INDEX)

    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.exists():
            return {"wsss_version": __version__, "stages": {}}
        return read_json(path, "manifest")

    @contextlib.contextmanager
    def stage(self, key: str, config: dict[str, Any]) -> Iterator[StageRecord]:
        """Time a stage and, if it finishes without error, record it in the manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = StageRecord(key=key, config=config)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        yield record
        manifest = self.manifest()
        manifest["stages"][key] = {
            "config": record.config,
            "inputs": [self._relative(p) for p in record.inputs],
            "outputs": [self._relative(p) for p in record.outputs],
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - clock, 2),
            "metrics": record.metrics,
            "wsss_version": __version__,
        }
        write_json(self.root / MANIFEST, manifest)

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)
