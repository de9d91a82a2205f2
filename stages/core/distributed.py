"""Several processes on one job, under torchrun: which process this is, the process group, the share of the
data that is this process's, and BatchNorm statistics synchronised across processes.

`torchrun --nproc-per-node N wsss train-cam ...` starts N copies of a command with RANK, WORLD_SIZE and
LOCAL_RANK in their environment. Outside torchrun a command is process 0 of 1 and nothing is initialised, so
every stage runs the same code either way. The group uses NCCL on GPUs and gloo on CPUs. Processes other than
rank 0 print nothing: rank 0 logs, checkpoints and writes the manifest.

torch is imported only where a process group is involved: the stages that need no network (evaluate, report,
summary) go through `processes()` too and start faster without it. BatchNorm across processes is in
`core.sync_batchnorm`.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

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
            import torch.distributed as dist
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all processes."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist
        total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return total.tolist()

    def gather(self, value):
        """Every process's `value` (any picklable object), in rank order, on every process."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist
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
    import torch
    import torch.distributed as dist
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
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_device():
    import torch
    import torch.distributed as dist
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_batch_split(batch_size: int, procs: Processes) -> int:
    """The per-process batch: `--batch-size` is the global batch, split evenly so that N processes see the same
    images per step as one process does."""
    if batch_size % procs.world_size:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {procs.world_size} processes")
    return batch_size // procs.world_size
