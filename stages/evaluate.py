"""The `wsss evaluate` stage: score CAMs or label masks against a split's ground truth.

Each evaluation is written to `eval/<name>.json` in the run folder and recorded in the manifest as
`evaluate/<name>`. Scores are fractions in [0, 1]; the tables show them as percentages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from rich.table import Table

from .core.camstore import CamReader, cam_file_name
from .core.errors import UserError
from .core.io import IGNORE_INDEX, check_plain_name, load_mask, write_json
from .core.runs import DATASET_INDEX, Run
from .data.index import DatasetIndex, Sample
from .metrics import DEFAULT_THRESHOLDS, CamThresholdSweep, ConfusionMatrix, json_number

Progress = Callable[[int], None]


@dataclass
class EvaluateConfig:
    split: str = "train"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS


def labelled_samples(index: DatasetIndex, split: str) -> list[Sample]:
    """The split's samples that have a ground-truth mask; an error if there are none."""
    samples = [sample for sample in index.split(split) if sample.mask]
    if not samples:
        raise UserError(f"split {split!r} has no ground-truth masks: there is nothing to evaluate against")
    return samples


def load_ground_truth(index: DatasetIndex, sample: Sample) -> np.ndarray:
    """The sample's mask, checked against the class list (a mask from another dataset is a user mistake)."""
    mask = load_mask(sample.mask)
    labels = mask[mask != IGNORE_INDEX]
    if labels.size and labels.max() >= len(index.class_names):
        raise UserError(f"ground-truth mask {sample.mask} holds label {labels.max()}, but the dataset has only "
                        f"{len(index.class_names)} classes (0..{len(index.class_names) - 1}, 255 = ignore)")
    return mask


def evaluate_cams(run: Run, cam_file: Path, config: EvaluateConfig, name: str,
                  progress: Progress | None = None) -> dict:
    """Score a CAM file at every background threshold of `config.thresholds`; report the best one."""
    output = _output_path(run, name)
    index = run.dataset()
    samples = labelled_samples(index, config.split)
    sweep = CamThresholdSweep(len(index.class_names), config.thresholds)
    with run.stage(f"evaluate/{name}", asdict(config)) as record, CamReader(cam_file) as reader:
        if reader.class_names != index.class_names:
            raise UserError(f"CAM file {cam_file} was made for classes {reader.class_names}, "
                            f"but the run's dataset has {index.class_names}")
        for sample in samples:
            if sample.id not in reader:
                raise UserError(f"image {sample.id!r} of split {config.split!r} has no CAM in {cam_file} "
                                f"(run `wsss infer-cam --split {config.split}`)")
            cams, classes = reader.read(sample.id)
            gt = load_ground_truth(index, sample)
            if cams.shape[1:] != gt.shape:
                raise UserError(f"CAM of image {sample.id!r} in {cam_file} is {cams.shape[1:]} but its "
                                f"ground truth is {gt.shape}")
            sweep.update(cams, classes, gt)
            if progress:
                progress(1)
        best_threshold, best_matrix = sweep.best()
        result = {
            "name": name,
            "kind": "cam",
            "split": config.split,
            "source": str(cam_file),
            "num_images": len(samples),
            **best_matrix.summary(index.class_names),
            "best_threshold": best_threshold,
            "curve": [[threshold, json_number(miou)] for threshold, miou in sweep.curve()],
        }
        write_json(output, result)
        record.inputs += [cam_file, run.path(DATASET_INDEX)]
        record.outputs.append(output)
        record.metrics.update(miou=result["miou"], best_threshold=best_threshold, num_images=len(samples))
    return result


