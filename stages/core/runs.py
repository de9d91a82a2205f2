"""The run folder: where every stage reads its inputs and writes its outputs, and its manifest.

`manifest.json` has one entry per stage invocation key (e.g. `train-cam`, `pseudo-label/crf`): the config,
input and output paths with their fingerprints, start time, duration and metrics, so a reader can tell what
produced each file, and a stage can tell whether it is up to date: same config, inputs unchanged since it ran,
outputs as it left them. Then it is skipped (`--force` runs it anyway); otherwise it runs again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..data.index import DatasetIndex
from .console import console
from .distributed import processes
from .errors import UserError
from .io import json_ready, read_json, write_json

MANIFEST = "manifest.json"
DATASET_INDEX = "dataset.json"
# Config keys that change how a stage runs, not what it computes: they neither make a stage stale nor stop a resume.
EXECUTION_ONLY = ("workers", "part_size")
# Files up to this size are fingerprinted by content, larger ones (CAM files, checkpoints of big backbones) and
# directories by size and modification time, which every atomic rewrite changes.
CONTENT_HASH_LIMIT = 16 * 2**20


def fingerprint(path: str | Path) -> str | None:
    """A short string that changes when the file or directory at `path` changes; None if it does not exist."""
    path = Path(path)
    digest = hashlib.sha1()
    if path.is_file():
        stat = path.stat()
        if stat.st_size <= CONTENT_HASH_LIMIT:
            digest.update(path.read_bytes())
        else:
            digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    else:
        return None
    return digest.hexdigest()[:16]


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as the manifest stores it (JSON types), without the execution-only keys."""
    return {key: value for key, value in json_ready(config).items() if key not in EXECUTION_ONLY}


@dataclass
class StageRecord:
    """What a stage fills in while it runs; written to the manifest only if the stage succeeds."""

    key: str
    config: dict[str, Any]
    inputs: list[str | Path] = field(default_factory=list)
    outputs: list[str | Path] = field(default_factory=list)
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

    def up_to_date(self, key: str, config: dict[str, Any], inputs: list[str | Path], force: bool = False
                   ) -> dict[str, Any] | None:
        """The recorded metrics of stage `key` if it need not run again (and says so), else None: it ran to the
        end with this config, its inputs are unchanged since, and its outputs are still as it wrote them."""
        entry = self.manifest()["stages"].get(key)
        if force or entry is None or "fingerprints" not in entry:
            return None
        recorded = entry["fingerprints"]
        current_inputs = {self._relative(p): fingerprint(p) for p in inputs}
        if (comparable(entry["config"]) != comparable(config) or recorded["inputs"] != current_inputs
                or any(fingerprint(self.root / path) != value for path, value in recorded["outputs"].items())):
            return None
        console.print(f"{key}: up to date (same config and inputs as its run of {entry['started']}); "
                      "--force runs it again")
        return entry["metrics"]

    @contextlib.contextmanager
    def stage(self, key: str, config: dict[str, Any], inputs: list[str | Path] = ()) -> Iterator[StageRecord]:
        """Time a stage and, if it finishes without error, record it in the manifest (the main process only).

        Inputs are fingerprinted as the stage starts, outputs as it ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = StageRecord(key=key, config=config, inputs=list(inputs))
        input_prints = {self._relative(p): fingerprint(p) for p in record.inputs}
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        yield record
        if not processes().is_main:
            return
        input_prints.update({self._relative(p): fingerprint(p) for p in record.inputs
                             if self._relative(p) not in input_prints})
        manifest = self.manifest()
        manifest["stages"][key] = {
            "config": json_ready(record.config),
            "inputs": [self._relative(p) for p in record.inputs],
            "outputs": [self._relative(p) for p in record.outputs],
            "fingerprints": {"inputs": input_prints,
                             "outputs": {self._relative(p): fingerprint(p) for p in record.outputs}},
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
