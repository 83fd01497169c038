"""Data-parallel extraction on torch.distributed: `torchrun --nproc-per-node N -m modalscope ...`.

Why this shape: every rank loads the model on its own device and records a shard of the
manifest into its own store, `DIR/shards/rank{r}.zarr`, with its own ledger, so ranks never
write the same file and each resumes on its own. Shards are whole windows of batches (the
unit extraction sorts by length and commits, record/plan.py) dealt round-robin (window w goes
to rank w mod N), so every input keeps the neighbours it has in a single process and the
results are bit-identical to one. When all ranks are done, rank 0 copies the shards window
by window into `DIR/activations.zarr`, the layout a single process writes.
`accelerate launch` sets the same environment variables (RANK, WORLD_SIZE, LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from modalscope.derived import FLAGS, STREAM_RULES
from modalscope.store import ActivationStore

SHARDS = "shards"


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPUs) when launched by torchrun."""
        if self.parallel and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def stop(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, requested: str) -> str:
        """Each rank takes the GPU of its local rank; CPU stays CPU."""
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


def shard_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / SHARDS / f"rank{rank}.zarr"


def shard_manifest(manifest: pd.DataFrame, ranks: Ranks, unit: int) -> pd.DataFrame:
    return manifest.iloc[ranks.shard_rows(len(manifest), unit)].reset_index(drop=True)


def merge_shards(
    target: ActivationStore, out_dir: Path, world_size: int, n_inputs: int, unit: int
) -> None:
    """Append the shards' windows (`unit` rows each) into `target` in manifest order
    (resumable: starts at the target's ledger, which is always at a window boundary)."""
    shards = [ActivationStore.open(shard_path(out_dir, r)) for r in range(world_size)]
    for first in range(target.n_done, n_inputs, unit):
        window = first // unit
        shard = shards[window % world_size]
        local = (window // world_size) * unit
        stop = local + min(unit, n_inputs - first)
        records = {
            condition: {
                site: {
                    stat: shard.array(site, condition, stat)[local:stop]
                    for stat in target.stats
                }
                for site in target.sites
            }
            for condition in target.conditions
        }
        tokens = {c: shard.group[f"tokens/{c}"][local:stop] for c in target.conditions}
        flags = {s: shard.group[f"{FLAGS}/{s}"][local:stop] for s in STREAM_RULES if f"{FLAGS}/{s}" in shard.group}
        target.append(records, tokens, shard.pair_ids()[local:stop], flags)  # the holes as the shard has them
