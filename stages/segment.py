"""Stage `segment`: train a DeepLab segmenter and predict splits.

Methods (`stages.methods.SEGMENT_METHODS`): `deeplab` trains on masks, `pseudo/<refine>/` pseudo masks (or the
dataset's own with `labels="gt"`, the fully supervised upper bound), optionally with an add-on contrast loss
(`contrast="memory"`); `mcic` trains end to end from image labels and saliency maps, and also writes its seeds
of the training images as pseudo masks `pseudo/mcic/`. Output: `segment/<tag>/checkpoint.pt` (the segmenter
alone: training-only heads and memories are not saved) and `segment/<tag>/pred_<split>/<id>.png`. While it trains,
`segment/<tag>/train_state.pt` holds the state after the last finished epoch, heads and memories included
(`--resume`). Under torchrun every process trains on its share of each batch (DistributedDataParallel) and
predicts its share of the images.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .core.checkpoint import load_checkpoint, load_state, model_config, save_checkpoint
from .core.console import console, progress_bar
from .core.device import autocast, memory_format, resolve_device, seed_everything
from .core.distributed import Processes, processes, synchronise_batchnorm
from .core.errors import UserError
from .core.io import IGNORE_INDEX, load_image, save_mask
from .core.resumable import finish_directory, resumable_directory
from .core.runs import Run, fingerprint
from .core.training import (OptimConfig, TrainingState, distributed, log_epoch, make_optimizer, train_epochs,
                            training_loader)
from .data.loading import Augment, SplitDataset, check_mask_sizes, multi_hot, same_size_batches
from .data.saliency import DirectorySaliency
from .methods import build_segment_method
from .models.deeplab import DeepLab, SegModelConfig
from .models.multiscale import multi_scale_sum
from .pseudo_label import pseudo_mask_dir
from .refine.crf import CrfParams, crf_from_probabilities
from .saliency import saliency_directory

# DeepLab's CRF post-processing settings (REFERENCES.md: gaussian 1/3, bilateral 67/3/4, 10 iterations).
POSTPROCESS_CRF = CrfParams(gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
                            bilateral_compat=4, iterations=10)


@dataclass(frozen=True)
class SegmentConfig:
    method: str = "deeplab"  # "deeplab" (trained on masks) or "mcic" (end to end from image labels + saliency)
    method_options: dict[str, str] = field(default_factory=dict)  # the method's Options, as KEY=VALUE strings
    contrast: str = ""  # an add-on loss for mask training ("memory": cross-image pixel contrast), or none
    contrast_options: dict[str, str] = field(default_factory=dict)
    saliency_dir: str = ""  # for methods that use saliency (mcic); default: the run's saliency/
    labels: str = "pseudo"  # "pseudo" (masks from `wsss pseudo-label`) or "gt" (upper bound)
    pseudo: str = "crf"  # which pseudo masks: their set name (the --refine they were made with, + "-raw")
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train_split: str = "train"
    predict_splits: tuple[str, ...] = ("val",)
    epochs: int = 8
    batch_size: int = 16  # the global batch: under torchrun each of N processes takes batch_size / N
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each process's share
    lr: float = 0.05
    head_lr_mult: float = 1.0
    weight_decay: float = 1e-4
    base_size: int = 128
    crop_size: int = 112
    scale_range: tuple[float, float] = (0.7, 1.3)
    test_scales: tuple[float, ...] = (1.0,)
    test_flip: bool = False
    crf: bool = False
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    seed: int = 0

    @property
    def tag(self) -> str:
        if self.method != "deeplab":
            return self.method
        masks = "gt" if self.labels == "gt" else f"pseudo-{self.pseudo.replace(',', '+')}"
        return f"{masks}-{self.contrast}" if self.contrast else masks


def segment_dir(run: Run, config: SegmentConfig) -> Path:
    return run.path("segment", config.tag)


def segment(run: Run, config: SegmentConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train and predict; skipped when up to date (see `Run.up_to_date`) unless `force`."""
    dataset = run.dataset()
    samples = dataset.split(config.train_split)
    for split in config.predict_splits:
        dataset.split(split)  # unknown split: fail now, not after training
    procs = processes()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = DeepLab(config.model, len(dataset.class_names))
    steps_per_epoch = len(samples) // config.batch_size
    method = build_segment_method(config.method, config.method_options, config.contrast, config.contrast_options,
                                  model, len(dataset.class_names), steps_per_epoch)
    inputs = [run.path("dataset.json")]
    mask_dir = saliency_dir = None
    if method.uses_masks:
        mask_dir = training_masks(run, config, samples)
        inputs += [mask_dir] if mask_dir else []
    if method.uses_saliency:
        saliency_dir = saliency_directory(run, config.saliency_dir, samples, config.train_split,
                                          f"segment --method {config.method}", require_all=True)
        inputs.append(saliency_dir)
    done = run.up_to_date(f"segment/{config.tag}", asdict(config), inputs, force)
    if done is not None:
        return done

    if config.sync_bn:
        method = synchronise_batchnorm(method, device)
    method.to(device, memory_format=memory_format(device))
    step_losses = distributed(method, device, procs)
    augment = Augment(config.base_size, config.crop_size, config.scale_range)
    train_set = SplitDataset(samples, dataset.num_classes, augment=augment, with_masks=method.uses_masks,
                             mask_dir=mask_dir, seed=config.seed, saliency_dir=saliency_dir)
    if method.uses_masks:
        check_mask_sizes(samples, train_set.mask_path)
    loader = training_loader(train_set, config.batch_size, config.workers, device, config.seed, procs)
    optim = OptimConfig(config.epochs, config.lr, config.head_lr_mult, config.weight_decay)
    backbone_params, head_params = model.param_groups()
    optimizer = make_optimizer(backbone_params, head_params + method.new_parameters(), optim)

    def losses(batch: dict, step: int) -> dict[str, torch.Tensor]:
        on_device = {key: value.to(device, non_blocking=True) for key, value in batch.items()
                     if isinstance(value, torch.Tensor)}
        on_device["image"] = on_device["image"].contiguous(memory_format=memory_format(device))
        return step_losses(on_device, step)

    out_dir = segment_dir(run, config)
    state = TrainingState(out_dir / "train_state.pt", method, asdict(config), resume)
    with run.stage(f"segment/{config.tag}", asdict(config), inputs) as record:
        source = (f"{config.labels} masks" + (f" from {mask_dir}" if mask_dir else "") if method.uses_masks
                  else "image labels and saliency maps")
        console.print(f"segment: {config.method}{' + ' + config.contrast if config.contrast else ''}, "
                      f"{config.model.backbone} OS{config.model.output_stride} on {len(samples)} images with "
                      f"{source}, device {device}" + (f", {procs.world_size} processes" if procs.distributed else ""))
        method.train()
        history = train_epochs(loader=loader, optimizer=optimizer, config=optim, device=device, amp=config.amp,
                               losses_fn=losses,
                               on_epoch_end=lambda epoch, log: log_epoch(epoch, config.epochs, log),
                               description=f"segment {config.tag}", state=state, procs=procs)
        if procs.is_main:
            save_checkpoint(out_dir / "checkpoint.pt", kind="segmenter", config=asdict(config),
                            class_names=dataset.class_names, model=model, metrics={"epochs": history})
        record.outputs.append(out_dir / "checkpoint.pt")
        method.eval()
        for split in config.predict_splits:
            predicted = out_dir / f"pred_{split}"
            predict(model, dataset.split(split), predicted, config, device, procs, out_dir / "checkpoint.pt")
            record.outputs.append(predicted)
        record.metrics = {"final_loss": round(sum(v for k, v in history[-1].items() if k != "seconds"), 4),
                          "epoch_seconds": round(float(np.mean([h["seconds"] for h in history])), 2)}
    if hasattr(method, "seeds") and procs.is_main:
        write_seed_masks(run, method, samples, saliency_dir, config, device)
    state.discard(procs)
    return record.metrics


