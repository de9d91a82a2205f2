"""Stage `pseudo-label`: CAMs → pseudo masks for training the segmenter.

Input: the split's CAM file. Output: a mask set `pseudo/<set>/<id>.png` (VOC palette PNGs) and its `info.json`;
the set is named after the refinements (see `core.layout.mask_set_name`) unless `--name` names it.
As in IRN's cam_to_ir_label: the background score is a constant threshold stacked under the CAMs; argmax with
the high (foreground) threshold gives confident foreground, with the low (background) threshold confident
background; each map goes through the label refinements (dense CRF); pixels the two disagree on are 255
(ignored by the segmenter's loss). `--refine saliency` takes the background from saliency maps instead
(see stages/refine/saliency_background.py); `--refine rw` walks the scores with the run's affinity network
(stages/refine/random_walk.py). Images are processed in parallel worker processes (CRF is single-threaded); with
`rw` on a GPU (`--device`), the main process walks batches of images there and the workers do the rest.
A killed run resumes where it stopped: masks already written with the same config and inputs are kept (see
core/resumable.py). Under torchrun each process labels every N-th image.
"""

from __future__ import annotations

import collections
import multiprocessing
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import PseudoLabelConfig
from .core.camstore import CamReader
from .core.checkpoint import load_checkpoint
from .core.console import console, progress_bar
from .core.device import resolve_device
from .core.distributed import processes
from .core.errors import UserError
from .core.io import IGNORE_INDEX, load_image, load_mask, save_mask, write_json
from .core.resumable import finish_directory
from .core.runs import Run, Stage
from .refine import ImageItem, Refinement, RefineInputs, parse_refinements
from .refine.pcm import check_pcm_checkpoint
from .refine.saliency_background import SaliencyBackground


def make_pseudo_mask(item: ImageItem, cams: np.ndarray, classes: np.ndarray, config: PseudoLabelConfig,
                     refinements: list[Refinement]) -> np.ndarray:
    """(K, H, W) CAMs of the image's classes → (H, W) uint8 mask of class ids, 0 background, 255 uncertain."""
    return mask_from_label_maps(item, score_label_maps([item], [cams], config, refinements)[0], classes,
                                refinements)


def score_label_maps(items: list[ImageItem], cams: list[np.ndarray], config: PseudoLabelConfig,
                     refinements: list[Refinement]) -> list[list[np.ndarray]]:
    """Per image, its two label maps (indices into [background] + its classes, uint8) before the label
    refinements: the argmax of the score stack with the foreground threshold, and with the background threshold,
    as the background score, after the score refinements."""
    stacks = [[np.concatenate([np.full((1, *image_cams.shape[1:]), threshold, dtype=np.float32), image_cams])
               for threshold in (config.fg_threshold, config.bg_threshold)] for image_cams in cams]
    for refinement in refinements:
        stacks = refinement.refine_score_batch(items, stacks)
    return [[scores.argmax(axis=0).astype(np.uint8) for scores in image_stacks] for image_stacks in stacks]


def mask_from_label_maps(item: ImageItem, label_maps: list[np.ndarray], classes: np.ndarray,
                         refinements: list[Refinement]) -> np.ndarray:
    """The image's two label maps (see `score_label_maps`) through the label refinements → its mask: confident
    foreground where the foreground threshold's map says a class, background where both say background, 255
    where they disagree."""
    keys = np.concatenate([[0], classes]).astype(np.uint8)
    refined = []
    for labels in label_maps:
        for refinement in refinements:
            labels = refinement.refine_labels(item, labels, len(keys))
        refined.append(labels)
    confident_fg, confident_bg = refined
    mask = keys[confident_fg]
    mask[confident_fg == 0] = IGNORE_INDEX
    mask[(confident_fg == 0) & (confident_bg == 0)] = 0
    return mask


