"""The one way a benchmark puts its table into README.md: between `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->`, replacing what was there."""

from __future__ import annotations

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
