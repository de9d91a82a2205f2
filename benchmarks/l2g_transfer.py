"""What does L2G's attention transfer teach the global network, and how right is it? Scores, against ground
truth, the targets the local network gives and the global network's map they pull, on the local views of training
crops, for trained L2G checkpoints. Results: `benchmarks/results/l2g_transfer.json` (or `--out`).

    python benchmarks/l2g_transfer.py RUN [RUN ...] [--images 512] [--saliency DIR]

For each run's `cam/checkpoint.pt` it takes training crops (the stage's augmentation, seed 0, batches of 16), places
the views as training does (`local_view_boxes`, the run's layout, torch seed 0) and, on each view's local-map grid,
compares with the truth (`ppc_pseudo_labels.majority_labels`: the label covering most of a cell's labelled pixels)
four labellings of the cells. Three read class scores in [0, 1] as CAMs are read: background where no class of the
image reaches the run's best CAM threshold (`eval/cams_train.json`; 0.5 without it), else the strongest class:
  - `local_target`: the class channels of the local network's attention target (`attention_targets`: max-normalised,
    and zero except at each cell's winning channel, so a cell the background channel wins is background);
  - `shape_target`: the same after shape transfer (`shape_targets`, with the saliency the run trained on or
    `--saliency DIR`), for runs trained with it: a class's value is then the saliency;
  - `global_cam`: the global network's CAMs of the whole crop, ReLU'd and max-normalised per class as `infer-cam`
    normalises them, then aligned to the view's box (RoIAlign, as the transfer aligns the map);
and `global_softmax`, the argmax of the global network's softmax over the C+1 channels, which the transfer pulls
towards the target (under the mean squared error the winner of a one-hot target stays the winner, whatever its value).
Each gets cell accuracy, foreground precision and recall and the share of cells labelled foreground against the
true share (`ppc_pseudo_labels.cell_summary`); the three score maps also get the cells' mIoU at their own best
threshold (`best_miou`, `best_threshold`: the CAM evaluation's sweep, on the cells), a reading free of the run's
threshold. L2G's claim is that the local views see more of each object: the local target's foreground recall above
the global CAMs', at a precision that does not fall. `background_winner` is the share of cells the local target's
background channel wins; no loss trains that channel. Runs of other methods (the baseline) get `global_cam` alone,
their CAMs on the same views (L2G's default layout): what the local target has to beat.
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

from stages.config import TrainCamConfig  # noqa: E402
from stages.core.checkpoint import load_checkpoint  # noqa: E402
from stages.core.runs import Run  # noqa: E402
from stages.data.loading import Augment, SplitDataset  # noqa: E402
from stages.metrics import CamThresholdSweep  # noqa: E402
from stages.methods import cam_model_from_checkpoint  # noqa: E402
from stages.methods.l2g import (SALIENCY_EPS, L2GOptions, align_global_map,  # noqa: E402
                                attention_targets, crop_views, local_view_boxes, shape_targets)
from ppc_pseudo_labels import cell_counts, cell_summary, majority_labels  # noqa: E402  (benchmarks/)

RESULTS = ROOT / "benchmarks" / "results" / "l2g_transfer.json"
MAPS = ("local_target", "shape_target", "global_cam", "global_softmax")
SCORE_MAPS = ("local_target", "shape_target", "global_cam")  # class scores in [0, 1], also swept over thresholds


def labels_at_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, C, h, w) class scores in [0, 1] → (N, h, w) labels: 0 where no class exceeds `threshold` (background wins
    ties, as the CAM evaluation's), else the strongest class (1..C)."""
    return torch.cat([torch.full_like(scores[:, :1], threshold), scores], dim=1).argmax(dim=1)


