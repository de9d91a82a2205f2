"""Write a split's ground-truth foreground as saliency maps (<id>.png, 255 = object): the saliency a perfect
detector would give, to measure how far a saliency-based method is limited by its saliency source.

    python benchmarks/gt_saliency.py RUN OUT_DIR [--split train]

An upper bound only: using it in training or pseudo-labelling puts ground truth into a weakly supervised pipeline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.core.io import IGNORE_INDEX, load_mask  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.data.saliency_maps import save_saliency  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    samples = Run(args.run).dataset().split(args.split)
    for sample in samples:
        if sample.mask is None:
            sys.exit(f"error: {sample.id} has no ground-truth mask")
        mask = load_mask(sample.mask)
        save_saliency(args.out / f"{sample.id}.png", ((mask != 0) & (mask != IGNORE_INDEX)).astype(np.float32))
    print(f"{len(samples)} ground-truth foreground maps in {args.out}")


if __name__ == "__main__":
    main()
