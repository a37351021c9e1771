"""Multi-GPU (or multi-process CPU) training under `torchrun`: one process per device, each on its
share of every batch, gradients averaged by DDP; only rank 0 validates, logs and writes checkpoints."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read torchrun's WORLD_SIZE/RANK/LOCAL_RANK and join the process group (nccl on CUDA, else gloo)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend)
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        if self.world <= 1:
            return net
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This process's share of a batch (every rank sees the same batch order)."""
        return batch if self.world <= 1 else batch[self.rank::self.world]

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
