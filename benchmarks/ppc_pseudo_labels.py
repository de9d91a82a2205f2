"""How right are PPC's online pseudo labels and prototype pixels? Scores them against ground truth on the grids
PPC works on, for trained CAM checkpoints. Results: `benchmarks/results/ppc_pseudo_labels.json` (or `--out`).

    python benchmarks/ppc_pseudo_labels.py RUN [RUN ...] [--images 512] [--bg-threshold 0.2]

For each run's `cam/checkpoint.pt` it takes training crops (the stage's augmentation, seed 0), computes both views'
class maps as training does (`training_views`), and, on each view's grid and on the second view's grid for the first
view (where PPC's contrast uses it, `first_aligned`), the pseudo labels (PPC's argmax with the background score,
PPC's default 0.2) and each class's top-K prototype pixels. The truth of a grid cell is the ground-truth label
covering most of its labelled pixels (cells without any are left out). Reported per view: cell accuracy, foreground
precision (cells labelled a class that are that class) and recall (cells of a class labelled so), the share of cells
labelled foreground against the true share, and the precision of the prototype pixels (top-K over each batch of 16,
as in training) with the share of them that come from images labelled with their class (the maps they are ranked by
are not label-masked).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.core.checkpoint import load_checkpoint  # noqa: E402
from stages.core.io import IGNORE_INDEX  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.data.loading import Augment, SplitDataset  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from stages.methods.ppc import PpcOptions, class_scores, prototype_confidence  # noqa: E402
from stages.config import TrainCamConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ppc_pseudo_labels.json"
# the maps scored: the first view on its own grid, the first view carried onto the second's grid (what PPC's
# contrast uses for it, as the official code does), the second view
VIEWS = ("first", "first_aligned", "second")


def majority_labels(mask: torch.Tensor, size: tuple[int, int], num_classes: int) -> torch.Tensor:
    """(N, H, W) mask of labels 0..num_classes (background and the foreground classes), 255 = ignore → (N, h, w):
    the label covering most of each cell's labelled pixels (area shares), 255 where a cell has none."""
    labelled = mask != IGNORE_INDEX
    one_hot = F.one_hot(torch.where(labelled, mask, 0), num_classes + 1).permute(0, 3, 1, 2).float()
    shares = F.adaptive_avg_pool2d(one_hot * labelled[:, None], size)
    return torch.where(shares.sum(dim=1) > 0, shares.argmax(dim=1), IGNORE_INDEX)


def cell_counts(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, int]:
    """Counts of grid cells labelled `predicted` (0 = background) against `truth`, cells with truth 255 left out,
    for `cell_summary`."""
    keep = truth != IGNORE_INDEX
    predicted, truth = predicted[keep], truth[keep]
    return {"cells": truth.numel(), "correct": int((predicted == truth).sum()),
            "fg_labelled": int((predicted > 0).sum()),
            "fg_labelled_right": int(((predicted > 0) & (predicted == truth)).sum()),
            "fg_true": int((truth > 0).sum()), "fg_true_found": int(((truth > 0) & (predicted == truth)).sum())}


def cell_summary(c: dict[str, int]) -> dict:
    """Cell accuracy, foreground precision and recall, and the shares of cells labelled and truly foreground."""
    return {"cell_accuracy": c["correct"] / c["cells"],
            "fg_precision": c["fg_labelled_right"] / max(c["fg_labelled"], 1),
            "fg_recall": c["fg_true_found"] / max(c["fg_true"], 1),
            "fg_share_labelled": c["fg_labelled"] / c["cells"], "fg_share_true": c["fg_true"] / c["cells"]}


