"""Stage `saliency`: saliency maps for a split, from the built-in method or a directory of the user's maps.

Input: the run's dataset index and a source: `mbd` (built-in Minimum Barrier saliency, no weights needed;
stages/data/saliency.py) or a directory of grayscale `<id>.png` maps (e.g. PoolNet's, as L2G's users download).
Output: `saliency/<id>.png` (8-bit grayscale, 255 = salient) and `saliency/info-<split>.json`: the source and, where
the split has ground truth, the maps' quality against the ground-truth foreground (MAE, max F-measure).
The maps are what L2G's shape transfer (`train-cam --method l2g`) and `pseudo-label --refine saliency` read.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .core.console import console, progress_bar
from .core.errors import UserError
from .core.io import IGNORE_INDEX, load_image, load_mask, write_json
from .core.runs import Run
from .data.saliency import MAKE_MAPS_HINT, DirectorySaliency, MinimumBarrierSaliency, SaliencySource, save_saliency
from .metrics import SaliencyQuality

SALIENCY_DIR = "saliency"
BUILT_IN = {"mbd": MinimumBarrierSaliency}


@dataclass(frozen=True)
class SaliencyConfig:
    split: str = "train"
    source: str = "mbd"  # a built-in method's name, or a directory of <id>.png maps
    workers: int = 2


def saliency_source(source: str) -> SaliencySource:
    if source in BUILT_IN:
        return BUILT_IN[source]()
    return DirectorySaliency(source, hint=f"--source takes {' or '.join(BUILT_IN)} or a directory of <id>.png maps")


def saliency(run: Run, config: SaliencyConfig) -> dict:
    saliency_source(config.source)  # a bad source fails here, before the workers start
    samples = run.dataset().split(config.split)
    out_dir = run.path(SALIENCY_DIR)
    if config.source not in BUILT_IN and Path(config.source).resolve() == out_dir.resolve():
        raise UserError(f"--source {config.source} is where the maps are written; point it at the original maps")
    jobs = [(s.id, s.image, s.mask, str(out_dir / f"{s.id}.png")) for s in samples]
    quality = SaliencyQuality()

    with run.stage(f"saliency/{config.split}", asdict(config)) as record:
        record.inputs += [run.path("dataset.json")] + ([config.source] if config.source not in BUILT_IN else [])
        console.print(f"saliency: {len(jobs)} {config.split} images from {config.source}, {config.workers} workers")
        context = multiprocessing.get_context("fork")
        with context.Pool(config.workers, _init_worker, (config.source,)) as pool, progress_bar() as bar:
            task = bar.add_task("saliency", total=len(jobs), status="")
            for saliency_map, mask in pool.imap_unordered(_one, jobs, chunksize=8):
                if mask is not None:
                    quality.add(saliency_map, (mask != 0) & (mask != IGNORE_INDEX), mask == IGNORE_INDEX)
                bar.update(task, advance=1)
        record.metrics = {"images": len(jobs)}
        summary = quality.summary()
        if summary["images"]:
            record.metrics.update({key: round(summary[key], 4) for key in ("mae", "max_f")})
            console.print(f"saliency vs ground-truth foreground: MAE {summary['mae']:.3f}, max F {summary['max_f']:.3f}")
        write_json(out_dir / f"info-{config.split}.json",
                   {"config": asdict(config), **record.metrics, "quality": summary})
        record.outputs.append(str(out_dir))
    return record.metrics


_worker: dict = {}


def _init_worker(source: str) -> None:
    torch.set_num_threads(1)
    _worker["source"] = saliency_source(source)


def _one(job: tuple[str, str, str | None, str]) -> tuple[np.ndarray, np.ndarray | None]:
    image_id, image_path, mask_path, out_path = job
    image = load_image(image_path)
    saliency_map = _worker["source"](image_id, image)
    save_saliency(out_path, saliency_map)
    # What is written (8 bits) is what gets measured.
    return np.round(saliency_map * 255) / 255, (load_mask(mask_path) if mask_path else None)


def saliency_directory(run: Run, directory: str, samples: list, split: str, stage: str,
                       require_all: bool = False) -> str:
    """The saliency maps' directory for a training stage (`directory`, default the run's saliency/): an error
    if it covers none of the images, or (with `require_all`) not all of them."""
    directory = directory or str(run.path(SALIENCY_DIR))
    source = DirectorySaliency(directory, hint=MAKE_MAPS_HINT)
    missing = [sample.id for sample in samples if not source.has(sample.id)]
    make_them = f"run `wsss saliency --split {split}` or pass --saliency DIR"
    if len(missing) == len(samples) or (require_all and missing):
        how_many = "any" if len(missing) == len(samples) else f"{len(missing)}"
        raise UserError(f"{directory} has no saliency map for {how_many} of the {len(samples)} {split} images "
                        f"(expected <id>.png, e.g. {missing[0]}.png): {make_them}")
    covered = len(samples) - len(missing)
    console.print(f"{stage}: saliency maps from {directory} for {covered} of {len(samples)} images"
                  + ("" if not missing else " (the others train without shape transfer)"))
    return directory
