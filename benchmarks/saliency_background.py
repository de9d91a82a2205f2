"""How a saliency-background rule (background where saliency < t, as MCIC's CAM seeds use it) splits the true
background and the true objects of a split: the share of each below t, for several t.

    python benchmarks/saliency_background.py RUN SALIENCY_DIR [--split train] [--thresholds 0.1,0.2,0.3,0.5]

Results: printed and written to `benchmarks/results/saliency_background.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.io import IGNORE_INDEX, load_image, load_mask  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.data.saliency_maps import DirectorySaliency  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "saliency_background.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("saliency", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--thresholds", default="0.1,0.2,0.3,0.5")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (another regime's runs: the same name with -<regime>)")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    source = DirectorySaliency(str(args.saliency))
    below = {"background": np.zeros(len(thresholds)), "object": np.zeros(len(thresholds))}
    counts = {"background": 0, "object": 0}
    samples = Run(args.run).dataset().split(args.split)
    for sample in samples:
        mask = load_mask(sample.mask)
        saliency = source(sample.id, load_image(sample.image))
        for name, region in (("background", mask == 0), ("object", (mask > 0) & (mask != IGNORE_INDEX))):
            values = saliency[region]
            counts[name] += values.size
            below[name] += [(values < t).sum() for t in thresholds]
    results = {"run": str(args.run), "saliency": str(args.saliency), "split": args.split, "images": len(samples),
               "thresholds": thresholds,
               "share_below": {name: (below[name] / max(counts[name], 1)).round(4).tolist() for name in below}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for index, t in enumerate(thresholds):
        print(f"saliency < {t}: {results['share_below']['background'][index]:.1%} of background pixels, "
              f"{results['share_below']['object'][index]:.1%} of object pixels")


if __name__ == "__main__":
    main()
