"""The run folder: its layout (`core.layout`), its manifest, and `Run.execute`, the one way a stage runs.

`manifest.json` has one entry per stage invocation key (e.g. `train-cam`, `pseudo-label/crf`): the config,
input and output paths with their fingerprints, start time, duration and metrics, so a reader can tell what
produced each file, and a stage can tell whether it is up to date: same config, inputs unchanged since it ran,
outputs as it left them. Then it is skipped (`--force` runs it anyway); otherwise it runs again.

Staleness runs down the chain, as make's does: a stage is stale when one of its inputs changed since it ran, or
came from a stage that is stale, or came from a stage whose later run started and did not finish (`unfinished`
holds each stage from its start to its end). A stage refuses an input whose producer is stale, naming it
(`--force` uses the input as it is), and `summary` marks the results of stale stages.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..data.index import DatasetIndex
from .console import console
from .distributed import processes
from .errors import UserError
from .io import json_ready, read_json, write_json
from .layout import Layout
from .resumable import resumable_directory

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


def config_record(config: Any) -> dict[str, Any]:
    """A stage's config (a dataclass or a dict) as JSON values, as the manifest records it."""
    return json_ready(asdict(config) if is_dataclass(config) else config)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as the manifest stores it (JSON types), without the execution-only keys."""
    return {key: value for key, value in json_ready(config).items() if key not in EXECUTION_ONLY}


def producers(entries: dict[str, Any]) -> dict[str, str]:
    """Each recorded output path (relative to the run) → the key of the stage that wrote it."""
    return {path: key for key, entry in entries.items() for path in entry.get("outputs", [])}


@dataclass
class Stage:
    """What a stage hands to `Run.execute`: its manifest key (e.g. `train-cam`, `pseudo-label/crf`), its config,
    the files it reads (fingerprinted as it starts: a change makes it stale), the files and folders it writes
    (fingerprinted as it ends) and `work`, which writes them and returns the stage's metrics."""

    key: str
    config: Any  # a config dataclass, or a dict of JSON values
    inputs: list[Path]
    outputs: list[Path]
    work: Callable[[], dict[str, Any]]


