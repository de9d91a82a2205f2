"""Does each part of SEAM do its job on held-out images? Two measurements per trained run.

    python benchmarks/seam_analysis.py runs/methods/baseline-s0 runs/methods/seam-s0 [--split val]

1. Scale equivariance, the quantity SEAM's ER trains: for each image I the distance ER uses,
   mean |A(CAM(I)) - CAM(A(I))| with A a rescale by `--scale` (0.5, SEAM's second view here), both maps min-max
   normalised per class (SEAM's `max_norm`) over the image's labelled classes. For the raw CAMs (`raw_cams` where
   the method refines its CAMs) and the refined ones. Lower is more equivariant.
2. For methods with a PCM: how much of each pixel's affinity row falls on pixels of its own ground-truth class
   (background included), at the feature resolution (ground truth resized by nearest neighbour, 255 left out),
   against chance (a uniform row: the share of the image's pixels in that class), and the row's effective
   number of sources (exp of its entropy) as a share of the map. An affinity that helps refinement puts far more
   than chance on the own class; one near chance and spread over the map only blurs the CAM.
Results: `benchmarks/results/seam_analysis.json`, or `--out` (for the runs of another regime).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.checkpoint import load_checkpoint  # noqa: E402
from stages.core.io import IGNORE_INDEX, load_image  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.core.normalization import Normalization  # noqa: E402
from stages.evaluate import labelled_samples, load_ground_truth  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from stages.methods.common import max_norm  # noqa: E402
from stages.methods.seam import spatial_transform  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "seam_analysis.json"


@torch.inference_mode()
def equivariance_error(cam_function, images: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Per image: mean over its labelled classes and pixels of |A(max_norm(CAM(I))) - max_norm(CAM(A(I)))|."""
    small = spatial_transform(images, "rescale", scale)
    small_cams = max_norm(cam_function(small).float())
    aligned = spatial_transform(max_norm(cam_function(images).float()), "rescale", size=small_cams.shape[-2:])
    per_class = (aligned - small_cams).abs().mean(dim=(-2, -1))
    return (per_class * labels).sum(dim=1) / labels.sum(dim=1).clamp(min=1)


@torch.inference_mode()
def affinity_focus(model, image: torch.Tensor, gt: np.ndarray) -> tuple[float, float, float, int]:
    """Sums over one image's labelled feature pixels of (own-class affinity mass, chance mass, effective
    sources share), and their count."""
    _, features = model.cam_and_features(image)
    affinity = model.pcm_affinity(features, image)[0]
    size = features[-1].shape[-2:]
    small_gt = F.interpolate(torch.from_numpy(gt.astype(np.int64))[None, None].float(), size=size,
                             mode="nearest").flatten().long()
    keep = small_gt != IGNORE_INDEX
    same = (small_gt[:, None] == small_gt[None, :]) & keep[None, :]
    own_mass = (affinity * same).sum(dim=1) / affinity.sum(dim=1).clamp(min=1e-12)
    chance = same.sum(dim=1) / keep.sum()
    rows = affinity / affinity.sum(dim=1, keepdim=True).clamp(min=1e-12)
    entropy = -(rows * rows.clamp(min=1e-12).log()).sum(dim=1)
    effective = entropy.exp() / rows.shape[1]
    return (float(own_mass[keep].sum()), float(chance[keep].sum()), float(effective[keep].sum()),
            int(keep.sum()))


def measure(run_dir: Path, split: str, scale: float, limit: int) -> dict:
    run = Run(run_dir)
    path = run.cam_checkpoint.require()
    payload = load_checkpoint(path, "cam")
    model = cam_model_from_checkpoint(payload, path)
    index = run.dataset()
    samples = labelled_samples(index, split)[:limit]
    functions = {"raw": getattr(model, "raw_cams", model.cams)}
    if hasattr(model, "raw_cams"):
        functions["refined"] = model.cams
    has_pcm = hasattr(model, "pcm_affinity")
    errors = dict.fromkeys(functions, 0.0)
    focus = np.zeros(4)
    for sample in samples:
        image = Normalization()(load_image(sample.image))[None]
        labels = torch.zeros(1, len(payload["class_names"]) - 1)
        labels[0, [c - 1 for c in sample.labels]] = 1
        for name, function in functions.items():
            errors[name] += float(equivariance_error(function, image, labels, scale).sum())
        if has_pcm:
            focus += affinity_focus(model, image, load_ground_truth(index, sample))
    result = {"run": str(run_dir), "method": payload["config"]["method"],
              "output_stride": payload["config"]["model"]["output_stride"], "split": split, "scale": scale,
              "images": len(samples), **{f"{name}_equivariance_error": total / len(samples)
                                         for name, total in errors.items()}}
    if has_pcm:
        result.update(affinity_own_class_mass=focus[0] / focus[3], affinity_chance_mass=focus[1] / focus[3],
                      affinity_effective_sources=focus[2] / focus[3])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--images", type=int, default=200, help="the split's first N labelled images")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (another regime's runs: the same name with -<regime>)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run_dir in args.runs:
        result = measure(run_dir, args.split, args.scale, args.images)
        results[run_dir.name] = result
        print(json.dumps(result), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
