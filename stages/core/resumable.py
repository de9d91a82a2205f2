"""Output directories filled across interrupted runs: one file per image (or per part), each written atomically.

While a stage fills a directory, `.in-progress.json` there records what the files are made from (the stage
config and its inputs' fingerprints). A run that finds this marker with the same identity keeps the finished
files and does only the rest: that is resuming. Any other run (another identity, or a directory a finished run
left, which has no marker) deletes the files first, so stale files never mix with new ones. Temporary files a
killed run left behind are deleted either way. `finish_directory` removes the marker when the stage is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distributed import Processes
from .io import json_ready, read_json, write_json

IN_PROGRESS = ".in-progress.json"


def resumable_directory(directory: str | Path, identity: dict[str, Any], procs: Processes) -> set[str]:
    """Make `directory` hold only files of an interrupted run with this `identity`; their names."""
    directory = Path(directory)
    identity = json_ready(identity)
    marker = directory / IN_PROGRESS
    if procs.is_main:
        if directory.is_dir():
            resuming = marker.is_file() and read_json(marker, "progress marker") == identity
            for path in directory.iterdir():
                if path.is_file() and (path.name.endswith(".tmp") or (not resuming and path.name != IN_PROGRESS)):
                    path.unlink()
        write_json(marker, identity)
    procs.barrier()
    return {path.name for path in directory.iterdir() if path.is_file() and not path.name.startswith(".")}


def finish_directory(directory: str | Path, procs: Processes) -> None:
    """The directory is complete: a later run starts it afresh instead of resuming."""
    procs.barrier()
    if procs.is_main:
        (Path(directory) / IN_PROGRESS).unlink(missing_ok=True)