def training_masks(run: Run, config: SegmentConfig, samples) -> str | None:
    """The pseudo-mask directory to train on (None: the dataset's own masks); an error if masks are missing."""
    if config.labels not in ("pseudo", "gt"):
        raise UserError(f"--labels must be pseudo or gt, got {config.labels!r}")
    if config.labels == "gt":
        without = [s.id for s in samples if s.mask is None]
        if without:
            raise UserError(f"--labels gt needs ground-truth masks; {len(without)} {config.train_split} images "
                            f"have none (e.g. {without[0]})")
        return None
    mask_dir = pseudo_mask_dir(run, config.pseudo)
    missing = [s.id for s in samples if not Path(mask_dir, f"{s.id}.png").is_file()]
    if missing:
        raise UserError(f"no pseudo mask {mask_dir}/{missing[0]}.png ({len(missing)} missing): run "
                        f"`wsss pseudo-label --refine {config.pseudo}` first")
    return mask_dir


@torch.inference_mode()
def write_seed_masks(run: Run, method, samples, saliency_dir: str, config: SegmentConfig,
                     device: torch.device) -> None:
    """The method's seeds of the training images (full size, final memory) as pseudo masks `pseudo/<method>/`."""
    saliency = DirectorySaliency(saliency_dir)
    out_dir = Path(pseudo_mask_dir(run, config.method))
    num_foreground = len(run.dataset().class_names) - 1
    with run.stage(f"pseudo-label/{config.method}", {"from": f"segment/{config.tag}", **asdict(config)}) as record:
        record.inputs += [segment_dir(run, config) / "checkpoint.pt", saliency_dir]
        ignored = total = 0
        with progress_bar() as bar:
            task = bar.add_task(f"seeds {config.method}", total=len(samples), status="")
            for batch_samples, images in same_size_batches(samples, config.batch_size, config.workers):
                labels = torch.stack([multi_hot(s.labels, num_foreground) for s in batch_samples])
                maps = torch.stack([torch.from_numpy(saliency(s.id, load_image(s.image))) for s in batch_samples])
                with autocast(device, config.amp):
                    seeds = method.seeds(images.to(device), labels.to(device), maps.to(device)).cpu().numpy()
                for sample, seed in zip(batch_samples, seeds):
                    save_mask(out_dir / f"{sample.id}.png", seed.astype(np.uint8))
                    ignored += int((seed == IGNORE_INDEX).sum())
                    total += seed.size
                bar.update(task, advance=len(batch_samples))
        record.outputs.append(out_dir)
        record.metrics = {"images": len(samples), "ignored_fraction": round(ignored / max(total, 1), 4)}
    console.print(f"segment: seeds of {len(samples)} {config.train_split} images written to {out_dir} "
                  f"({record.metrics['ignored_fraction']:.1%} ignored)")


