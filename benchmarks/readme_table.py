"""The one way a benchmark puts its table into README.md: between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`, replacing what was there; and the one way it records the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def write_readme_table(name: str, table: str) -> None:
    start_marker, end_marker = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = README.read_text()
    if start_marker not in text or end_marker not in text:
        print(f"README.md has no {start_marker} ... {end_marker} markers: table not written there", file=sys.stderr)
        return
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    README.write_text(text[:start] + "\n" + table + "\n" + text[end:])


def machine_info(**extra) -> dict:
    """CPU, cores, torch and Python versions (and `extra`), for a benchmark's JSON. torch is imported here, not
    with this module: benchmarks/scaling.py must not hold torch while it launches the stages it measures."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), **extra}
