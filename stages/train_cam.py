"""Stage `train-cam`: train the image classifier whose CAMs seed everything downstream.

Input: the run's dataset index. Output: `cam/checkpoint.pt` (weights, config, class names, per-epoch metrics).
While it trains, `cam/train_state.pt` holds the state after the last finished epoch (`--resume`).
Under torchrun every process trains on its share of each batch (DistributedDataParallel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from .core.checkpoint import save_checkpoint
from .core.console import console
from .core.device import autocast, memory_format, resolve_device, seed_everything
from .core.distributed import processes, synchronise_batchnorm
from .core.errors import UserError
from .core.runs import Run
from .core.training import (OptimConfig, TrainingState, distributed, log_epoch, make_optimizer, train_epochs,
                            training_loader)
from .data.loading import Augment, SplitDataset
from .methods import CamModelConfig, build_aux_loss, build_cam_model
from .saliency import saliency_directory

CHECKPOINT = "cam/checkpoint.pt"
TRAINING_STATE = "cam/train_state.pt"


@dataclass(frozen=True)
class TrainCamConfig:
    method: str = "baseline"
    method_options: dict[str, str] = field(default_factory=dict)  # the method's Options, as KEY=VALUE strings
    aux: str = ""  # an add-on loss for two-view methods ("ppc"), or none
    aux_options: dict[str, str] = field(default_factory=dict)  # its Options, as KEY=VALUE strings
    model: CamModelConfig = field(default_factory=CamModelConfig)
    train_split: str = "train"
    val_split: str = "val"
    saliency_dir: str = ""  # for methods that use saliency (L2G shape transfer); default: the run's saliency/
    epochs: int = 5
    batch_size: int = 16  # the global batch: under torchrun each of N processes takes batch_size / N
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch, not each process's share
    lr: float = 0.1
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    base_size: int = 128
    crop_size: int = 112
    scale_range: tuple[float, float] = (0.7, 1.3)
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    seed: int = 0


def train_cam(run: Run, config: TrainCamConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train the classifier; skipped when up to date (see `Run.up_to_date`) unless `force`."""
    dataset = run.dataset()
    train_samples = dataset.split(config.train_split)
    val_samples = [s for s in dataset.split(config.val_split)] if config.val_split else []
    procs = processes()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    num_classes = dataset.num_classes

    model = build_cam_model(config.method, config.model, num_classes, config.method_options)
    aux = build_aux_loss(config.aux, config.aux_options, model, config.method) if config.aux else None
    saliency_dir = (saliency_directory(run, config.saliency_dir, train_samples, config.train_split, "train-cam")
                    if getattr(model, "uses_saliency", False) else None)
    inputs = [run.path("dataset.json")] + ([saliency_dir] if saliency_dir else [])
    done = run.up_to_date("train-cam", asdict(config), inputs, force)
    if done is not None:
        return done

    trained = CamTraining(model, aux)
    if config.sync_bn:
        trained = synchronise_batchnorm(trained, device)
    trained.to(device, memory_format=memory_format(device))
    step_losses = distributed(trained, device, procs)
    augment = Augment(config.base_size, config.crop_size, config.scale_range)
    train_set = SplitDataset(train_samples, num_classes, augment=augment, seed=config.seed, saliency_dir=saliency_dir)
    loader = training_loader(train_set, config.batch_size, config.workers, device, config.seed, procs)
    optim = OptimConfig(config.epochs, config.lr, config.head_lr_mult, config.weight_decay)
    backbone_params, head_params = model.param_groups()
    optimizer = make_optimizer(backbone_params, head_params + (list(aux.parameters()) if aux else []), optim)

    def losses(batch: dict, step: int) -> dict[str, torch.Tensor]:
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format(device))
        labels = batch["labels"].to(device, non_blocking=True)
        extra = {}
        if saliency_dir:
            extra = {"saliency": batch["saliency"].to(device, non_blocking=True), "has_saliency": batch["has_saliency"]}
        return step_losses(images, labels, **extra)

    # Validation images are resized to the crop size (no randomness) so they batch whatever their size.
    val_set = SplitDataset(val_samples, num_classes, seed=config.seed,
                           augment=Augment(config.crop_size, config.crop_size, (1.0, 1.0), flip=False))

    def on_epoch_end(epoch: int, log: dict[str, float]) -> None:
        if val_samples and procs.is_main:
            log.update(classification_metrics(model, val_set, device, config.batch_size, config.amp))
        log_epoch(epoch, config.epochs, log)
        model.train()

    state = TrainingState(run.path(TRAINING_STATE), trained, asdict(config), resume)
    with run.stage("train-cam", asdict(config), inputs) as record:
        console.print(f"train-cam: {config.method}{' + ' + config.aux if aux else ''} on {len(train_samples)} "
                      f"{config.train_split} images, {config.model.backbone} OS{config.model.output_stride}, "
                      f"device {device}" + (f", {procs.world_size} processes" if procs.distributed else ""))
        trained.train()
        epoch_metrics = train_epochs(loader=loader, optimizer=optimizer, config=optim, device=device, amp=config.amp,
                                     losses_fn=losses, on_epoch_end=on_epoch_end, description="train-cam",
                                     state=state, procs=procs)
        final = epoch_metrics[-1]
        record.metrics = {k: round(v, 4) for k, v in final.items() if k in ("val_map", "val_f1")}
        record.metrics["epoch_seconds"] = round(float(np.mean([m["seconds"] for m in epoch_metrics])), 2)
        if procs.is_main:
            save_checkpoint(run.path(CHECKPOINT), kind="cam", config=asdict(config), class_names=dataset.class_names,
                            model=model, metrics={"epochs": epoch_metrics})
        record.outputs.append(run.path(CHECKPOINT))
        state.discard(procs)
    return record.metrics


class CamTraining(torch.nn.Module):
    """The CAM model and its add-on loss as one module whose forward computes the training terms: what
    DistributedDataParallel wraps, and what the training state saves."""

    def __init__(self, model: torch.nn.Module, aux: torch.nn.Module | None):
        super().__init__()
        self.model = model
        self.aux = aux

    def forward(self, images: torch.Tensor, labels: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
        return training_terms(self.model, self.aux, images, labels, **extra)


def training_terms(model, aux, images: torch.Tensor, labels: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
    """One batch's loss terms: the method's own, plus an add-on's (`aux`, or None) computed on its two views."""
    if aux is None:
        return model.training_losses(images, labels, **extra)
    views = model.training_views(images, labels, **extra)
    return {**views.losses, **aux(views, labels)}


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


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of the average precision of ranking images by score."""
    precisions = []
    for column in range(scores.shape[1]):
        positives = targets[:, column] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, column], kind="stable")
        hits = positives[order]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        precisions.append(precision_at_hit.mean())
    if not precisions:
        raise UserError("validation split has no labelled images: cannot compute mAP")
    return float(np.mean(precisions))


def macro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    true_positive = (predicted & targets).sum(0)
    denominator = predicted.sum(0) + targets.sum(0)
    present = targets.sum(0) > 0
    return float(np.mean(2 * true_positive[present] / np.maximum(denominator[present], 1)))
