"""Stage `pseudo-label`: CAMs → pseudo masks for training the segmenter.

Input: `cams/<split>.h5`. Output: `pseudo/<refine>/<id>.png` (VOC palette PNGs) and `pseudo/<refine>/info.json`.
As in IRN's cam_to_ir_label: the background score is a constant threshold stacked under the CAMs; argmax with
the high (foreground) threshold gives confident foreground, with the low (background) threshold confident
background; each map goes through the label refinements (dense CRF); pixels the two disagree on are 255
(ignored by the segmenter's loss). `--refine saliency` takes the background from saliency maps instead
(see stages/refine/saliency.py). Images are processed in parallel worker processes (CRF is single-threaded).
A killed run resumes where it stopped: masks already written with the same config and inputs are kept (see
core/resumable.py). Under torchrun each process labels every N-th image.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .core.camstore import CamReader, cam_file_name
from .core.console import console, progress_bar
from .core.distributed import processes
from .core.errors import UserError
from .core.io import IGNORE_INDEX, check_plain_name, load_image, load_mask, save_mask, write_json
from .core.resumable import finish_directory, resumable_directory
from .core.runs import Run, comparable, fingerprint
from .refine import ImageItem, Refinement, RefineInputs, parse_refinements, refinement_names
from .refine.pcm import check_pcm_checkpoint
from .refine.saliency import SaliencyBackground
from .saliency import SALIENCY_DIR
from .train_cam import CHECKPOINT


@dataclass(frozen=True)
class PseudoLabelConfig:
    split: str = "train"
    refine: str = "crf"
    pcm_checkpoint: str = ""  # for --refine pcm: a SEAM checkpoint (default: the run's cam/checkpoint.pt)
    saliency_dir: str = ""  # for --refine saliency: <id>.png maps (default: the run's saliency/)
    saliency_threshold: float = 0.5  # for --refine saliency: below it a pixel is background
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    raw: bool = False  # from the unrefined CAMs of `infer-cam --raw`; the masks go to pseudo/<refine>-raw
    name: str = ""  # the mask set's name, to keep sets made with other thresholds apart (default: as above)
    workers: int = 2

    @property
    def mask_set(self) -> str:
        """The masks' name: what `segment --pseudo` and `evaluate pseudo/NAME` take."""
        return self.name or self.refine.replace(",", "+") + ("-raw" if self.raw else "")


def pseudo_mask_dir(run: Run, mask_set: str) -> str:
    return str(run.path("pseudo", mask_set.replace(",", "+")))


def make_pseudo_mask(item: ImageItem, cams: np.ndarray, classes: np.ndarray, config: PseudoLabelConfig,
                     refinements: list[Refinement]) -> np.ndarray:
    """(K, H, W) CAMs of the image's classes → (H, W) uint8 mask of class ids, 0 background, 255 uncertain."""
    keys = np.concatenate([[0], classes]).astype(np.uint8)
    label_maps = []
    for threshold in (config.fg_threshold, config.bg_threshold):
        scores = np.concatenate([np.full((1, *cams.shape[1:]), threshold, dtype=np.float32), cams])
        for refinement in refinements:
            scores = refinement.refine_scores(item, scores)
        labels = scores.argmax(axis=0)
        for refinement in refinements:
            labels = refinement.refine_labels(item, labels, len(keys))
        label_maps.append(labels)
    confident_fg, confident_bg = label_maps
    mask = keys[confident_fg]
    mask[confident_fg == 0] = IGNORE_INDEX
    mask[(confident_fg == 0) & (confident_bg == 0)] = 0
    return mask


