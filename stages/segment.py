"""Stage `segment`: train a DeepLab segmenter and predict splits.

Methods (`stages.registry.SEGMENT_METHODS`): `deeplab` trains on a pseudo-mask set (or the dataset's own masks
with `labels="gt"`, the fully supervised upper bound), optionally with an add-on contrast loss
(`contrast="memory"`); `mcic` trains end to end from image labels and saliency maps, and also writes its seeds
of the training images as the mask set `mcic`. Output, in the segmenter's folder (`core.layout.segment_tag`):
its checkpoint (the segmenter alone: training-only heads and memories are not saved) and its predictions of each
split. While it trains, a training state holds the state after the last finished epoch, heads and memories
included (`--resume`). Under torchrun every process trains on its share of each batch (DistributedDataParallel) and
predicts its share of the images.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .config import SegmentConfig
from .core.checkpoint import save_checkpoint
from .core.console import console, progress_bar
from .core.device import autocast, memory_format, resolve_device, seed_everything
from .core.distributed import Processes, processes
from .core.errors import UserError
from .core.history import epoch_history, loss_terms, timing_metrics
from .core.io import IGNORE_INDEX, load_image, save_mask
from .core.resumable import finish_directory
from .core.runs import Run, Stage, fingerprint
from .core.sync_batchnorm import synchronise_batchnorm
from .core.training import TrainingState, distributed, log_epoch, make_optimizer, train_epochs, training_loader
from .data.loading import (Augment, SplitDataset, check_mask_sizes, multi_hot, require_mask_set,
                           same_size_batches)
from .data.saliency_maps import DirectorySaliency, saliency_directory
from .methods import build_segment_method
from .models.deeplab import DeepLab
from .models.inference import PredictionSettings, predict_masks

def segment(run: Run, config: SegmentConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train and predict; skipped when up to date (see `Run.execute`) unless `force`."""
    dataset = run.dataset()
    config = config.on(dataset)
    samples = dataset.split(config.train_split)
    for split in config.predict_splits:
        dataset.split(split)  # unknown split: fail now, not after training
    seed_everything(config.seed)
    model = DeepLab(config.model, len(dataset.class_names))
    steps_per_epoch = len(samples) // config.batch_size
    method = build_segment_method(config.method, config.method_options, config.contrast, config.contrast_options,
                                  model, len(dataset.class_names), steps_per_epoch)
    inputs = [run.dataset_index.path]
    mask_dir = saliency_dir = None
    if method.uses_masks:
        mask_dir = training_masks(run, config, samples)
        inputs += [mask_dir] if mask_dir else []
    if method.uses_saliency:
        saliency_dir = saliency_directory(config.saliency_dir or run.saliency.path, samples, config.train_split,
                                          f"segment --method {config.method}", require_all=True)
        inputs.append(saliency_dir)
    checkpoint = run.segment_checkpoint(config.tag).path
    predictions = {split: run.predictions(config.tag, split).path for split in config.predict_splits}
    seeds_dir = run.pseudo(config.method).path if hasattr(method, "seeds") else None

    def work() -> dict:
        procs = processes()
        device = resolve_device(config.device)
        trainer = synchronise_batchnorm(method, device) if config.sync_bn else method
        trainer.to(device, memory_format=memory_format(device))
        step_losses = distributed(trainer, device, procs)
        augment = Augment(config.base_size, config.crop_size, config.scale_range)
        train_set = SplitDataset(samples, dataset.num_classes, model.normalization, augment=augment,
                                 with_masks=method.uses_masks, mask_dir=mask_dir, seed=config.seed,
                                 saliency_dir=saliency_dir)
        if method.uses_masks:
            check_mask_sizes(samples, train_set.mask_path)
        loader = training_loader(train_set, config.batch_size, config.workers, device, config.seed, procs)
        backbone_params, head_params = model.param_groups()
        optimizer = make_optimizer(backbone_params, head_params + method.new_parameters(), config)

        def losses(batch: dict, step: int) -> dict[str, torch.Tensor]:
            on_device = {key: value.to(device, non_blocking=True) for key, value in batch.items()
                         if isinstance(value, torch.Tensor)}
            on_device["image"] = on_device["image"].contiguous(memory_format=memory_format(device))
            return step_losses(on_device, step)

        state = TrainingState(run.segment_training_state(config.tag), trainer, asdict(config), resume)
        source = (f"{config.labels} masks" + (f" from {mask_dir}" if mask_dir else "") if method.uses_masks
                  else "image labels and saliency maps")
        console.print(f"segment: {config.method}{' + ' + config.contrast if config.contrast else ''}, "
                      f"{config.model.backbone} OS{config.model.output_stride} on {len(samples)} images with "
                      f"{source}, device {device}" + (f", {procs.world_size} processes" if procs.distributed else ""))
        trainer.train()
        history = train_epochs(loader=loader, optimizer=optimizer, config=config, device=device, amp=config.amp,
                               losses_fn=losses,
                               on_epoch_end=lambda epoch, log: log_epoch(epoch, config.epochs, log),
                               description=f"segment {config.tag}", state=state, procs=procs)
        if procs.is_main:
            save_checkpoint(checkpoint, kind="segmenter", config=asdict(config), class_names=dataset.class_names,
                            model=model, normalization=model.normalization,
                            metrics={"epochs": history})
        trainer.eval()
        if procs.is_main:  # predictions of splits this run does not predict are a previous model's: removed
            for stale in set(run.all_predictions(config.tag)) - set(predictions.values()):
                shutil.rmtree(stale)
        for split, predicted in predictions.items():
            finished = run.resumable_folder(stage, predicted, checkpoint=fingerprint(checkpoint))
            predict(model, dataset.split(split), predicted, finished, config, device, procs)
        metrics = {"final_loss": round(sum(loss_terms(history[-1]).values()), 4), **timing_metrics(history),
                   "history": epoch_history(history)}
        if seeds_dir is not None:
            metrics["seeds_ignored_fraction"] = write_seed_masks(trainer, samples, seeds_dir, saliency_dir, config,
                                                                 len(dataset.class_names) - 1, device, procs)
        state.discard(procs)
        return metrics

    outputs = [checkpoint, *predictions.values()] + ([seeds_dir] if seeds_dir else [])
    stage = Stage(f"segment/{config.tag}", config, inputs, outputs, work)
    return run.execute(stage, force)