def pseudo_label(run: Run, config: PseudoLabelConfig, *, force: bool = False) -> dict:
    """Pseudo masks of a split; skipped when up to date (see `Run.execute`) unless `force`."""
    names = config.refinements
    refine_inputs = RefineInputs(checkpoint=Path(config.pcm_checkpoint or run.cam_checkpoint.path),
                                 affinity_checkpoint=(Path(config.affinity_checkpoint) if config.affinity_checkpoint
                                                      else run.affinity_checkpoint.path),
                                 saliency_dir=config.saliency_dir or str(run.saliency.path),
                                 saliency_threshold=config.saliency_threshold)
    if "pcm" in names:  # checked here without building the model: workers build it
        check_pcm_checkpoint(refine_inputs.checkpoint)
    device = resolve_device(config.device)  # a bad name fails here, whatever the refinements
    if "rw" in names:
        if not config.affinity_checkpoint:
            run.affinity_checkpoint.require()  # "run `wsss train-affinity` first"
        load_checkpoint(refine_inputs.affinity_checkpoint, "affinity")
    if "saliency" in names:  # a missing directory fails here, once
        SaliencyBackground.from_inputs(refine_inputs)
    dataset = run.dataset()
    samples = dataset.split(config.split)
    cams = run.cams(config.split, config.raw)
    cam_file = cams.require()
    with CamReader(cam_file) as reader:
        missing = [s.id for s in samples if s.id not in reader]
    if missing:
        raise UserError(f"{cam_file} has no CAM for {len(missing)} images of split {config.split} "
                        f"(e.g. {missing[0]}): re-run `{cams.made_by}`")
    out_dir = run.pseudo(config.mask_set).path
    inputs = ([run.dataset_index.path, cam_file] + ([refine_inputs.checkpoint] if "pcm" in names else [])
              + ([refine_inputs.affinity_checkpoint] if "rw" in names else [])
              + ([Path(refine_inputs.saliency_dir)] if "saliency" in names else []))

    def work() -> dict:
        procs = processes()
        finished = run.resumable_folder(stage, out_dir)
        mine = procs.shard(samples)
        jobs = [(s.id, s.image, f"{out_dir}/{s.id}.png") for s in mine if f"{s.id}.png" not in finished]
        batched = "rw" in names and walks_in_batches(device)
        console.print(f"pseudo-label: {len(samples)} images, refine {config.refine}, thresholds fg "
                      f"{config.fg_threshold} / bg {config.bg_threshold}, {config.workers} workers"
                      + (f", walks on {device} in batches of {SCORE_BATCH}" if batched else "")
                      + (f", {procs.world_size} processes" if procs.distributed else "")
                      + (f"; {len(mine) - len(jobs)} masks already done" if len(jobs) < len(mine) else ""))
        ignored = labelled = 0
        for sample in mine:  # the finished masks count towards the ignored fraction too
            if f"{sample.id}.png" in finished:
                mask = load_mask(f"{out_dir}/{sample.id}.png")
                ignored, labelled = ignored + int((mask == IGNORE_INDEX).sum()), labelled + mask.size
        # fork: the workers never touch the GPU, so CUDA, which this process may have started (Run.execute resets
        # its peak-memory count), does not need them to be spawned
        context = multiprocessing.get_context("fork")
        with context.Pool(config.workers, _init_worker, (str(cam_file), config, refine_inputs, batched)) as pool, \
                progress_bar() as bar:
            task = bar.add_task("pseudo-label", total=len(jobs), status="")
            if batched:
                results = _label_with_batched_scores(pool, jobs, cam_file, config,
                                                     replace(refine_inputs, device=str(device)))
            else:
                results = pool.imap_unordered(_label_one, jobs, chunksize=8)
            for ignored_pixels, pixels in results:
                ignored += ignored_pixels
                labelled += pixels
                bar.update(task, advance=1)
        ignored, labelled = procs.sum([ignored, labelled])
        metrics = {"images": len(samples), "ignored_fraction": round(ignored / max(labelled, 1), 4)}
        if procs.is_main:
            write_json(out_dir / "info.json", {"config": asdict(config), "source": str(cam_file), **metrics})
        finish_directory(out_dir, procs)
        return metrics

    stage = Stage(f"pseudo-label/{config.mask_set}", config, inputs, [out_dir], work)
    return run.execute(stage, force)


