"""Several processes on one job, under torchrun: which process this is, the process group, the share of the
data that is this process's, and BatchNorm statistics synchronised across processes.

`torchrun --nproc-per-node N wsss train-cam ...` starts N copies of a command with RANK, WORLD_SIZE and
LOCAL_RANK in their environment. Outside torchrun a command is process 0 of 1 and nothing is initialised, so
every stage runs the same code either way. The group uses NCCL on GPUs and gloo on CPUs. Processes other than
rank 0 print nothing: rank 0 logs, checkpoints and writes the manifest.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .console import console
from .errors import UserError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all processes."""
        if not self.distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, value):
        """Every process's `value` (any picklable object), in rank order, on every process."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def shard(self, items: list) -> list:
        """This process's share of `items`: every world_size-th one, starting at its rank."""
        return items[self.rank::self.world_size]


def processes() -> Processes:
    """This process's place among torchrun's; initialises the process group on first use (NCCL when CUDA is
    available, else gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_destroy)
        if rank != 0:
            console.quiet = True
    return Processes(rank, world_size, local_rank)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_batch_split(batch_size: int, procs: Processes) -> int:
    """The per-process batch: `--batch-size` is the global batch, split evenly so that N processes see the same
    images per step as one process does."""
    if batch_size % procs.world_size:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {procs.world_size} processes")
    return batch_size // procs.world_size


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the whole global batch instead of each process's share (`--sync-bn`).

    On CUDA this is torch's `nn.SyncBatchNorm`. torch has none for CPU tensors, so on CPUs (gloo) each
    BatchNorm2d becomes a `CpuSyncBatchNorm`, which computes the same statistics."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace_batchnorm(module)


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        replacement = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats)
        replacement.load_state_dict(module.state_dict())
        return replacement
    for name, child in module.named_children():
        setattr(module, name, _replace_batchnorm(child))
    return module


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of every process's gradient (each process's loss depends on
    the summed statistics), as in torch's SyncBatchNorm."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean and variance over all processes' batches (float32
    sums of x and x² all-reduced); a plain BatchNorm2d in eval mode or in a single process."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        values = x.float()
        local_count = values.new_tensor([values.numel() / channels])
        stats = _AllReduceSum.apply(torch.cat([values.sum((0, 2, 3)), (values * values).sum((0, 2, 3)), local_count]))
        count = stats[-1]
        mean = stats[:channels] / count
        variance = (stats[channels:2 * channels] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                unbiased = variance * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = (values - mean[None, :, None, None]) * torch.rsqrt(variance + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)
