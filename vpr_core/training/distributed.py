"""Multi-GPU (or multi-process CPU) training under `torchrun`: one process per device, each on an equal
share of every batch, gradients averaged (DDP for the model, explicitly for the scheme's own modules);
only rank 0 validates, logs and writes checkpoints while the others wait at a barrier."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, List, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
# collectives wait this long: the other ranks wait at a barrier while rank 0 validates alone
TIMEOUT = timedelta(minutes=60)


def wants_cuda(device: str) -> bool:
    """The training device setting (`auto`, `cpu`, `cuda`, `cuda:N`) asks for GPUs that are there."""
    return torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @classmethod
    def from_env(cls, device: str = "auto") -> "Distributed":
        """Read torchrun's WORLD_SIZE/RANK/LOCAL_RANK and join the process group: nccl when training on
        CUDA, gloo on CPU (also on a GPU machine whose config says device: cpu)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if wants_cuda(device) else "gloo"
        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=TIMEOUT)
        return cls(rank, world, local, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(device_ids=[self.local_rank] if self.backend == "nccl" else None)

    def rank_zero_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then on the others (a shared on-disk cache is written once, then read)."""
        if not self.is_main:
            self.barrier()
        out = fn()
        if self.is_main:
            self.barrier()
        return out

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the trained net. static_graph: every step runs the same graph once, which also lets
        trainable parameters that the loss never reaches (a local head under a global-only loss) pass."""
        if self.world <= 1:
            return net
        ids = [device.index] if device.type == "cuda" else None
        # buffers (frozen BatchNorm statistics, NetVLAD's flag) are synced once by broadcast_state, not every step
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return nn.parallel.DistributedDataParallel(net, device_ids=ids, static_graph=True, **no_sync)

    def broadcast_state(self, modules: Iterable[nn.Module]) -> None:
        """Every parameter and buffer as rank 0 has them (k-means centres, a new classifier, BatchNorm
        statistics): ranks that built or initialised them separately start identical."""
        if self.world <= 1:
            return
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.dtype == torch.bool:  # gloo has no bool type (NetVLAD's `initialised` flag)
                    flag = t.data.to(torch.uint8)
                    dist.broadcast(flag, src=0)
                    t.data.copy_(flag.bool())
                else:
                    dist.broadcast(t.data, src=0)

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Mean over ranks of the gradients of parameters outside DDP (a scheme's classifier); every rank
        holds gradients for the same parameters (the same graph runs on each)."""
        grads: List[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        if self.world <= 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, value: torch.Tensor) -> float:
        """The mean over ranks of a scalar (the logged loss is the whole batch's, not rank 0's share)."""
        if self.world <= 1:
            return value.detach().item()
        v = value.detach().float().reshape(1).clone()
        dist.all_reduce(v)
        return float(v) / self.world

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This process's share of a batch (every rank sees the same batch order). Shares are equal,
        since DDP weighs each rank's mean gradient equally: a remainder of len(batch) % world items is
        left out of this step."""
        if self.world <= 1:
            return batch
        return batch[:len(batch) // self.world * self.world][self.rank::self.world]

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            self.barrier()  # rank 0 finishes its export before any process leaves the group
            dist.destroy_process_group()
