"""Stage `evaluate`: score CAMs or label masks against a split's ground truth.

Input: what the target names (`cams`, `cams-raw`, `pseudo/SET`, `segment/TAG` or a folder of masks, resolved by
`core.layout`) and the dataset index. Output: `eval/<name>.json`, recorded in the manifest as `evaluate/<name>`.
Scores are fractions in [0, 1]; the tables (`stages.results`) show them as percentages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .config import EvaluateConfig
from .core.camstore import CamReader
from .core.console import progress_bar
from .core.errors import UserError
from .core.io import IGNORE_INDEX, check_plain_name, load_mask, write_json
from .core.runs import Run, Stage
from .data.index import DatasetIndex, Sample
from .metrics import CamThresholdSweep, ConfusionMatrix, json_number

Progress = Callable[[int], None]


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


def evaluate(run: Run, config: EvaluateConfig, *, force: bool = False) -> dict:
    """Score what `config.target` names (see `Layout.evaluation_target`) on `config.split`: the result goes to
    `eval/<name>.json`; skipped when up to date (see `Run.execute`) unless `force`."""
    artifact, name, kind = run.evaluation_target(config.target, config.split)
    check_plain_name(name, "evaluation name", "cams_train")
    index = run.dataset()
    samples = labelled_samples(index, config.split)
    source = artifact.require()
    output = run.eval(name)

    def work() -> dict:
        score = score_cams if kind == "cam" else score_masks
        with progress_bar() as bar:
            task = bar.add_task(f"evaluate {name}", total=len(samples), status="")
            scores = score(index, samples, source, config, progress=lambda n: bar.update(task, advance=n))
        result = {"name": name, "kind": kind, "split": config.split, "source": str(source),
                  "num_images": len(samples), **scores}
        write_json(output, result)
        return {key: result[key] for key in ("miou", "best_threshold", "miou_confident", "coverage", "num_images")
                if key in result}

    return run.execute(Stage(f"evaluate/{name}", config, [source, run.dataset_index.path], [output], work), force)


def score_cams(index: DatasetIndex, samples: list[Sample], cam_file: Path, config: EvaluateConfig,
               progress: Progress) -> dict:
    """A CAM file's scores at every background threshold of `config.thresholds`, and the best one."""
    sweep = CamThresholdSweep(len(index.class_names), config.thresholds)
    with CamReader(cam_file) as reader:
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
            progress(1)
    best_threshold, best_matrix = sweep.best()
    return {**best_matrix.summary(index.class_names), "best_threshold": best_threshold,
            "curve": [[threshold, json_number(miou)] for threshold, miou in sweep.curve()]}


def score_masks(index: DatasetIndex, samples: list[Sample], mask_dir: Path, config: EvaluateConfig,
                progress: Progress) -> dict:
    """Scores of label masks `mask_dir/<id>.png` (pseudo masks or segmenter predictions).

    A predicted 255 ("uncertain") counts as background in `miou`; `miou_confident` scores only the
    pixels with a confident prediction, and `coverage` is the fraction of labelled pixels that have one.
    """
    num_classes = len(index.class_names)
    every_pixel = ConfusionMatrix(num_classes)
    confident_pixels = ConfusionMatrix(num_classes)
    labelled_count = confident_count = 0
    for sample in samples:
        path = mask_dir / f"{sample.id}.png"
        if not path.is_file():
            raise UserError(f"predicted mask not found: {path} (run the stage that writes {mask_dir} for "
                            f"split {config.split!r}, e.g. `wsss pseudo-label --split {config.split}`)")
        pred = load_mask(path, num_classes)
        gt = load_ground_truth(index, sample)
        if pred.shape != gt.shape:
            raise UserError(f"mask {path} is {pred.shape} but the ground truth of {sample.id!r} is {gt.shape}")
        every_pixel.update(pred, gt)
        uncertain = pred == IGNORE_INDEX
        confident_pixels.update(pred, np.where(uncertain, IGNORE_INDEX, gt))
        labelled = gt != IGNORE_INDEX
        labelled_count += int(labelled.sum())
        confident_count += int((labelled & ~uncertain).sum())
        progress(1)
    return {**every_pixel.summary(index.class_names),
            "coverage": confident_count / labelled_count if labelled_count else None,
            "miou_confident": json_number(confident_pixels.miou())}