def pseudo_label(run: Run, config: PseudoLabelConfig, *, force: bool = False) -> dict:
    """Pseudo masks of a split; skipped when up to date (see `Run.up_to_date`) unless `force`."""
    if not 0 <= config.bg_threshold <= config.fg_threshold <= 1:
        raise UserError(f"need 0 <= bg threshold <= fg threshold <= 1, got {config.bg_threshold} and "
                        f"{config.fg_threshold}")
    names = refinement_names(config.refine)  # fail on a bad name before any work
    check_plain_name(config.mask_set, "mask set name", "crf-fitted")
    refine_inputs = RefineInputs(
        checkpoint=Path(config.pcm_checkpoint) if config.pcm_checkpoint else run.path(CHECKPOINT),
        saliency_dir=config.saliency_dir or str(run.path(SALIENCY_DIR)), saliency_threshold=config.saliency_threshold)
    if "pcm" in names:  # checked here without building the model: workers build it
        check_pcm_checkpoint(refine_inputs.checkpoint)
    if "saliency" in names:  # a missing directory fails here, once
        SaliencyBackground(refine_inputs.saliency_dir, refine_inputs.saliency_threshold)
    dataset = run.dataset()
    samples = dataset.split(config.split)
    infer_command = f"wsss infer-cam --split {config.split}{' --raw' if config.raw else ''}"
    cam_file = run.require(cam_file_name(config.split, config.raw), f"run `{infer_command}` first")
    with CamReader(cam_file) as reader:
        missing = [s.id for s in samples if s.id not in reader]
    if missing:
        raise UserError(f"{cam_file} has no CAM for {len(missing)} images of split {config.split} "
                        f"(e.g. {missing[0]}): re-run `{infer_command}`")
    out_dir = pseudo_mask_dir(run, config.mask_set)
    key = f"pseudo-label/{config.mask_set}"
    inputs = ([run.path("dataset.json"), cam_file] + ([refine_inputs.checkpoint] if "pcm" in names else [])
              + ([refine_inputs.saliency_dir] if "saliency" in names else []))
    procs = processes()
    done = run.up_to_date(key, asdict(config), inputs, force)
    if done is not None:
        return done
    finished = resumable_directory(out_dir, {**comparable(asdict(config)),
                                             "inputs": [fingerprint(p) for p in inputs]}, procs)
    mine = procs.shard(samples)
    jobs = [(s.id, s.image, f"{out_dir}/{s.id}.png") for s in mine if f"{s.id}.png" not in finished]

    with run.stage(key, asdict(config), inputs) as record:
        console.print(f"pseudo-label: {len(samples)} images, refine {config.refine}, thresholds fg "
                      f"{config.fg_threshold} / bg {config.bg_threshold}, {config.workers} workers"
                      + (f", {procs.world_size} processes" if procs.distributed else "")
                      + (f"; {len(mine) - len(jobs)} masks already done" if len(jobs) < len(mine) else ""))
        ignored = labelled = 0
        for sample in mine:  # the finished masks count towards the ignored fraction too
            if f"{sample.id}.png" in finished:
                mask = load_mask(f"{out_dir}/{sample.id}.png")
                ignored, labelled = ignored + int((mask == IGNORE_INDEX).sum()), labelled + mask.size
        context = multiprocessing.get_context("fork")
        with context.Pool(config.workers, _init_worker, (str(cam_file), config, refine_inputs)) as pool, \
                progress_bar() as bar:
            task = bar.add_task("pseudo-label", total=len(jobs), status="")
            for ignored_pixels, pixels in pool.imap_unordered(_label_one, jobs, chunksize=8):
                ignored += ignored_pixels
                labelled += pixels
                bar.update(task, advance=1)
        ignored, labelled = procs.sum([ignored, labelled])
        record.metrics = {"images": len(samples), "ignored_fraction": round(ignored / max(labelled, 1), 4)}
        if procs.is_main:
            write_json(f"{out_dir}/info.json", {"config": asdict(config), "source": str(cam_file), **record.metrics})
        finish_directory(out_dir, procs)
        record.outputs.append(out_dir)
    return record.metrics


_worker: dict = {}


def _init_worker(cam_file: str, config: PseudoLabelConfig, inputs: RefineInputs) -> None:
    # Each process opens the HDF5 file and builds any network itself: h5py handles must not cross a fork, and
    # one thread per process since the processes already fill the cores.
    torch.set_num_threads(1)
    _worker["reader"] = CamReader(cam_file)
    _worker["config"] = config
    _worker["refinements"] = parse_refinements(config.refine, inputs)


def _label_one(job: tuple[str, str, str]) -> tuple[int, int]:
    image_id, image_path, out_path = job
    cams, classes = _worker["reader"].read(image_id)
    image = load_image(image_path)
    if image.shape[:2] != cams.shape[1:]:
        raise UserError(f"CAM of {image_id} is {cams.shape[1:]} but its image is {image.shape[:2]}")
    mask = make_pseudo_mask(ImageItem(image_id, image), cams, classes, _worker["config"], _worker["refinements"])
    save_mask(out_path, mask)
    return int((mask == IGNORE_INDEX).sum()), mask.size