def walks_in_batches(device: torch.device) -> bool:
    """On a GPU the score refinements (the random walk) run in the main process on batches of images, the label
    refinements (CRF) in the workers; on the CPU each worker does all of an image, the workers filling the cores."""
    return device.type == "cuda"


# Images per batch of the score refinements on a GPU: a batch walks as one sparse matrix (stages/affinity/walk.py);
# a VOC-sized batch of 8 holds about 7M transition entries (under 100 MB).
SCORE_BATCH = 8


class _Images(Dataset):
    """The jobs' images, decoded in loader workers; an unreadable one as its error's line (raised by the main
    process, where it stays one line)."""

    def __init__(self, jobs: list[tuple[str, str, str]]):
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[tuple[str, str, str], np.ndarray | str]:
        try:
            return self.jobs[index], load_image(self.jobs[index][1])
        except UserError as error:
            return self.jobs[index], str(error)


def _label_with_batched_scores(pool, jobs: list[tuple[str, str, str]], cam_file: Path, config: PseudoLabelConfig,
                               inputs: RefineInputs):
    """Yield each job's (ignored pixels, pixels): the score refinements in this process, SCORE_BATCH images at a
    time on `inputs.device`, the label refinements and the PNG in the pool's workers, at most a few batches
    behind (so that label maps do not pile up in memory)."""
    refinements = parse_refinements(config.refine, inputs)
    loader = DataLoader(_Images(jobs), batch_size=SCORE_BATCH, num_workers=2, collate_fn=list)  # decoding: light
    pending: collections.deque = collections.deque()
    with CamReader(cam_file) as reader:
        for batch in loader:
            unreadable = next((image for _, image in batch if isinstance(image, str)), None)
            if unreadable is not None:
                raise UserError(unreadable)
            items = [ImageItem(job[0], image) for job, image in batch]
            read = [reader.read(item.id) for item in items]
            for item, (cams, _) in zip(items, read):
                _check_size(item, cams)
            label_maps = score_label_maps(items, [cams for cams, _ in read], config, refinements)
            for item, (job, _), maps, (_, classes) in zip(items, batch, label_maps, read):
                pending.append(pool.apply_async(_finish_one, ((item, job[2], maps, classes),)))
            while len(pending) > 4 * SCORE_BATCH:
                yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


_worker: dict = {}


def _init_worker(cam_file: str, config: PseudoLabelConfig, inputs: RefineInputs, labels_only: bool) -> None:
    # Each process opens the HDF5 file and builds any network itself: h5py handles must not cross a fork, and
    # one thread per process since the processes already fill the cores. `labels_only`: the main process runs the
    # score refinements (`_label_with_batched_scores`), so the workers build only the label ones.
    torch.set_num_threads(1)
    _worker["reader"] = CamReader(cam_file)
    _worker["config"] = config
    _worker["refinements"] = parse_refinements(config.refine, inputs, labels_only=labels_only)


def _check_size(item: ImageItem, cams: np.ndarray) -> None:
    if item.image.shape[:2] != cams.shape[1:]:
        raise UserError(f"CAM of {item.id} is {cams.shape[1:]} but its image is {item.image.shape[:2]}")


def _label_one(job: tuple[str, str, str]) -> tuple[int, int]:
    image_id, image_path, out_path = job
    cams, classes = _worker["reader"].read(image_id)
    item = ImageItem(image_id, load_image(image_path))
    _check_size(item, cams)
    mask = make_pseudo_mask(item, cams, classes, _worker["config"], _worker["refinements"])
    save_mask(out_path, mask)
    return int((mask == IGNORE_INDEX).sum()), mask.size


def _finish_one(task: tuple[ImageItem, str, list[np.ndarray], np.ndarray]) -> tuple[int, int]:
    """The part of `_label_one` after the score refinements, which ran in the main process (the decoded image
    comes with the task: the CRF needs it)."""
    item, out_path, label_maps, classes = task
    mask = mask_from_label_maps(item, label_maps, classes, _worker["refinements"])
    save_mask(out_path, mask)
    return int((mask == IGNORE_INDEX).sum()), mask.size