def evaluate_masks(run: Run, mask_dir: Path, config: EvaluateConfig, name: str,
                   progress: Progress | None = None) -> dict:
    """Score label masks `mask_dir/<id>.png` (pseudo masks or segmenter predictions).

    A predicted 255 ("uncertain") counts as background in `miou`; `miou_confident` scores only the
    pixels with a confident prediction, and `coverage` is the fraction of labelled pixels that have one.
    """
    output = _output_path(run, name)
    index = run.dataset()
    samples = labelled_samples(index, config.split)
    num_classes = len(index.class_names)
    every_pixel = ConfusionMatrix(num_classes)
    confident_pixels = ConfusionMatrix(num_classes)
    labelled_count = confident_count = 0
    with run.stage(f"evaluate/{name}", asdict(config)) as record:
        for sample in samples:
            path = mask_dir / f"{sample.id}.png"
            if not path.is_file():
                raise UserError(f"predicted mask not found: {path} (run the stage that writes {mask_dir} for "
                                f"split {config.split!r}, e.g. `wsss pseudo-label --split {config.split}`)")
            pred = load_mask(path)
            gt = load_ground_truth(index, sample)
            if pred.shape != gt.shape:
                raise UserError(f"mask {path} is {pred.shape} but the ground truth of {sample.id!r} is {gt.shape}")
            every_pixel.update(pred, gt)
            uncertain = pred == IGNORE_INDEX
            confident_pixels.update(pred, np.where(uncertain, IGNORE_INDEX, gt))
            labelled = gt != IGNORE_INDEX
            labelled_count += int(labelled.sum())
            confident_count += int((labelled & ~uncertain).sum())
            if progress:
                progress(1)
        result = {
            "name": name,
            "kind": "masks",
            "split": config.split,
            "source": str(mask_dir),
            "num_images": len(samples),
            **every_pixel.summary(index.class_names),
            "coverage": confident_count / labelled_count if labelled_count else None,
            "miou_confident": json_number(confident_pixels.miou()),
        }
        write_json(output, result)
        record.inputs += [mask_dir, run.path(DATASET_INDEX)]
        record.outputs.append(output)
        record.metrics.update(miou=result["miou"], miou_confident=result["miou_confident"],
                              coverage=result["coverage"], num_images=len(samples))
    return result


def results_table(results: list[dict]) -> Table:
    """One row per evaluation result."""
    table = Table(title="Evaluation")
    for column in ("name", "kind", "split", "images"):
        table.add_column(column)
    table.add_column("mIoU %", justify="right")
    table.add_column("best thr", justify="right")
    for result in results:
        threshold = result.get("best_threshold")
        table.add_row(result["name"], result["kind"], result["split"], str(result["num_images"]),
                      percent(result["miou"]), "–" if threshold is None else f"{threshold:.2f}")
    return table


def per_class_table(result: dict) -> Table:
    """IoU, precision and recall per class of one evaluation result."""
    table = Table(title=f"{result['name']} per class")
    table.add_column("class")
    for column in ("IoU %", "precision %", "recall %"):
        table.add_column(column, justify="right")
    for class_name, scores in result["per_class"].items():
        table.add_row(class_name, percent(scores["iou"]), percent(scores["precision"]), percent(scores["recall"]))
    return table


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _output_path(run: Run, name: str) -> Path:
    return run.path("eval", f"{check_plain_name(name, 'evaluation name', 'cam')}.json")


def evaluate_target(run: Run, target: str, config: EvaluateConfig) -> dict:
    """Evaluate what `target` names in the run: `cams` (or `cams-raw`), `pseudo/<refine>`, `segment/<tag>`, or a
    folder of masks.

    The result is named after the target and split, e.g. `cams_train`, `pseudo-crf_train`, `segment-gt_val`.
    """
    from .core.console import progress_bar

    split = config.split
    if target in ("cams", "cams-raw"):
        raw = target == "cams-raw"
        path = run.require(cam_file_name(split, raw),
                           f"run `wsss infer-cam --split {split}{' --raw' if raw else ''}` first")
        name, evaluate = f"{target}_{split}", evaluate_cams
    elif target.startswith("pseudo/"):
        refine = target.split("/", 1)[1].replace(",", "+")
        path = run.require(f"pseudo/{refine}", f"run `wsss pseudo-label --refine {refine} --split {split}` first")
        name, evaluate = f"pseudo-{refine}_{split}", evaluate_masks
    elif target.startswith("segment/"):
        tag = target.split("/", 1)[1]
        path = run.require(f"segment/{tag}/pred_{split}", f"run `wsss segment` with `--predict {split}` first")
        name, evaluate = f"segment-{tag}_{split}", evaluate_masks
    elif Path(target).is_dir():
        path = Path(target)
        name, evaluate = f"{path.name}_{split}", evaluate_masks
    else:
        raise UserError(f"unknown evaluation target {target!r}: use cams, cams-raw, pseudo/REFINE, segment/TAG or a folder "
                        "of predicted masks")
    with progress_bar() as bar:
        task = bar.add_task(f"evaluate {name}", total=len(run.dataset().split(split)), status="")
        return evaluate(run, path, config, name, progress=lambda n: bar.update(task, advance=n))
