"""Stage `saliency`: saliency maps for a split, from the built-in method or a directory of the user's maps.

Input: the run's dataset index and a source: a registered one (`mbd`, built-in Minimum Barrier saliency, no
weights needed; stages/data/saliency_maps.py) or a directory of grayscale `<id>.png` maps (e.g. PoolNet's, as
L2G's users download).
Output: `saliency/<id>.png` (8-bit grayscale, 255 = salient) and `saliency/info-<split>.json`: the source and, where
the split has ground truth, the maps' quality against the ground-truth foreground (MAE, max F-measure).
The maps are what L2G's shape transfer (`train-cam --method l2g`) and `pseudo-label --refine saliency` read.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import SaliencyConfig
from .core.console import console, progress_bar
from .core.errors import UserError
from .core.io import IGNORE_INDEX, load_image, load_mask, write_json
from .core.runs import Run, Stage
from .data.saliency_maps import DirectorySaliency, SaliencySource, save_saliency
from .metrics import SaliencyQuality
from .registry import SALIENCY_SOURCES

def saliency_source(source: str) -> SaliencySource:
    if source in SALIENCY_SOURCES:
        return SALIENCY_SOURCES.get(source)()
    return DirectorySaliency(source, hint=f"--source takes {' or '.join(SALIENCY_SOURCES)} or a directory of "
                                          "<id>.png maps")


def saliency(run: Run, config: SaliencyConfig, *, force: bool = False) -> dict:
    """Saliency maps of a split; skipped when up to date (see `Run.execute`) unless `force`."""
    saliency_source(config.source)  # a bad source fails here, before the workers start
    samples = run.dataset().split(config.split)
    out_dir = run.saliency.path
    built_in = config.source in SALIENCY_SOURCES
    if not built_in and Path(config.source).resolve() == out_dir.resolve():
        raise UserError(f"--source {config.source} is where the maps are written; point it at the original maps")
    jobs = [(s.id, s.image, s.mask, str(out_dir / f"{s.id}.png")) for s in samples]
    info = run.saliency_info(config.split)

    def work() -> dict:
        quality = SaliencyQuality()
        console.print(f"saliency: {len(jobs)} {config.split} images from {config.source}, {config.workers} workers")
        context = multiprocessing.get_context("fork")
        with context.Pool(config.workers, _init_worker, (config.source,)) as pool, progress_bar() as bar:
            task = bar.add_task("saliency", total=len(jobs), status="")
            for saliency_map, mask in pool.imap_unordered(_one, jobs, chunksize=8):
                if mask is not None:
                    quality.add(saliency_map, (mask != 0) & (mask != IGNORE_INDEX), mask == IGNORE_INDEX)
                bar.update(task, advance=1)
        metrics = {"images": len(jobs)}
        summary = quality.summary()
        if summary["images"]:
            metrics.update({key: round(summary[key], 4) for key in ("mae", "max_f")})
            console.print(f"saliency vs ground-truth foreground: MAE {summary['mae']:.3f}, "
                          f"max F {summary['max_f']:.3f}")
        write_json(info, {"config": asdict(config), **metrics, "quality": summary})
        return metrics

    # The maps of one split are the outputs: another split's maps share the folder, not the fingerprint.
    stage = Stage(f"saliency/{config.split}", config,
                  [run.dataset_index.path] + ([Path(config.source)] if not built_in else []),
                  [info, *(Path(path) for *_, path in jobs)], work)
    return run.execute(stage, force)


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
