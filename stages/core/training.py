"""The training loop both training stages share: SGD, poly learning rate, AMP on CUDA, progress bar, a training
state saved after every epoch (`--resume`), and DistributedDataParallel under torchrun."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..config import TrainingConfig
from .checkpoint import safe_load
from .console import console, progress_bar
from .device import autocast, restore_rng_state, rng_state
from .distributed import Processes, check_batch_split
from .errors import UserError
from .io import atomic_path, json_ready
from .runs import comparable

TRAINING_STATE_VERSION = 1


# SGD as in IRN and DeepLab: momentum 0.9, learning rate decayed by (1 - step / steps) ** 0.9.
MOMENTUM = 0.9
POLY_POWER = 0.9


def training_loader(dataset, batch_size: int, workers: int, device: torch.device, seed: int,
                    procs: Processes) -> DataLoader:
    """Full batches only, pinned memory when feeding a GPU. The order of an epoch is a permutation drawn from
    (seed, epoch) alone, so a resumed run sees the same batches; with N processes each takes every N-th image of
    it and a batch of batch_size / N, so that together they see the same images per step as one process."""
    sampler = DistributedSampler(dataset, num_replicas=procs.world_size, rank=procs.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    # The loader draws its workers' base seed from this generator, not from the global one that the methods
    # draw from, so starting a loader on resume does not shift the methods' random numbers.
    generator = torch.Generator().manual_seed(seed)
    # Workers are not persistent: each epoch's workers get the dataset with that epoch set (its augmentation
    # depends on it); persistent workers would keep the copy of the first epoch for the whole run.
    return DataLoader(dataset, batch_size=check_batch_split(batch_size, procs), sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=device.type == "cuda", generator=generator)


def distributed(trained: nn.Module, device: torch.device, procs: Processes) -> nn.Module:
    """`trained` wrapped in DistributedDataParallel under torchrun (itself otherwise). Its forward must compute
    the loss terms, so that DDP sees every parameter the step uses; some methods leave parameters out of some
    steps (warm-ups), hence find_unused_parameters. Buffers are not re-broadcast from rank 0 at every step: each
    process keeps its BatchNorm statistics (--sync-bn makes them agree) and rank 0's are saved."""
    if not procs.distributed:
        return trained
    wrapped = DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True, forward_sync_buffers=False)
    # DDP gave every process rank 0's weights; from here each process needs its own random numbers (dropout,
    # sampled anchors), or the processes would all drop the same units of their different images.
    if procs.rank > 0:
        torch.manual_seed(torch.initial_seed() + procs.rank)
    return wrapped


def make_optimizer(backbone_params, head_params, config: TrainingConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        [
            {"params": backbone_params, "lr": config.lr, "base_lr": config.lr},
            {"params": head_params, "lr": config.lr * config.head_lr_mult, "base_lr": config.lr * config.head_lr_mult},
        ],
        lr=config.lr, momentum=MOMENTUM, weight_decay=config.weight_decay,
    )


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, power: float) -> None:
    factor = (1 - step / total_steps) ** power
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


