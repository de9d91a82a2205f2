"""Stage `train-affinity`: train the inter-pixel affinity network whose random walk refines CAMs into pseudo masks.

Input: the run's dataset index, a pseudo-mask set with unknown pixels (default `pseudo/crf`, which with IRN's
thresholds 0.30 / 0.05 is IRN's `ir_label`: confident foreground, confident background, 255 between) and, for the
default backbone and weights, the CAM checkpoint. Output: the run's affinity checkpoint (weights, config, class
names, per-epoch losses); while it trains, a training state holds the state after the last finished epoch
(`--resume`). Methods: `stages.registry.AFFINITY_METHODS` (IRN's class boundaries, AffinityNet). Under torchrun
every process trains on its share of each batch (DistributedDataParallel).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch

from .affinity import build_affinity_model
from .affinity.common import FROM_CAM
from .config import TrainAffinityConfig
from .core.checkpoint import load_checkpoint, save_checkpoint
from .core.console import console
from .core.device import memory_format, resolve_device, seed_everything
from .core.distributed import processes
from .core.errors import UserError
from .core.history import epoch_history, loss_terms, timing_metrics
from .core.runs import Run, Stage
from .core.sync_batchnorm import synchronise_batchnorm
from .core.training import TrainingState, distributed, log_epoch, make_optimizer, train_epochs, training_loader
from .data.loading import Augment, SplitDataset, check_mask_sizes, require_mask_set
from .methods import cam_model_from_checkpoint


def train_affinity(run: Run, config: TrainAffinityConfig, *, resume: bool = False, force: bool = False) -> dict:
    """Train the affinity network; skipped when up to date (see `Run.execute`) unless `force`."""
    dataset = run.dataset()
    config = config.on(dataset)
    samples = dataset.split(config.train_split)
    uses_cam = config.model.pretrained == FROM_CAM or not config.model.backbone
    cam_path = (Path(config.cam_checkpoint) if config.cam_checkpoint else run.cam_checkpoint.require()) \
        if uses_cam else None
    cam_payload = load_checkpoint(cam_path, "cam") if uses_cam else None
    config = with_cam_backbone(config, cam_payload)
    mask_dir = require_mask_set(run.pseudo(config.pseudo), samples, config.train_split)
    check_mask_sizes(samples, lambda sample: f"{mask_dir}/{sample.id}.png")
    seed_everything(config.seed)
    model = build_affinity_model(config.method, config.model, config.method_options)
    if config.model.pretrained == FROM_CAM:
        cam_backbone = cam_model_from_checkpoint(cam_payload, cam_path).backbone
        model.backbone.load_state_dict(cam_backbone.state_dict())
    checkpoint = run.affinity_checkpoint.path

    def work() -> dict:
        procs = processes()
        device = resolve_device(config.device)
        trained = synchronise_batchnorm(model, device) if config.sync_bn else model
        trained.to(device, memory_format=memory_format(device))
        step_losses = distributed(AffinityTraining(trained), device, procs)
        augment = Augment(config.base_size, config.crop_size, config.scale_range)
        train_set = SplitDataset(samples, dataset.num_classes, model.normalization, augment=augment,
                                 with_masks=True, mask_dir=str(mask_dir), seed=config.seed)
        loader = training_loader(train_set, config.batch_size, config.workers, device, config.seed, procs)
        base_params, head_params = model.param_groups()
        optimizer = make_optimizer(base_params, head_params, config)

        def losses(batch: dict, step: int) -> dict[str, torch.Tensor]:
            images = batch["image"].to(device, non_blocking=True, memory_format=memory_format(device))
            return step_losses(images, batch["mask"].to(device, non_blocking=True))

        state = TrainingState(run.affinity_training_state, trained, asdict(config), resume)
        console.print(f"train-affinity: {config.method} on {len(samples)} {config.train_split} images with masks "
                      f"{mask_dir}, {config.model.backbone} OS{config.model.output_stride} from "
                      f"{config.model.pretrained}, device {device}"
                      + (f", {procs.world_size} processes" if procs.distributed else ""))
        trained.train()
        epoch_metrics = train_epochs(loader=loader, optimizer=optimizer, config=config, device=device, amp=config.amp,
                                     losses_fn=losses, on_epoch_end=lambda e, log: log_epoch(e, config.epochs, log),
                                     description="train-affinity", state=state, procs=procs)
        if procs.is_main:
            save_checkpoint(checkpoint, kind="affinity", config=asdict(config), class_names=dataset.class_names,
                            model=model, normalization=model.normalization, metrics={"epochs": epoch_metrics})
        state.discard(procs)
        final = epoch_metrics[-1]
        return {"loss": round(sum(loss_terms(final).values()), 4), **timing_metrics(epoch_metrics),
                "history": epoch_history(epoch_metrics)}

    inputs = [run.dataset_index.path, mask_dir] + ([cam_path] if cam_path else [])
    stage = Stage("train-affinity", config, inputs, [checkpoint], work)
    return run.execute(stage, force)


def with_cam_backbone(config: TrainAffinityConfig, cam_payload: dict | None) -> TrainAffinityConfig:
    """The config with the CAM checkpoint's backbone filled in where it is left to it; `--pretrained cam` needs
    that same backbone."""
    if cam_payload is None:
        return config
    cam_backbone = cam_payload["config"]["model"]["backbone"]
    backbone = config.model.backbone or cam_backbone
    if config.model.pretrained == FROM_CAM and backbone != cam_backbone:
        raise UserError(f"--pretrained cam takes the CAM checkpoint's {cam_backbone} weights; --backbone {backbone} "
                        "cannot hold them (use --pretrained imagenet or none, or the same backbone)")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, backbone=backbone))


class AffinityTraining(torch.nn.Module):
    """The affinity model as a module whose forward computes the training terms (what DDP wraps and the training
    state saves)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.training_losses(images, masks)
