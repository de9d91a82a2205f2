"""The one way a benchmark puts its table into the docs: between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`, replacing what was there, in whichever of README.md and benchmarks/README.md holds
that marker pair; and the one way it records the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCHMARKS_README = ROOT / "benchmarks" / "README.md"
DOCS = (README, BENCHMARKS_README)  # the files a table's markers may be in


def write_readme_table(name: str, table: str) -> None:
    """Replace what is between the `bench:NAME` markers with `table`, in the file that holds them; a warning on
    stderr, and nothing written, when neither file does."""
    start_marker, end_marker = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    written = False
    for doc in DOCS:
        if not doc.exists():
            continue
        text = doc.read_text()
        if start_marker not in text or end_marker not in text:
            continue
        start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
        doc.write_text(text[:start] + "\n" + table + "\n" + text[end:])
        written = True
    if not written:
        print(f"neither README.md nor benchmarks/README.md has {start_marker} ... {end_marker} markers: "
              "table not written", file=sys.stderr)


def machine_info(**extra) -> dict:
    """CPU, cores, torch and Python versions (and `extra`), for a benchmark's JSON. torch is imported here, not
    with this module: benchmarks/scaling.py must not hold torch while it launches the stages it measures."""
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), **extra}


def cpu_name() -> str:
    """The CPU's model name and its matrix extensions (AMX, AVX512-BF16: what bfloat16 speed depends on); the
    architecture where /proc/cpuinfo is not there."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    extensions = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return f"{model} ({', '.join(extensions) or 'no native bf16'})"