def normalised_cams(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ReLU'd CAMs divided by each map's maximum (+1e-5, as infer-cam), classes absent from the image zeroed."""
    cams = F.relu(cams)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5) * labels[:, :, None, None]


@torch.no_grad()
def score_run(run_dir: Path, images: int, saliency_dir: str | None) -> dict:
    run = Run(run_dir)
    payload = load_checkpoint(run.cam_checkpoint.require(), "cam")
    model = cam_model_from_checkpoint(payload, run.cam_checkpoint.path)
    model.train()  # batch statistics, as the training step sees them
    is_l2g = payload["config"]["method"] == "l2g"
    options = model.options if is_l2g else L2GOptions()  # other methods: their CAMs on L2G's default views
    output_stride = payload["config"]["model"]["output_stride"]
    config = TrainCamConfig(**{k: v for k, v in payload["config"].items()
                               if k in ("base_size", "crop_size", "scale_range")})
    if not (is_l2g and options.shape_transfer):
        saliency_dir = None
    elif saliency_dir is None:
        saliency_dir = payload["config"].get("saliency_dir") or str(run.saliency.path)
    cams_eval = run_dir / "eval" / "cams_train.json"
    threshold = json.loads(cams_eval.read_text())["best_threshold"] if cams_eval.exists() else 0.5
    dataset = run.dataset()
    augment = Augment(config.base_size, config.crop_size, config.scale_range)
    loader = DataLoader(SplitDataset(dataset.split("train")[:images], dataset.num_classes, model.normalization,
                                     augment=augment, with_masks=True, seed=0, saliency_dir=saliency_dir),
                        batch_size=16, drop_last=True)
    counts: dict[str, dict[str, int]] = {}
    sweeps = {name: CamThresholdSweep(dataset.num_classes + 1) for name in SCORE_MAPS}
    background_winner = cells = scored_images = 0
    torch.manual_seed(0)  # the same views for every run
    for batch in loader:
        image, labels = batch["image"], batch["labels"].float()
        batch_size, _, height, width = image.shape
        side = max(1, round(options.local_crop * min(height, width)))
        boxes = local_view_boxes(height, width, side, options.local_views, options.crop_mode, batch_size)
        size = (math.ceil(side / output_stride),) * 2  # the local map's grid (stride-2 layers round up)
        global_map = model.global_net(image) if is_l2g else None
        class_maps = global_map[:, 1:] if is_l2g else model.cams(image)
        global_cams = align_global_map(normalised_cams(class_maps, labels), boxes, size, output_stride)
        scores = {"global_cam": global_cams}
        if is_l2g:
            local_map = model.local_class_map(crop_views(image, boxes))
            if tuple(local_map.shape[-2:]) != size:
                raise SystemExit(f"local map {tuple(local_map.shape[-2:])} is not the expected {size} grid")
            target = attention_targets(local_map, labels, options.local_views)
            scores["local_target"] = target[:, 1:]
            background_winner += int((target[:, 0] > 0).sum())
            if saliency_dir:
                saliency = batch["saliency"].float()
                saliency = saliency / (saliency.amax(dim=(1, 2), keepdim=True) + SALIENCY_EPS)
                views = F.adaptive_avg_pool2d(crop_views(saliency[:, None], boxes), size)
                with_map = batch["has_saliency"].bool().repeat_interleave(options.local_views)
                shaped = torch.where(with_map[:, None, None, None],
                                     shape_targets(target, views, options.bg_threshold), target)
                scores["shape_target"] = shaped[:, 1:]
        truth = majority_labels(crop_views(batch["mask"][:, None], boxes)[:, 0], size, dataset.num_classes)
        maps = {name: labels_at_threshold(score, threshold) for name, score in scores.items()}
        if is_l2g:
            maps["global_softmax"] = align_global_map(global_map, boxes, size, output_stride).argmax(dim=1)
        view_classes = [label.nonzero().flatten() for label in labels.repeat_interleave(options.local_views, 0)]
        for name, score in scores.items():
            for view, classes in enumerate(view_classes):
                sweeps[name].update(score[view, classes].numpy(), classes.numpy() + 1, truth[view].numpy())
        for name, predicted in maps.items():
            tally = counts.setdefault(name, {})
            for key, value in cell_counts(predicted, truth).items():
                tally[key] = tally.get(key, 0) + value
        cells += truth.numel()
        scored_images += batch_size
    result = {"run": str(run_dir), "method": payload["config"]["method"], "images": scored_images,
              "views": options.local_views, "crop_mode": options.crop_mode, "grid": list(size),
              "saliency": saliency_dir, "cam_threshold": threshold}
    if is_l2g:
        result["background_winner"] = background_winner / cells
    for name in MAPS:
        if name in counts:
            result[name] = {**cell_summary(counts[name]), **counts[name]}
            if name in SCORE_MAPS:
                best_threshold, matrix = sweeps[name].best()
                result[name].update(best_threshold=best_threshold, best_miou=matrix.miou())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--saliency", default=None,
                        help="saliency maps for runs with shape transfer (default: the ones the run trained on)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (another regime's runs: the same name with -<regime>)")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for run_dir in args.runs:
        result = score_run(run_dir, args.images, args.saliency)
        results[run_dir.name] = result
        print(run_dir.name, {k: v for k, v in result.items() if not isinstance(v, dict)}, file=sys.stderr)
        for name in MAPS:
            if name in result:
                print(" ", name, {k: round(v, 3) for k, v in result[name].items() if isinstance(v, float)},
                      file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