class Tally:
    def __init__(self):
        self.counts = {"cells": 0, "correct": 0, "fg_labelled": 0, "fg_labelled_right": 0, "fg_true": 0,
                       "fg_true_found": 0, "prototype_pixels": 0, "prototype_pixels_right": 0,
                       "prototype_pixels_in_labelled_images": 0}

    def add(self, predicted: torch.Tensor, truth: torch.Tensor, confidence: torch.Tensor, k: int,
            labels: torch.Tensor) -> None:
        c = self.counts
        for key, value in cell_counts(predicted, truth).items():
            c[key] += value
        flat_truth = truth.flatten()
        flat_confidence = confidence.permute(0, 2, 3, 1).flatten(0, 2)  # (M, C+1)
        present = set(flat_truth.unique().tolist())
        for cls in range(1, flat_confidence.shape[1]):  # prototypes of the classes in the batch
            if cls in present:
                top = flat_confidence[:, cls].topk(k).indices
                c["prototype_pixels"] += k
                c["prototype_pixels_right"] += int((flat_truth[top] == cls).sum())
                # the class maps are not label-masked (official): a pixel may come from an image without the class
                image_of_pixel = top // (truth.shape[1] * truth.shape[2])
                c["prototype_pixels_in_labelled_images"] += int(labels[image_of_pixel, cls - 1].sum())

    def summary(self) -> dict:
        c = self.counts
        return {**cell_summary(c),
                "prototype_pixel_precision": c["prototype_pixels_right"] / max(c["prototype_pixels"], 1),
                "prototype_pixels_in_labelled_images_share": (c["prototype_pixels_in_labelled_images"]
                                                              / max(c["prototype_pixels"], 1)),
                **c}


@torch.no_grad()
def score_run(run_dir: Path, images: int, options: PpcOptions) -> dict:
    run = Run(run_dir)
    payload = load_checkpoint(run.cam_checkpoint.require(), "cam")
    model = cam_model_from_checkpoint(payload, run.cam_checkpoint.path)
    model.train()  # batch statistics, as the training step sees them
    config = TrainCamConfig(**{k: v for k, v in payload["config"].items() if k in ("base_size", "crop_size")})
    dataset = run.dataset()
    samples = dataset.split("train")[:images]
    augment = Augment(config.base_size, config.crop_size, TrainCamConfig().scale_range)
    loader = DataLoader(SplitDataset(samples, dataset.num_classes, model.normalization, augment=augment, with_masks=True, seed=0), batch_size=16,
                        drop_last=True)
    tallies = {name: Tally() for name in VIEWS}
    shapes = {}
    for batch in loader:
        labels = batch["labels"].float()
        views = model.training_views(batch["image"], labels)
        second_grid = tuple(views.second.cams.shape[-2:])
        maps = {"first": views.first.cams, "first_aligned": views.align(views.first.cams, second_grid),
                "second": views.second.cams}  # all show the crop
        for name, cams in maps.items():
            size = tuple(cams.shape[-2:])
            shapes[name] = list(size)
            k = max(1, math.floor(options.top_k_fraction * size[0] * size[1]))  # as training: h*w // 8
            predicted = class_scores(cams, labels, options.bg_threshold).argmax(dim=1)
            tallies[name].add(predicted, majority_labels(batch["mask"], size, dataset.num_classes),
                              prototype_confidence(cams, labels), k, labels)
    method = payload["config"]["method"]
    if payload["config"].get("method_options", {}).get("transform", "rescale") != "rescale":
        raise SystemExit("only the rescale transform: the second view's truth is the crop's mask")
    return {"run": str(run_dir), "bg_threshold": options.bg_threshold, "method": method, "output_stride": payload["config"]["model"]["output_stride"],
            "images": len(samples), "grids": shapes, **{name: t.summary() for name, t in tallies.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--bg-threshold", type=float, default=PpcOptions().bg_threshold)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (another regime's runs: the same name with -<regime>)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run_dir in args.runs:
        result = score_run(run_dir, args.images, PpcOptions(bg_threshold=args.bg_threshold))
        results[f"{run_dir.name} bg {args.bg_threshold}"] = result
        print(json.dumps({k: result[k] for k in ("run", "grids")}), file=sys.stderr)
        for view in VIEWS:
            print(view, {k: round(v, 3) for k, v in result[view].items() if isinstance(v, float)}, file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
