"""BatchNorm statistics over the whole global batch of several processes (`--sync-bn`, under torchrun)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


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