@dataclass
class TrainingState:
    """Where a stage keeps its per-epoch training state, and whether to continue from it (`--resume`).

    The state is everything the next epoch depends on: the weights of every trained module (the model, training-
    only heads, and memory banks as their modules' extra state), the optimizer, the loss scaler, each process's
    random generators, the epoch count and the per-epoch metrics. With it a resumed run continues to the same
    result as an uninterrupted one. A state saved under another config is refused, not silently mixed in.
    """

    path: Path
    trained: nn.Module
    config: dict[str, Any]
    resume: bool = False

    def save(self, epoch: int, history: list[dict], optimizer, scaler, procs: Processes) -> None:
        rng = procs.gather(rng_state())  # every process's generators: each continues with its own
        if procs.is_main:
            payload = {"version": TRAINING_STATE_VERSION, "epoch": epoch, "history": history,
                       "config": json_ready(self.config),
                       "world_size": procs.world_size, "modules": self.trained.state_dict(),
                       "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng}
            with atomic_path(self.path) as tmp:
                torch.save(payload, tmp)
        procs.barrier()

    def load(self, optimizer, scaler, procs: Processes) -> tuple[int, list[dict]]:
        """(epochs done, their metrics) after restoring everything; (0, []) when there is nothing to resume."""
        if not self.resume:
            return 0, []
        if not self.path.is_file():
            console.print(f"--resume: no training state at {self.path}, starting from the first epoch")
            return 0, []
        payload = safe_load(self.path, "training state")
        if not isinstance(payload, dict) or payload.get("version") != TRAINING_STATE_VERSION:
            raise UserError(f"{self.path} is not a wsss training state of version {TRAINING_STATE_VERSION}")
        saved, current = comparable(payload["config"]), comparable(self.config)
        changed = [key for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
        if changed:
            key = changed[0]
            raise UserError(f"cannot resume from {self.path}: it was saved with {key}={saved.get(key)!r}, "
                            f"this run has {key}={current.get(key)!r} (run without --resume to start over)")
        if payload["world_size"] != procs.world_size:
            raise UserError(f"cannot resume from {self.path}: it was saved by {payload['world_size']} processes, "
                            f"this run has {procs.world_size}")
        self.trained.load_state_dict(payload["modules"])
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"][procs.rank])
        console.print(f"--resume: continuing after epoch {payload['epoch']} from {self.path}")
        return payload["epoch"], payload["history"]

    def discard(self, procs: Processes) -> None:
        """Once the stage's own outputs are written the state is no longer needed (it holds the optimizer too)."""
        if procs.is_main:
            self.path.unlink(missing_ok=True)


def train_epochs(
    *,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
    device: torch.device,
    amp: bool,
    losses_fn: Callable[[dict, int], dict[str, torch.Tensor]],
    on_epoch_end: Callable[[int, dict[str, float]], None],
    description: str,
    state: TrainingState,
    procs: Processes,
) -> list[dict[str, float]]:
    """Run `config.epochs` epochs (or those left after a resumed state); `losses_fn(batch, step)` returns named
    loss terms that are summed. The training state is saved after every epoch, after `on_epoch_end`.

    Returns one dict per epoch with the mean of each term, the epoch's seconds, and the seconds of it spent
    waiting for the loader's next batch (`data_seconds`: the input pipeline not keeping up, worker start-up
    included).
    """
    # Loss scaling is for float16 only (CUDA); CPU autocast uses bfloat16, which has float32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    if total_steps == 0:
        raise UserError("nothing to train on: the training split is smaller than one batch")
    first_epoch, history = state.load(optimizer, scaler, procs)
    with progress_bar() as progress:
        task = progress.add_task(description, total=total_steps, completed=first_epoch * steps_per_epoch, status="")
        for epoch in range(first_epoch, config.epochs):
            loader.sampler.set_epoch(epoch)
            loader.dataset.epoch = epoch
            sums: dict[str, float] = {}
            started = waiting = time.perf_counter()
            data_seconds = 0.0
            for index, batch in enumerate(loader):
                data_seconds += time.perf_counter() - waiting
                step = epoch * steps_per_epoch + index
                poly_lr(optimizer, step, total_steps, POLY_POWER)
                with autocast(device, amp):
                    terms = losses_fn(batch, step)
                    loss = sum(terms.values())
                if not math.isfinite(loss.item()):
                    raise UserError(f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, step {step}; "
                                    + (f"the last good state (after epoch {epoch}) is kept in {state.path}"
                                       if epoch > 0 else "no epoch had completed")
                                    + "; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if not weights_finite(optimizer):
                    raise UserError(f"training diverged: the weights became NaN or infinite at epoch {epoch + 1}, "
                                    f"step {step}" + (f"; the last good state (after epoch {epoch}) is kept in "
                                                      f"{state.path}" if epoch > 0 else "") + "; lower --lr")
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{config.epochs} loss {loss.item():.4f}")
                waiting = time.perf_counter()
            epoch_log = {name: total / steps_per_epoch for name, total in sums.items()}
            epoch_log["seconds"] = time.perf_counter() - started
            epoch_log["data_seconds"] = data_seconds
            history.append(epoch_log)
            on_epoch_end(epoch, epoch_log)
            state.save(epoch + 1, history, optimizer, scaler, procs)
    return history


def weights_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every trained weight is finite: one reduction and one sync per step (the loss has one already);
    a NaN or an infinity anywhere makes the sum non-finite."""
    sums = [p.detach().float().sum() for group in optimizer.param_groups for p in group["params"]]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def log_epoch(epoch: int, epochs: int, values: dict[str, float]) -> None:
    text = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    console.print(f"epoch {epoch + 1}/{epochs}  {text}")
