"""Output directories filled across interrupted runs: one file per image (or per part), each written atomically.

A directory records what its files are made from (`.identity.json`: the stage config and its inputs'
fingerprints). A later run with the same identity keeps the finished files and does only the rest; a run with
another identity deletes them first, so stale files never mix with new ones. Temporary files a killed run left
behind are deleted either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distributed import Processes
from .io import json_ready, read_json, write_json

IDENTITY = ".identity.json"


def resumable_directory(directory: str | Path, identity: dict[str, Any], procs: Processes) -> set[str]:
    """Make `directory` hold only files made from `identity`; the names of the files already there."""
    directory = Path(directory)
    identity = json_ready(identity)
    marker = directory / IDENTITY
    if procs.is_main:
        if directory.is_dir():
            stale = not marker.is_file() or read_json(marker, "output identity") != identity
            for path in directory.iterdir():
                if path.is_file() and (path.name.endswith(".tmp") or (stale and path.name != IDENTITY)):
                    path.unlink()
        write_json(marker, identity)
    procs.barrier()
    return {path.name for path in directory.iterdir() if path.is_file() and not path.name.startswith(".")}