class Run(Layout):
    """The run folder: its layout (`Layout`: every artifact's path) and its manifest."""

    def dataset(self) -> DatasetIndex:
        return DatasetIndex.load(self.dataset_index.require())

    def manifest(self) -> dict[str, Any]:
        path = self.manifest_path
        if not path.exists():
            return {"wsss_version": __version__, "stages": {}}
        return read_json(path, "manifest")

    def execute(self, stage: Stage, force: bool = False) -> dict[str, Any]:
        """Run `stage` unless it is up to date, and record it in the manifest if it finishes: the one way every
        stage runs. Returns its metrics (the recorded ones when it is skipped)."""
        processes()  # under torchrun: join the process group first, so that only the main process speaks
        config = config_record(stage.config)
        input_prints = {self._relative(p): fingerprint(p) for p in stage.inputs}  # as the stage starts
        if not force:
            self._check_fresh_inputs(stage)
        done = None if force else self._recorded_metrics(stage.key, config, input_prints)
        if done is not None:
            self._say_where(stage, "is in")
            return done
        self.root.mkdir(parents=True, exist_ok=True)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        if processes().is_main:  # until it ends, what this stage made before is not what it is making now
            manifest = self.manifest()
            manifest.setdefault("unfinished", {})[stage.key] = {"started": started.isoformat(timespec="seconds"),
                                                                "config": config}
            write_json(self.manifest_path, manifest)
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        metrics = stage.work()
        if processes().is_main:
            manifest = self.manifest()
            manifest.get("unfinished", {}).pop(stage.key, None)
            manifest["stages"][stage.key] = {
                "config": config,
                "inputs": [self._relative(p) for p in stage.inputs],
                "outputs": [self._relative(p) for p in stage.outputs],
                "fingerprints": {"inputs": input_prints,
                                 "outputs": {self._relative(p): fingerprint(p) for p in stage.outputs}},
                "started": started.isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - clock, 2),
                **peak_memory(),
                "metrics": metrics,
                "wsss_version": __version__,
            }
            write_json(self.manifest_path, manifest)
        self._say_where(stage, "wrote")
        return metrics

    def _say_where(self, stage: Stage, verb: str) -> None:
        """The stage's last line: where its outputs are, so the user can open them or hand them to the next stage."""
        if processes().is_main:
            console.print(f"{stage.key} {verb} {', '.join(str(path) for path in stage.outputs)}", markup=False,
                          highlight=False, soft_wrap=True)

    def staleness(self) -> dict[str, str]:
        """The stale stages of the manifest, each with why (see the module docstring)."""
        manifest = self.manifest()
        reason = self._stale_reasons(manifest)
        return {key: why for key in manifest["stages"] if (why := reason(key))}

    def _stale_reasons(self, manifest: dict[str, Any]) -> Callable[[str], str]:
        """A function from a stage key to why that stage is stale ("" when it is not), which fingerprints only
        the files on the chain it follows, each once."""
        entries, unfinished = manifest["stages"], manifest.get("unfinished", {})
        producer = producers(entries)
        prints: dict[str, str | None] = {}
        known: dict[str, str] = {}

        def reason(key: str) -> str:
            if key not in known:
                known[key] = ""  # a cycle (none should exist) ends here
                known[key] = self._why_stale(key, entries, unfinished, producer, prints, reason)
            return known[key]

        return reason

    def _why_stale(self, key, entries, unfinished, producer, prints, reason) -> str:
        for path, value in entries[key].get("fingerprints", {}).get("inputs", {}).items():
            if path not in prints:
                prints[path] = fingerprint(self.root / path)
            source = producer.get(path)
            if prints[path] != value:
                return f"{path} changed since it ran"
            if source in unfinished and source != key:
                return (f"{path} is from {source}'s run of {entries[source]['started']}, and its later run (started "
                        f"{unfinished[source]['started']}) did not finish")
            if source is not None and source != key and reason(source):
                return f"{path} comes from {source}, which is stale"
        return ""

    def _check_fresh_inputs(self, stage: Stage) -> None:
        """A one-line error if an input of `stage` comes from a stale stage (`--force` skips the check)."""
        manifest = self.manifest()
        producer, unfinished = producers(manifest["stages"]), manifest.get("unfinished", {})
        reason = self._stale_reasons(manifest)
        for path in (self._relative(p) for p in stage.inputs):
            source = producer.get(path)
            if source is None or source == stage.key:
                continue
            why = (f"its later run (started {unfinished[source]['started']}) did not finish"
                   if source in unfinished else reason(source))
            if why:
                raise UserError(f"{path} is out of date: it was made by {source}, and {why}; run {source} again "
                                f"first (or pass --force to use it as it is)")

    def resumable_folder(self, stage: Stage, folder: Path, **identity: Any) -> set[str]:
        """Prepare `folder` to receive `stage`'s per-image files: the names of those an interrupted run of the same
        stage (same config and inputs, same `identity`) finished are returned and kept; anything else is cleared.
        The folder's progress marker goes once the stage calls `finish_directory`."""
        return resumable_directory(folder, {**comparable(config_record(stage.config)),
                                            "inputs": [fingerprint(p) for p in stage.inputs], **identity}, processes())

    def _recorded_metrics(self, key: str, config: dict[str, Any], input_prints: dict[str, str | None]
                          ) -> dict[str, Any] | None:
        """The recorded metrics of stage `key` if it need not run again (and says so), else None: it ran to the
        end with this config, its inputs (`input_prints`, their fingerprints now) are unchanged since, and its
        outputs are still as it wrote them."""
        entry = self.manifest()["stages"].get(key)
        if entry is None or "fingerprints" not in entry:
            return None
        recorded = entry["fingerprints"]
        if (comparable(entry["config"]) != comparable(config) or recorded["inputs"] != input_prints
                or any(fingerprint(self.root / path) != value for path, value in recorded["outputs"].items())):
            return None
        console.print(f"{key}: up to date (same config and inputs as its run of {entry['started']}); "
                      "--force runs it again")
        return entry["metrics"]

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def peak_memory() -> dict[str, float]:
    """The stage's peak memory for its manifest entry: the process's peak resident set in MiB (since the process
    started: a `wsss` command runs one stage, a script running several reports the largest so far; loader and
    CRF worker processes not included) and, on CUDA, the peak of the GPU memory the stage allocated."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peaks = {"peak_rss_mib": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    cuda = _cuda()
    if cuda is not None:
        peaks["peak_gpu_mib"] = round(cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def _cuda():
    """torch.cuda when torch is loaded and sees a GPU, else None. A stage that never imported torch (evaluate,
    report, summary) used no GPU, and importing torch only to ask would cost each of them a second."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None