def load_segmenter(path: Path, num_classes: int) -> DeepLab:
    checkpoint = load_checkpoint(path, "segmenter")
    model = DeepLab(model_config(SegModelConfig, checkpoint, path), num_classes)
    load_state(model, checkpoint, path)
    return model


@torch.inference_mode()
def predict(model: DeepLab, samples, out_dir: Path, config: SegmentConfig, device: torch.device,
            procs: Processes, checkpoint: Path) -> None:
    """Write one palette PNG per image: argmax of softmax averaged over test scales (and flips), then CRF.
    Masks already written from the same checkpoint and test options are kept; each process predicts its share."""
    identity = {"checkpoint": fingerprint(checkpoint), "test_scales": config.test_scales,
                "test_flip": config.test_flip, "crf": config.crf}
    finished = resumable_directory(out_dir, identity, procs)
    todo = [s for s in procs.shard(samples) if f"{s.id}.png" not in finished]
    # The CRF runs in worker processes while the network predicts the next images; at most `max_pending` images'
    # probabilities wait in memory (a VOC image's are 16 MB, so holding a whole split's is not an option).
    crf_pool = multiprocessing.get_context("fork").Pool(max(config.workers, 1)) if config.crf else None
    max_pending = 4 * max(config.workers, 1) + config.batch_size
    pending: deque = deque()
    with progress_bar() as bar, crf_pool or contextlib.nullcontext():
        task = bar.add_task(f"predict {out_dir.name}" + (" + crf" if config.crf else ""), total=len(todo), status="")
        for batch_samples, images in same_size_batches(todo, config.batch_size, config.workers):
            probabilities = _multi_scale_softmax(model, images.to(device), config, device)
            for sample, probs in zip(batch_samples, probabilities):
                path = out_dir / f"{sample.id}.png"
                if crf_pool is None:
                    save_mask(path, probs.argmax(axis=0).astype(np.uint8))
                    bar.update(task, advance=1)
                else:
                    pending.append(crf_pool.apply_async(_crf_and_save, ((sample.image, probs, path),)))
            while len(pending) > max_pending or (pending and pending[0].ready()):
                pending.popleft().get()
                bar.update(task, advance=1)
        while pending:
            pending.popleft().get()
            bar.update(task, advance=1)
    finish_directory(out_dir, procs)


def _multi_scale_softmax(model, images: torch.Tensor, config: SegmentConfig, device) -> np.ndarray:
    """Class probabilities averaged over the test scales (and flips)."""
    total = multi_scale_sum(model, images, config.test_scales, config.test_flip, device, config.amp,
                            per_view=lambda logits: F.softmax(logits, dim=1))
    return (total / total.sum(1, keepdim=True)).cpu().numpy()


def _crf_and_save(job) -> None:
    image_path, probabilities, out_path = job
    labels = crf_from_probabilities(load_image(image_path), probabilities, POSTPROCESS_CRF)
    save_mask(out_path, labels.astype(np.uint8))
