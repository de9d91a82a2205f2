"""Stage `train-cam`: train the image classifier whose CAMs seed everything downstream.

Input: the run's dataset index (and saliency maps for methods that use them). Output: the run's CAM checkpoint
(weights, config, class names, per-epoch metrics); while it trains, a training state holds the state after the
last finished epoch (`--resume`). Under torchrun every process trains on its share of each batch
(DistributedDataParallel).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import TrainCamConfig
from .core.checkpoint import save_checkpoint
from .core.console import console
from .core.device import autocast, memory_format, resolve_device, seed_everything
from .core.distributed import processes
from .core.history import epoch_history, timing_metrics
from .core.runs import Run, Stage
from .core.sync_batchnorm import synchronise_batchnorm
from .core.training import TrainingState, distributed, log_epoch, make_optimizer, train_epochs, training_loader
from .data.loading import Augment, SplitDataset
from .data.saliency_maps import saliency_directory
from .methods import CamTraining, build_aux_loss, build_cam_model
from .metrics import macro_f1, mean_average_precision


def train_cam(run: Run, config: TrainCamConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train the classifier; skipped when up to date (see `Run.execute`) unless `force`."""
    dataset = run.dataset()
    config = config.on(dataset)
    train_samples = dataset.split(config.train_split)
    val_samples = dataset.split(config.val_split) if config.val_split else []
    num_classes = dataset.num_classes
    seed_everything(config.seed)
    model = build_cam_model(config.method, config.model, num_classes, config.method_options)
    aux = build_aux_loss(config.aux, config.aux_options, model, config.method) if config.aux else None
    saliency_dir = (saliency_directory(config.saliency_dir or run.saliency.path, train_samples, config.train_split,
                                       "train-cam")
                    if getattr(model, "uses_saliency", False) else None)
    checkpoint = run.cam_checkpoint.path

    def work() -> dict:
        procs = processes()
        device = resolve_device(config.device)
        trained = CamTraining(model, aux)
        if config.sync_bn:
            trained = synchronise_batchnorm(trained, device)
        trained.to(device, memory_format=memory_format(device))
        step_losses = distributed(trained, device, procs)
        augment = Augment(config.base_size, config.crop_size, config.scale_range)
        train_set = SplitDataset(train_samples, num_classes, model.normalization, augment=augment, seed=config.seed,
                                 saliency_dir=saliency_dir)
        loader = training_loader(train_set, config.batch_size, config.workers, device, config.seed, procs)
        backbone_params, head_params = model.param_groups()
        optimizer = make_optimizer(backbone_params, head_params + (list(aux.parameters()) if aux else []), config)

        def losses(batch: dict, step: int) -> dict[str, torch.Tensor]:
            images = batch["image"].to(device, non_blocking=True, memory_format=memory_format(device))
            labels = batch["labels"].to(device, non_blocking=True)
            extra = {}
            if saliency_dir:
                extra = {"saliency": batch["saliency"].to(device, non_blocking=True),
                         "has_saliency": batch["has_saliency"]}
            return step_losses(images, labels, **extra)

        # Validation images are resized to the crop size (no randomness) so they batch whatever their size.
        val_set = SplitDataset(val_samples, num_classes, model.normalization, seed=config.seed,
                               augment=Augment(config.crop_size, config.crop_size, (1.0, 1.0), flip=False))

        def on_epoch_end(epoch: int, log: dict[str, float]) -> None:
            if val_samples and procs.is_main:
                log.update(classification_metrics(model, val_set, device, config.batch_size, config.amp))
            log_epoch(epoch, config.epochs, log)
            model.train()

        state = TrainingState(run.cam_training_state, trained, asdict(config), resume)
        console.print(f"train-cam: {config.method}{' + ' + config.aux if aux else ''} on {len(train_samples)} "
                      f"{config.train_split} images, {config.model.backbone} OS{config.model.output_stride}, "
                      f"device {device}" + (f", {procs.world_size} processes" if procs.distributed else ""))
        trained.train()
        epoch_metrics = train_epochs(loader=loader, optimizer=optimizer, config=config, device=device, amp=config.amp,
                                     losses_fn=losses, on_epoch_end=on_epoch_end, description="train-cam",
                                     state=state, procs=procs)
        metrics = {k: round(v, 4) for k, v in epoch_metrics[-1].items() if k in ("val_map", "val_f1")}
        metrics.update(timing_metrics(epoch_metrics))
        metrics["history"] = epoch_history(epoch_metrics)
        if procs.is_main:
            save_checkpoint(checkpoint, kind="cam", config=asdict(config), class_names=dataset.class_names,
                            model=model, normalization=model.normalization,
                            metrics={"epochs": epoch_metrics})
        state.discard(procs)
        return metrics

    stage = Stage("train-cam", config, [run.dataset_index.path] + ([saliency_dir] if saliency_dir else []),
                  [checkpoint], work)
    return run.execute(stage, force)


@torch.inference_mode()
def classification_metrics(model, dataset: SplitDataset, device: torch.device, batch_size: int,
                           amp: bool) -> dict[str, float]:
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, targets = [], []
    for batch in loader:
        images = batch["image"].to(device, memory_format=memory_format(device))
        with autocast(device, amp):
            logits = model(images).float()
        scores.append(torch.sigmoid(logits).cpu())
        targets.append(batch["labels"])
    scores_np, targets_np = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    return {"val_map": mean_average_precision(scores_np, targets_np),
            "val_f1": macro_f1(scores_np >= 0.5, targets_np.astype(bool))}
