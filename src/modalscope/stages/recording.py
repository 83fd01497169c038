"""Stages 2-3, inputs and recording: each pair's inputs (caption alone, image alone with a minimal
prompt, and any other stream recorded) through the model, every neuron of every decoder layer
reduced over tokens on the device, appended to DIR/activations.zarr.

Why a class: the same recording runs alone, as one rank of torchrun (a shard per rank, merged by
rank 0), and for the random twin (its own folder, the same manifest and batches); `Recording`
holds what they share and `run` / `run_sharded` are the two ways through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from modalscope.config import StudyConfig
from modalscope.data.manifest import TRUNCATED, manifest_hash
from modalscope.provenance import library_versions
from modalscope.stages.settings import write_study_file
from modalscope.store import STORE, ActivationStore
from modalscope.tables import write_frame


@dataclass(frozen=True)
class RecordingPlan:
    """Batching of a recording: the batch size (with --batch-size auto: halved on
    out-of-memory), the length-sorted window (record/plan.py) and the DataLoader workers."""

    batch_size: int
    auto_batch: bool
    sort_window: int
    workers: int


def recording_plan(config: StudyConfig, loaded, ranks) -> RecordingPlan:
    """--batch-size auto starts big on a GPU (16 on CPU) and halves on out-of-memory; a resumed
    study starts from the size its store last used. The sort window keeps a window's records
    within about 1 GiB of host memory."""
    from modalscope.record.plan import default_sort_window

    auto_batch = config.batch_size == "auto"
    batch_size = config.batch_size
    if auto_batch:
        batch_size = 64 if loaded.device.type == "cuda" else 16
        if (config.out_dir / STORE).exists() and not ranks.parallel:
            batch_size = int(ActivationStore.read(config.out_dir / STORE).attrs.get("batch_size", batch_size))
    widths = [loaded.adapter.width(loaded.model, site) for site in config.sites]
    row_bytes = 4 * loaded.adapter.num_layers(loaded.model) * sum(widths) * len(config.stats) * len(config.streams)
    sort_window = config.sort_window or default_sort_window(batch_size, row_bytes)
    workers = config.workers if config.workers is not None else (4 if loaded.device.type == "cuda" else 0)
    return RecordingPlan(int(batch_size), auto_batch, sort_window, workers)


def store_attributes(config: StudyConfig, loaded, builder, manifest: pd.DataFrame, plan: RecordingPlan,
                     base=None) -> dict:
    """The store's provenance: what made it (model, weights, template, prompts, reductions, seed,
    manifest, versions); a resumed run must match it (store.MUST_MATCH)."""
    prov = loaded.provenance
    attrs = {
        **{k: prov[k] for k in ("model", "revision", "commit_hash", "weights_fingerprint",
                                "model_type", "dtype", "quantization", "chat_template", "config")},
        "weights": prov["commit_hash"] or prov["weights_fingerprint"] or prov["revision"],
        "prompts": {"text": builder.text_prefix + "{caption}" + builder.text_suffix,
                    "image": builder.image_prompt},
        "tokens": config.tokens,
        "sites": list(config.sites),
        **config.reductions.attrs(),  # stats, quantile
        "store_dtype": config.store_dtype,
        "conditions": list(config.streams),
        "seed": config.seed,
        "manifest_hash": manifest_hash(manifest),
        "n_inputs": len(manifest),
        "batch_size": plan.batch_size,
        "contrast": " - ".join(config.contrast_pair),  # the study's; tables name the one they hold
        "versions": library_versions(),
        "sort_window": plan.sort_window,
    }
    if base is not None:  # the base language model's provenance, checked on resume with conditions
        attrs["base_model"] = {k: base.provenance[k] for k in ("model", "revision", "commit_hash",
                                                                "weights_fingerprint", "model_type")}
    return attrs


@dataclass
class Recording:
    """One study's recording into DIR/activations.zarr, alone or as one rank of torchrun."""

    config: StudyConfig
    loaded: object
    builder: object
    base: object
    manifest: pd.DataFrame
    plan: RecordingPlan
    attrs: dict
    ranks: object
    budget: object = None  # budget.Budget, printed before the first forward
    keep_settings: tuple[str, ...] = ()  # kept from DIR/study.toml when it is written (write_study_file)
    study_file: bool = True  # write DIR/study.toml (not in the random twin's folder: DIR's repeats both)

    def announce(self) -> None:
        """The store's estimated size and files, once the store is known to match the study."""
        import sys

        if self.budget is not None and self.config.progress and self.ranks.leader:
            print("\n".join(self.budget.lines()), file=sys.stderr)
            if self.config.control == "random-twin":
                print("  as much again for the random twin's store (control/random-twin)", file=sys.stderr)

    def open_or_create(self, path: Path) -> ActivationStore:
        if path.exists():
            store = ActivationStore.open(path)
            store.check_matches(self.attrs)
            return store
        adapter, model = self.loaded.adapter, self.loaded.model
        widths = {site: adapter.width(model, site) for site in self.config.sites}
        return ActivationStore.create(path, adapter.num_layers(model), widths, self.plan.batch_size, self.attrs,
                                      self.config.stats, self.config.streams,
                                      window=self.plan.batch_size * self.plan.sort_window,
                                      dtype=self.config.store_dtype)

    def write_truncations(self) -> None:
        """After the store check: a refused study leaves DIR untouched. DIR/study.toml with them,
        so a study killed before its first stage ends can still be repeated from it."""
        if self.ranks.leader:
            write_frame(self.builder.truncations(self.manifest), self.config.out_dir / TRUNCATED)
            if self.study_file:
                write_study_file(self.config, self.keep_settings)

    def record(self, store: ActivationStore, rows: pd.DataFrame, progress: bool) -> None:
        from modalscope.record.extract import Extraction, extract
        from modalscope.record.reductions import ReductionSpec

        plan = self.plan
        how = Extraction(sites=tuple(self.config.sites), tokens=self.config.tokens, batch_size=plan.batch_size,
                         reductions=ReductionSpec.from_attrs(store.attrs), image_text="image_text" in store.conditions,
                         workers=plan.workers, sort_window=plan.sort_window,
                         auto_batch=plan.auto_batch and not self.ranks.parallel, progress=progress)
        extract(self.loaded, rows, store, how, builder=self.builder, base=self.base)

    def run(self) -> ActivationStore:
        store = self.open_or_create(self.config.out_dir / STORE)
        self.write_truncations()
        self.announce()
        store.group.attrs.update({"batch_size": self.plan.batch_size, "sort_window": self.plan.sort_window})
        self.record(store, self.manifest, self.config.progress)
        return store

    def run_sharded(self) -> ActivationStore:
        from modalscope.record.distributed import merge_shards, shard_manifest, shard_path

        ranks, plan, out_dir = self.ranks, self.plan, self.config.out_dir
        shard = self.open_or_create(shard_path(out_dir, ranks.rank))
        self.write_truncations()
        self.announce()
        check_shard_plan(shard, plan.batch_size, plan.sort_window)
        unit = plan.batch_size * plan.sort_window
        self.record(shard, shard_manifest(self.manifest, ranks, unit), self.config.progress and ranks.leader)
        ranks.barrier()
        if ranks.leader:
            merge_shards(self.open_or_create(out_dir / STORE), out_dir, ranks.world_size, len(self.manifest), unit)
        ranks.barrier()
        return ActivationStore.open(out_dir / STORE)

def check_shard_plan(shard: ActivationStore, batch_size: int, sort_window: int) -> None:
    """Shards are merged window by window, so a resumed torchrun must cut the same windows."""
    had = (int(shard.attrs.get("batch_size", batch_size)), int(shard.attrs.get("sort_window", sort_window)))
    if had != (batch_size, sort_window):
        raise ValueError(
            f"{shard.path}: recorded with --batch-size {had[0]} --sort-window {had[1]}; "
            f"resume the shards with those (or `modalscope extract --out DIR --resume`)"
        )

