"""Which process of a data-parallel job this is: the one reading of RANK, WORLD_SIZE and LOCAL_RANK.

Why a module of its own, without torch at import: the study folder's lock (lock.py) names its
file by rank before any model code loads, and extraction (record/distributed.py) deals windows
by rank; both read the launcher's environment here, once. torchrun and `accelerate launch`
set the same variables. torch is imported only by the methods that join or use the process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun (or `accelerate launch`) job; one process: rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """From the launcher's RANK, WORLD_SIZE and LOCAL_RANK (unset or empty: one process)."""
        return cls(
            int(os.environ.get("RANK") or 0),
            int(os.environ.get("WORLD_SIZE") or 1),
            int(os.environ.get("LOCAL_RANK") or 0),
        )

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPUs) when launched by torchrun."""
        if self.parallel:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def device(self, requested: str) -> str:
        """Each rank takes the GPU of its local rank; CPU stays CPU."""
        import torch

        if requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def shard_rows(self, n_inputs: int, unit: int) -> np.ndarray:
        """Manifest rows of this rank: whole units (windows), round-robin, in manifest order."""
        units = range(self.rank, -(-n_inputs // unit), self.world_size)
        return np.concatenate(
            [np.arange(u * unit, min((u + 1) * unit, n_inputs)) for u in units]
            or [np.zeros(0, dtype=int)]
        )
