"""The `extract` stage: the models checked, the pairs checked against them, then recorded.

Why this order: everything that can refuse a study (a twin it cannot run with, another --seed
into DIR, a model without vision, a disk too small) is checked before the first write, so a
refused study leaves DIR as it was; then the manifest, DIR/study.toml and the store.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import pandas as pd

from modalscope.config import StudyConfig
from modalscope.data.manifest import MANIFEST, load_manifest
from modalscope.data.pairs import Pair
from modalscope.stages.loading import base_check, load_base, load_vlm, weights_content_started
from modalscope.stages.pairs import check_manifest_request, prepare_manifest_ranked, read_pairs
from modalscope.stages.recording import RecordingPlan, recording_plan, Recording, store_attributes
from modalscope.store import STORE, ActivationStore


def extract_stage(config: StudyConfig, manifest: pd.DataFrame | None = None, force: bool = False,
                  keep_settings: tuple[str, ...] = ()) -> ActivationStore:
    """Record every condition for every pair not yet in the store (a rerun continues).

    The model and its processor are loaded (and refused in one line if they cannot be used)
    before anything is written to DIR; then, without a `manifest`, the pairs are checked
    against them (`prepare_manifest_ranked`) and the manifest is written.
    Under torchrun each rank records its shard into DIR/shards/rank{r}.zarr, then rank 0
    merges the shards into DIR/activations.zarr (see record/distributed.py).
    Before anything is written the store's estimated size and file count are printed (with
    `config.progress`) and a disk without room for it refuses the study unless `force`.
    DIR/study.toml is written before the first forward (`write_study_file`, keeping
    `keep_settings` from the file), so a study killed during its first extraction still has it.
    """
    from modalscope.record.distributed import Ranks
    from modalscope.record.inputs import PromptBuilder
    from modalscope.twin import twin_problem

    problem = twin_problem(config)  # --control random-twin with what it cannot run with: before any model loads
    if problem:
        raise ValueError(problem)
    ranks = Ranks.from_env()
    ranks.start()
    if manifest is None:
        check_manifest_request(config)  # another --seed or --num-pairs into DIR: refused before the model loads
    fresh = manifest is None and ranks.leader and not (config.out_dir / MANIFEST).exists()
    pairs = read_pairs(config) if fresh and not (config.out_dir / STORE).exists() else None
    weights = weights_content_started(config)  # hashed while the model loads
    loaded = load_vlm(config, ranks)
    base = load_base(config, loaded, ranks) if config.base_model else None
    builder = PromptBuilder.for_model(loaded, config.tokens)  # cuts captions to the context
    check_base = base_check(config, builder, base)
    check_base([])  # the template, before anything is written
    plan = recording_plan(config, loaded, ranks)
    # The store's size before anything is written: a disk too small refuses the study.
    budget = _check_budget(config, loaded, plan, _expected_pairs(config, manifest, pairs), force)
    if manifest is None:
        image_text = "image_text" in config.conditions

        def prepare(caption, image):
            check_base([caption])  # refuses the study (one line) before the manifest is written
            return builder.pair_problem(caption, image, image_text)

        manifest = prepare_manifest_ranked(config, prepare, pairs)
    check_base(manifest["caption"].tolist())  # a manifest made before
    attrs = {**store_attributes(config, loaded, builder, manifest, plan, base), **weights()}
    recorder = Recording(config, loaded, builder, base, manifest, plan, attrs, ranks, budget, keep_settings)
    store = recorder.run_sharded() if ranks.parallel else recorder.run()
    if config.control == "random-twin":  # the same inputs through the re-initialised model (twin.py)
        seed = int(store.attrs.get("seed", config.seed))  # the recorded study's (`extract --resume` names none)
        record_twin(config, loaded, builder, manifest, plan, {**attrs, "seed": seed}, ranks)
    return store


def record_twin(config: StudyConfig, loaded, builder, manifest: pd.DataFrame, plan: "RecordingPlan", attrs: dict,
                 ranks) -> ActivationStore | None:
    """The random twin's recording into DIR/control/random-twin/activations.zarr: the study's
    manifest, batches and token scopes through `type(model)._from_config(config)` seeded from the
    study's seed (the store's). A twin store that already holds every pair is checked against the
    study and kept (nothing is built); an unfinished one continues. The study's model is released
    before the twin is built, so the twin fits wherever the model did."""
    from modalscope import twin as twins

    folder = twins.twin_dir(config.out_dir)
    seed = int(attrs["seed"])
    twin_attrs = twins.twin_attributes(attrs, seed)
    path = folder / STORE
    if (path / "zarr.json").is_file():
        existing = ActivationStore.read(path)
        existing.check_matches(twin_attrs)
        if existing.n_done >= len(manifest):
            return existing
    if ranks.leader:
        twins.prepare_folder(config.out_dir)
    ranks.barrier()
    if config.progress and ranks.leader:
        print(f"random twin: the same {len(manifest):,} pairs through a re-initialised copy of {config.model} "
              f"(seed {seed}) into {folder}", file=sys.stderr)
    twin = twins.twin_of(loaded, seed, release_source=True)
    twin_config = replace(config, out_dir=folder, control=None)
    recorder = Recording(twin_config, twin, builder, None, manifest, plan, twin_attrs, ranks, study_file=False)
    return recorder.run_sharded() if ranks.parallel else recorder.run()


def _expected_pairs(config: StudyConfig, manifest: pd.DataFrame | None, pairs: list[Pair] | None) -> int:
    """Pairs the store will hold: the manifest's, or at most --num-pairs of the data's."""
    if manifest is not None:
        return len(manifest)
    if (config.out_dir / MANIFEST).exists():
        return len(load_manifest(config.out_dir)[0])
    available = len(pairs) if pairs is not None else (config.num_pairs or 0)
    return min(available, config.num_pairs or available)


def _check_budget(config: StudyConfig, loaded, plan: "RecordingPlan", n_pairs: int, force: bool):
    """The store's budget (budget.py), refused in one line when the free disk cannot hold it."""
    from modalscope.budget import estimate, study_disk_problem
    from modalscope.twin import twin_store_done

    budget = estimate(config, loaded.model.config, n_pairs, plan.batch_size, plan.sort_window)
    store = config.out_dir / STORE
    already = ActivationStore.read(store).n_done if store.exists() else 0
    twin_done = twin_store_done(config.out_dir) if config.control == "random-twin" else 0
    problem = study_disk_problem(config, budget, already, twin_done)
    if problem and not force:
        raise ValueError(problem)
    return budget


