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

from pathlib import Path

import pandas as pd

from modalscope.derived import FLAGS, STREAM_RULES
from modalscope.ranks import Ranks
from modalscope.store import ActivationStore
from modalscope.outputs import SHARDS  # the shards' folder; its one home: outputs.py

__all__ = ["SHARDS", "Ranks", "merge_shards", "shard_manifest", "shard_path"]  # Ranks: home ranks.py, kept here for one release



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
            stream: {
                site: {
                    reduction: shard.array(site, stream, reduction)[local:stop]
                    for reduction in target.stats
                }
                for site in target.sites
            }
            for stream in target.streams
        }
        tokens = {c: shard.group[f"tokens/{c}"][local:stop] for c in target.streams}
        flags = {s: shard.group[f"{FLAGS}/{s}"][local:stop] for s in STREAM_RULES if f"{FLAGS}/{s}" in shard.group}
        target.append(records, tokens, shard.pair_ids()[local:stop], flags)  # the holes as the shard has them
