"""The training loop both training stages share: SGD, poly learning rate, AMP on CUDA, progress bar."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

from .console import console, progress_bar
from .device import autocast
from .errors import UserError


@dataclass(frozen=True)
class OptimConfig:
    epochs: int
    lr: float
    head_lr_mult: float
    weight_decay: float
    momentum: float = 0.9
    poly_power: float = 0.9


def training_loader(dataset, batch_size: int, workers: int, device: torch.device,
                    generator: torch.Generator) -> DataLoader:
    """Shuffled (by the seeded generator), full batches only, pinned memory when feeding a GPU."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=generator)


def make_optimizer(backbone_params, head_params, config: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        [
            {"params": backbone_params, "lr": config.lr, "base_lr": config.lr},
            {"params": head_params, "lr": config.lr * config.head_lr_mult, "base_lr": config.lr * config.head_lr_mult},
        ],
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
    )


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float) -> None:
    factor = (1 - step / total_steps) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def train_epochs(
    *,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: OptimConfig,
    device: torch.device,
    amp: bool,
    losses_fn: Callable[[dict], dict[str, torch.Tensor]],
    on_epoch_end: Callable[[int, dict[str, float]], None],
    description: str,
) -> list[dict[str, float]]:
    """Run `config.epochs` epochs; `losses_fn(batch)` returns named loss terms that are summed.

    Returns one dict per epoch with the mean of each term and the epoch's seconds.
    """
    # Loss scaling is for float16 only (CUDA); CPU autocast uses bfloat16, which has float32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    total_steps = config.epochs * len(loader)
    if total_steps == 0:
        raise UserError("nothing to train on: the training split is smaller than one batch")
    history = []
    step = 0
    with progress_bar() as progress:
        task = progress.add_task(description, total=total_steps, status="")
        for epoch in range(config.epochs):
            if hasattr(loader.dataset, "epoch"):
                loader.dataset.epoch = epoch
            sums: dict[str, float] = {}
            started = time.perf_counter()
            for batch in loader:
                poly_lr(optimizer, step, total_steps, config.poly_power)
                with autocast(device, amp):
                    terms = losses_fn(batch)
                    loss = sum(terms.values())
                if not math.isfinite(loss.item()):
                    raise UserError(f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, step {step}; "
                                    "lower --lr")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                step += 1
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{config.epochs} loss {loss.item():.4f}")
            epoch_log = {name: total / len(loader) for name, total in sums.items()}
            epoch_log["seconds"] = time.perf_counter() - started
            history.append(epoch_log)
            on_epoch_end(epoch, epoch_log)
    return history


def log_epoch(epoch: int, epochs: int, values: dict[str, float]) -> None:
    text = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    console.print(f"epoch {epoch + 1}/{epochs}  {text}")