def training_masks(run: Run, config: SegmentConfig, samples) -> Path | None:
    """The pseudo-mask directory to train on (None: the dataset's own masks); an error if masks are missing."""
    if config.labels not in ("pseudo", "gt"):
        raise UserError(f"--labels must be pseudo or gt, got {config.labels!r}")
    if config.labels == "gt":
        without = [s.id for s in samples if s.mask is None]
        if without:
            raise UserError(f"--labels gt needs ground-truth masks; {len(without)} {config.train_split} images "
                            f"have none (e.g. {without[0]})")
        return None
    return require_mask_set(run.pseudo(config.pseudo), samples, config.train_split)


@torch.inference_mode()
def write_seed_masks(method, samples, out_dir: Path, saliency_dir: Path, config: SegmentConfig, num_foreground: int,
                     device: torch.device, procs: Processes) -> float | None:
    """The method's seeds of the training images (full size, final memory) as pseudo masks in `out_dir` (the main
    process writes them); the fraction of their pixels left ignored."""
    if not procs.is_main:
        return None
    saliency = DirectorySaliency(saliency_dir)
    ignored = total = 0
    with progress_bar() as bar:
        task = bar.add_task(f"seeds {config.method}", total=len(samples), status="")
        for batch_samples, images in same_size_batches(samples, method.segmenter.normalization, config.batch_size,
                                                        config.workers):
            labels = torch.stack([multi_hot(s.labels, num_foreground) for s in batch_samples])
            maps = torch.stack([torch.from_numpy(saliency(s.id, load_image(s.image))) for s in batch_samples])
            with autocast(device, config.amp):
                seeds = method.seeds(images.to(device), labels.to(device), maps.to(device)).cpu().numpy()
            for sample, seed in zip(batch_samples, seeds):
                save_mask(out_dir / f"{sample.id}.png", seed.astype(np.uint8))
                ignored += int((seed == IGNORE_INDEX).sum())
                total += seed.size
            bar.update(task, advance=len(batch_samples))
    fraction = round(ignored / max(total, 1), 4)
    console.print(f"segment: seeds of {len(samples)} {config.train_split} images written to {out_dir} "
                  f"({fraction:.1%} ignored)")
    return fraction


def predict(model: DeepLab, samples, out_dir: Path, finished: set[str], config: SegmentConfig,
            device: torch.device, procs: Processes) -> None:
    """One palette PNG per image (`models.inference.predict_masks`). Masks in `finished` (written by an interrupted
    run of the same stage and checkpoint) are kept; each process predicts its share."""
    todo = [s for s in procs.shard(samples) if f"{s.id}.png" not in finished]
    settings = PredictionSettings(config.test_scales, config.test_flip, config.crf, config.amp, config.batch_size,
                                  config.workers)
    predict_masks(model, todo, out_dir, settings, device, description=f"predict {out_dir.name}")
    finish_directory(out_dir, procs)
