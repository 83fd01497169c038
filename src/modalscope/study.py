"""The study, top to bottom, as the report's method section reads.

1. Pairs: image-caption pairs, shuffled once with a seed into `manifest.parquet`, reused;
   pairs that cannot be used (in either condition) are listed in `skipped.parquet`.
2. Inputs: each pair twice, unimodally (caption alone; image alone with a minimal prompt).
3. Recording: every neuron of every decoder layer, reduced over tokens on the device
   (max, mean), stored per input in `activations.zarr`.
4. Statistics: Δ = max_text - max_image per input and neuron; per neuron mean Δ, sd,
   one-sample t, p, BH q, Cohen's d_z; per layer the mean and its trend.
5. Tables 1-3, Figure 1 (histograms per layer) and Figure 2 (layer trend).
6. The report: DIR/report.html, the study on one offline page.

Each stage reads what the previous one wrote in DIR, so `extract`, `analyze`, `plot`,
`report` and `export` also run alone on an existing study folder.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import pandas as pd

from modalscope.config import StudyConfig
from modalscope.data.manifest import (
    MANIFEST, SKIPPED, TRUNCATED, data_counts, data_notes, load_manifest, manifest_frame, manifest_hash,
    save_manifest, save_skipped, shuffled,
)
from modalscope.data.pairs import DataError, Pair, load_coco, load_jsonl
from modalscope.data.validate import Prepare, select_usable
from modalscope.seeds import record as seed_streams
from modalscope.store import STORE, ActivationStore
from modalscope.tables import (
    ALIGNMENT, INPUT_LAYERS, INPUT_LAYERS_VS_BASE, LAYERS, LAYERS_VS_BASE, LONG_TABLE_AUTO_LIMIT, SIGNIFICANT,
    SUMMARY, TABLE3, long_table_csv, table1_rows, write_frame, write_json, write_long_tables,
)

from modalscope.results import StudyResult  # what run_study returns (its tables read lazily)

LIBRARIES = ("modalscope", "torch", "transformers", "tokenizers", "numpy", "scipy", "zarr", "pyarrow", "plotly")


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{name: version(name) for name in LIBRARIES}}


# 1. Pairs -------------------------------------------------------------------------------
def read_pairs(config: StudyConfig) -> list[Pair]:
    """The pairs of the study's data file (COCO or JSONL); a file that cannot be read as a
    whole is a one-line DataError. Cheap next to loading a model, so it comes first."""
    if config.jsonl is not None:
        pairs = load_jsonl(config.jsonl)
    elif config.captions is not None:
        pairs = load_coco(config.captions, config.images, config.instances)
    else:
        raise DataError(f"{config.out_dir}: no manifest yet; give --captions/--images or --jsonl")
    if not pairs:
        raise DataError(f"{_source(config)}: holds no image-caption pairs")
    return pairs


def check_manifest_request(config: StudyConfig) -> pd.DataFrame | None:
    """DIR's manifest (None when there is none yet), refusing in one line a run that asks for
    other pairs (another --seed, --num-pairs or data source) than the ones it was made with.
    Cheap, so extraction calls it before the model loads (issue 22.4)."""
    path = config.out_dir / MANIFEST
    if not path.exists():
        return None
    frame, meta = load_manifest(config.out_dir)
    wanted = {"seed": config.seed, "num_pairs": config.num_pairs, "source": _source(config)}
    if wanted["source"] is not None:
        for key, value in wanted.items():
            if meta.get(key) != value:
                raise DataError(
                    f"{path}: made with {key}={meta.get(key)!r}, this run asks for "
                    f"{value!r}; a study keeps its manifest, so use a new --out"
                )
    return frame


def prepare_manifest(config: StudyConfig, prepare: Prepare | None = None,
                     pairs: list[Pair] | None = None) -> pd.DataFrame:
    """Reuse DIR/manifest.parquet if it exists (refusing a conflicting request), else make it
    from `pairs` (default: `read_pairs(config)`).

    `prepare(caption, image)`: the model's check that a pair's inputs can be made (the
    extraction passes its PromptBuilder's); without it only the data are checked."""
    wanted = {"seed": config.seed, "num_pairs": config.num_pairs, "source": _source(config)}
    path = config.out_dir / MANIFEST
    if path.exists():
        return check_manifest_request(config)
    if (config.out_dir / STORE).exists():  # its rows belong to a manifest that is gone
        raise DataError(f"{config.out_dir}: holds {STORE} but no manifest.parquet, so its rows cannot be "
                        "matched to pairs; use a new --out (nothing was written)")
    pairs = read_pairs(config) if pairs is None else pairs
    # Walk the shuffled pairs, checking each in full, until --num-pairs usable ones are found;
    # the skipped ones go to DIR/skipped.parquet, written before the manifest that commits it.
    usable, skipped = select_usable(shuffled(pairs, config.seed), config.num_pairs,
                                    progress=config.progress, prepare=prepare)
    save_skipped(skipped, config.out_dir)
    if len(usable) < 2:
        example = f" (e.g. pair {skipped[0][0].pair_id}: {_missing_hint(config, *skipped[0])})" if skipped else ""
        raise DataError(
            f"{wanted['source']}: {len(usable)} usable image-caption pair(s), a study needs 2; "
            f"{len(skipped)} skipped{example}; see {config.out_dir / SKIPPED}"
        )
    frame = manifest_frame(usable)
    save_manifest(frame, config.out_dir, wanted)
    return frame


def _missing_hint(config: StudyConfig, pair: Pair, reason: str) -> str:
    """A skip reason; a missing image file names the path tried and where it was resolved from."""
    if reason != "image file not found":
        return reason
    if config.jsonl is not None:
        return (f"{reason}: {pair.image_path} (JSONL image paths are relative to the JSONL file's folder, "
                f"{Path(config.jsonl).resolve().parent})")
    return f"{reason}: {pair.image_path} (check --images)"


def _source(config: StudyConfig) -> str | None:
    source = config.jsonl or config.captions
    return str(Path(source).resolve()) if source is not None else None


# 2-3. Inputs and recording ----------------------------------------------------------------
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
    weights = _weights_content_started(config)  # hashed while the model loads
    loaded = _load_vlm(config, ranks)
    base = _load_base(config, loaded, ranks) if config.base_model else None
    builder = PromptBuilder.for_model(loaded, config.tokens)  # cuts captions to the context
    check_base = _base_check(config, builder, base)
    check_base([])  # the template, before anything is written
    plan = _recording_plan(config, loaded, ranks)
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
    recorder = _Recording(config, loaded, builder, base, manifest, plan, attrs, ranks, budget, keep_settings)
    store = recorder.run_sharded() if ranks.parallel else recorder.run()
    if config.control == "random-twin":  # the same inputs through the re-initialised model (twin.py)
        seed = int(store.attrs.get("seed", config.seed))  # the recorded study's (`extract --resume` names none)
        _record_twin(config, loaded, builder, manifest, plan, {**attrs, "seed": seed}, ranks)
    return store


def _record_twin(config: StudyConfig, loaded, builder, manifest: pd.DataFrame, plan: "RecordingPlan", attrs: dict,
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
    recorder = _Recording(twin_config, twin, builder, None, manifest, plan, twin_attrs, ranks, study_file=False)
    return recorder.run_sharded() if ranks.parallel else recorder.run()


def _weights_content_started(config: StudyConfig):
    """The content of a local model folder's weight files (models/loading.weights_content), hashed
    in a thread while the model loads; returns the function that waits for it ({} for a hub model,
    pinned by its commit hash). A resumed store's attributes let unchanged files go unread."""
    import threading

    from modalscope.models.loading import weights_content

    folder = Path(config.model).expanduser() if config.model else None
    if folder is None or not folder.is_dir():
        return dict
    store = config.out_dir / STORE
    recorded = ActivationStore.read(store).attrs if (store / "zarr.json").is_file() else None
    result: dict = {}

    def run() -> None:
        try:
            result["content"] = weights_content(folder, recorded)
        except OSError as err:
            result["error"] = err

    thread = threading.Thread(target=run, name="weights-sha256", daemon=True)  # a failed load does not wait
    thread.start()

    def wait() -> dict:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["content"]

    return wait


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
    from modalscope.budget import disk_problem, estimate

    budget = estimate(config, loaded.model.config, n_pairs, plan.batch_size, plan.sort_window)
    store = config.out_dir / STORE
    already = ActivationStore.read(store).n_done if store.exists() else 0
    problem = disk_problem(budget, config.out_dir, already)
    if config.control == "random-twin":  # the twin's store is as large again
        from modalscope.twin import twin_store_done

        both = disk_problem(replace(budget, n_pairs=2 * budget.n_pairs), config.out_dir,
                            already + twin_store_done(config.out_dir))
        problem = both and both.replace("the store needs", "the store and its random twin's need")
    if problem and not force:
        raise ValueError(problem)
    return budget


def _load_vlm(config: StudyConfig, ranks):
    """The vision-language model, refused in one line if it has no vision tower."""
    from modalscope.models.loading import load_model  # torch/transformers only when needed

    with _weights_checked("--model", config.model):
        loaded = load_model(config.model, config.revision, config.dtype, ranks.device(config.device),
                            config.device_map, config.quantization)
    if not loaded.adapter.has_vision:
        raise ValueError(f"--model {config.model}: a language model without vision ({loaded.provenance['model_type']}): "
                         "the image conditions cannot run on it; pass it as --base-model of its vision-language model")
    return loaded


def weights_problem(err: BaseException) -> str | None:
    """Why a model's weight files cannot be loaded, in one line, for the errors that are the
    files' fault (truncated or damaged safetensors, a pickle holding more than tensors); None for
    anything else (a bug keeps its traceback)."""
    import pickle

    text = " ".join(str(err).split())
    first = text.split(". ")[0][:200]
    if type(err).__name__ == "SafetensorError":
        return (f"a weight file cannot be read ({first}): it is truncated or damaged; download or copy "
                "it again")
    if isinstance(err, pickle.UnpicklingError):
        return ("its pytorch_model.bin is a pickle holding more than tensors, which modalscope refuses to load "
                "(unpickling it could run code); use a safetensors copy of the weights from a trusted source")
    if isinstance(err, EOFError) or (isinstance(err, RuntimeError) and "PytorchStreamReader" in text):
        return f"a weight file cannot be read ({first}): it is truncated or damaged; download or copy it again"
    return None


class _weights_checked:
    """`with _weights_checked("--model", name):` turns a damaged or refused weight file into a
    one-line ValueError naming the option and the model."""

    def __init__(self, option: str, model: str | None) -> None:
        self.option, self.model = option, model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> None:
        problem = weights_problem(error) if error is not None and isinstance(error, Exception) else None
        if problem is not None:
            raise ValueError(f"{self.option} {self.model}: {problem}") from None


@dataclass(frozen=True)
class RecordingPlan:
    """Batching of a recording: the batch size (with --batch-size auto: halved on
    out-of-memory), the length-sorted window (record/plan.py) and the DataLoader workers."""

    batch_size: int
    auto_batch: bool
    sort_window: int
    workers: int


def _recording_plan(config: StudyConfig, loaded, ranks) -> RecordingPlan:
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
class _Recording:
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
        _check_shard_plan(shard, plan.batch_size, plan.sort_window)
        unit = plan.batch_size * plan.sort_window
        self.record(shard, shard_manifest(self.manifest, ranks, unit), self.config.progress and ranks.leader)
        ranks.barrier()
        if ranks.leader:
            merge_shards(self.open_or_create(out_dir / STORE), out_dir, ranks.world_size, len(self.manifest), unit)
        ranks.barrier()
        return ActivationStore.open(out_dir / STORE)


def _load_base(config: StudyConfig, loaded, ranks):
    """The base language model, refused in one line unless its neurons match the VLM's:
    the same number of decoder layers and the same width at every site."""
    from modalscope.models.loading import load_model

    with _weights_checked("--base-model", config.base_model):
        base = load_model(config.base_model, config.base_revision, config.dtype, ranks.device(config.device),
                          config.device_map, config.quantization)
    if base.adapter.has_vision:
        raise ValueError(f"--base-model {config.base_model}: a vision-language model; give the language model "
                         f"{config.model} was trained from")
    ours = (loaded.adapter.num_layers(loaded.model), [loaded.adapter.width(loaded.model, s) for s in config.sites])
    theirs = (base.adapter.num_layers(base.model), [base.adapter.width(base.model, s) for s in config.sites])
    if ours != theirs:
        raise ValueError(f"--base-model {config.base_model}: {theirs[0]} layers of widths {theirs[1]} "
                         f"({', '.join(config.sites)}), {config.model} has {ours[0]} of {ours[1]}: "
                         "its neurons cannot be matched index by index")
    return base


def _base_check(config: StudyConfig, builder, base):
    """captions -> None, or a one-line ValueError where the base model's tokenizer would read the
    VLM's text inputs (the template, then each caption) differently: the base gets the VLM's
    token ids, which must be the same text to it."""
    from modalscope.record.inputs import BaseTokens

    tokens = BaseTokens(builder, base.processor.tokenizer) if base is not None else None

    def check(captions: list[str]) -> None:
        where = tokens.mismatch(captions) if tokens is not None else None
        if where:
            raise ValueError(f"--base-model {config.base_model}: its tokenizer reads {where} differently from "
                             f"{config.model}'s, so the same token ids would not be the same text")

    return check


def _check_shard_plan(shard: ActivationStore, batch_size: int, sort_window: int) -> None:
    """Shards are merged window by window, so a resumed torchrun must cut the same windows."""
    had = (int(shard.attrs.get("batch_size", batch_size)), int(shard.attrs.get("sort_window", sort_window)))
    if had != (batch_size, sort_window):
        raise ValueError(
            f"{shard.path}: recorded with --batch-size {had[0]} --sort-window {had[1]}; "
            f"resume the shards with those (or `modalscope extract --out DIR --resume`)"
        )


def prepare_manifest_ranked(config: StudyConfig, prepare: Prepare | None = None,
                            pairs: list[Pair] | None = None) -> pd.DataFrame:
    """`prepare_manifest`, made by rank 0 first under torchrun, then read by the others."""
    from modalscope.record.distributed import Ranks

    ranks = Ranks.from_env()
    ranks.start()
    if ranks.leader:
        manifest = prepare_manifest(config, prepare, pairs)
    ranks.barrier()
    if not ranks.leader:
        manifest = prepare_manifest(config)
    return manifest


# 4-5. Statistics and tables ----------------------------------------------------------------
def analyze_stage(config: StudyConfig, manifest: pd.DataFrame) -> tuple[list[Path], str | None]:
    """Tables 1-3, the layer summary, the layer alignment of the two modalities (alignment.parquet,
    layer_alignment.py) and summary.json into DIR/tables, replacing every output of an earlier
    analysis (a table not written now, or a CSV copy without --csv, is removed).
    Each Parquet table carries the study's settings and versions in its schema metadata;
    summary.json gains per site the headline sentence and where each alignment measure peaks;
    study.json and DIR/study.toml take the analysis settings, its wall time and versions.
    With a random twin recorded (`--control random-twin`), the twin's folder is analysed first with
    the same settings and each site's summary gains its `twin` block (twin.py).

    Returns the paths written and, when Tables 1-2 were left out for size (or a twin cannot be
    compared), a one-line note.
    """
    from modalscope.analysis import run_analysis
    from modalscope.layer_alignment import alignment_summary, run_alignment
    from modalscope.cards.table import TOP_PAIRS, top_pairs_stat, write_top_pairs
    from modalscope.provenance import record_stage, table_provenance
    from modalscope.report.headline import headline
    from modalscope.stats.layer_summary import significance_table
    from modalscope.tables import remove_table

    from modalscope.paths import check_inside

    clock = time.perf_counter()
    twin_paths, twin_summary, twin_note = _analyze_twin(config)  # ([], None, None) without a random twin
    store = ActivationStore.read(config.out_dir / STORE)
    tables_dir = check_inside(config.out_dir / "tables", config.out_dir)  # never written outside DIR
    contrast = config.contrast_pair
    settings = _analysis_settings(config, store)
    # with text_base recorded, also Δ_base = text - text_base; a bar per site unless --quiet
    result = run_analysis(store, settings, progress=config.progress and sys.stderr.isatty())
    for site, entry in result.summary.items():  # per site (and its Δ_base): pairs left out or cut, the headline
        for trend in (entry, entry.get("vs_base")):
            if trend is not None:
                trend.update(data_counts(config.out_dir))
                trend["headline"] = headline(site, trend)
    alignment = run_alignment(store, settings, config.alignment_stat)  # where words and pixels meet
    for site, entry in result.summary.items():
        entry["alignment"] = alignment_summary(alignment, site)
    meta = table_provenance(store, " - ".join(contrast), config)
    paths = [
        write_frame(result.neurons, tables_dir / TABLE3, config.csv, meta),
        write_frame(result.layers, tables_dir / LAYERS, config.csv, meta),
        write_frame(result.input_means, tables_dir / INPUT_LAYERS, config.csv, meta),
        write_frame(significance_table(result.layers, store.stats), tables_dir / SIGNIFICANT, config.csv, meta),
        write_frame(alignment, tables_dir / ALIGNMENT, config.csv, meta),
        write_json(result.summary, tables_dir / SUMMARY),
    ]
    base_tables = {LAYERS_VS_BASE: "layers", INPUT_LAYERS_VS_BASE: "input_means"}
    for name, part in base_tables.items():
        if result.vs_base is not None:
            paths.append(write_frame(getattr(result.vs_base, part), tables_dir / name, config.csv, meta))
        else:  # a previous analysis's Δ_base would not match these tables
            remove_table(tables_dir / name)
    paths.append(write_top_pairs(store, tables_dir / TOP_PAIRS, top_pairs_stat(config.stat, store), contrast,
                                 provenance=meta, csv=config.csv))
    paths, note = _long_tables(config, store, manifest, meta, paths)
    from modalscope.concepts import concept_stage  # concepts.parquet, summary's `concepts`; none without labels
    paths += concept_stage(config.out_dir, config.csv, meta)
    if twin_summary is not None:  # each site's `twin` block and the twin sentence of its headline
        from modalscope.tables import read_summary
        from modalscope.twin import add_twin

        write_json(add_twin(read_summary(tables_dir / SUMMARY), twin_summary), tables_dir / SUMMARY)
        paths += twin_paths
    note = "\n".join(x for x in (note, twin_note) if x) or None
    record_stage(config.out_dir, "analyze", time.perf_counter() - clock,
                 {name: getattr(config, name) for name in ANALYSIS_FIELDS}, seeds=seed_streams(settings.seed))
    update_study_file(config.out_dir, {name: getattr(config, name) for name in ANALYSIS_FIELDS})
    return paths, note


def _analyze_twin(config: StudyConfig) -> tuple[list[Path], dict | None, str | None]:
    """The random twin's analysis (DIR/control/random-twin/tables, the study's settings, Tables 1-2
    left out) when DIR holds a twin of all the study's recorded pairs: (its paths, its summary, None);
    a twin that cannot be compared gives ([], None, one line why); no twin ([], None, None)."""
    from modalscope import twin as twins
    from modalscope.tables import read_summary

    ready, note = twins.analysable(config.out_dir)
    if not ready:
        return [], None, note
    folder = twins.twin_dir(config.out_dir)
    twin_config = replace(config, out_dir=folder, control=None, long_tables="never")
    manifest, _ = load_manifest(folder)
    paths, _ = analyze_stage(twin_config, manifest)  # finds no twin of its own
    return paths, read_summary(folder / "tables" / SUMMARY), None


def _analysis_settings(config: StudyConfig, store: ActivationStore):
    """The analysis settings of `config` on `store`; one line when the contrast names a stream the
    store did not record. The seed is the store's: the one its inputs were shuffled with."""
    from modalscope.analysis import AnalysisSettings

    missing = [c for c in config.contrast_pair if c not in store.conditions]
    if missing:
        raise ValueError(f"--contrast {config.contrast}: {config.out_dir} did not record "
                         f"{', '.join(missing)} (it has {', '.join(store.conditions)})")
    return AnalysisSettings(contrast=config.contrast_pair, fdr=config.fdr, n_perm=config.n_perm, n_boot=config.n_boot,
                            outlier_factor=config.outlier_factor, seed=int(store.attrs.get("seed", config.seed)),
                            primary=config.primary)


def _long_tables(config: StudyConfig, store: ActivationStore, manifest: pd.DataFrame, meta: dict,
                 paths: list[Path]) -> tuple[list[Path], str | None]:
    """Tables 1-2 when --long-tables allows (their CSV copies with --csv); Tables 1-2 of an
    earlier analysis are removed when not written now, as they would hold another analysis."""
    from modalscope.tables import TABLE1, TABLE2, remove_table

    tables_dir = config.out_dir / "tables"
    rows = table1_rows(store, config.contrast_pair)
    if config.long_tables == "never" or (config.long_tables == "auto" and rows > LONG_TABLE_AUTO_LIMIT):
        for name in (TABLE1, TABLE2):
            remove_table(tables_dir / name)
        return paths, (f"Tables 1-2 not written ({rows:,} rows); use `modalscope export "
                       f"{config.out_dir} --layers ... --neurons ...` for the part you need")
    long_paths = write_long_tables(store, manifest["pair_id"].tolist(), tables_dir, contrast=config.contrast_pair,
                                   provenance=meta)
    if config.csv:
        long_table_csv(long_paths)
    else:
        for path in long_paths:
            path.with_suffix(".csv").unlink(missing_ok=True)
    return long_paths + paths, None


def analysis_manifest(config: StudyConfig) -> pd.DataFrame:
    """The manifest of the study in DIR, for `analyze`; a folder without a study, or with no
    recorded pairs, is a one-line DataError pointing to the command that makes them."""
    out = config.out_dir
    has_manifest, has_store = (out / MANIFEST).exists(), (out / STORE).exists()
    if not has_manifest and not has_store:
        raise DataError(f"{out}: no study here (no manifest.parquet, no {STORE}); make one with "
                        f"`modalscope run --out {out} ...` or `modalscope extract --out {out} ...`, then analyze it")
    if not has_store:
        raise DataError(f"{out}: nothing recorded yet (no {STORE}); record its manifest's pairs with "
                        f"`modalscope extract --out {out} --model MODEL`, then analyze it")
    manifest = prepare_manifest(config)
    check_manifest(out, manifest)
    done = int(ActivationStore.read(out / STORE).attrs.get("n_done", 0))
    if done < 2:
        raise DataError(f"{out}: {len(manifest):,} pairs in the manifest, {done} recorded: a t-test needs 2; "
                        f"run `modalscope extract --out {out} --resume` to record them")
    return manifest


def check_manifest(out_dir: Path, manifest: pd.DataFrame | None = None) -> None:
    """A one-line DataError when DIR/manifest.parquet is not the manifest the store was recorded
    with (the store keeps its hash, as extraction checks on resume): row i of the store would
    be read as another pair, with another caption. `analyze`, `report` (so `plot`), `export`
    and `neuron` check it before reading either."""
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not (out_dir / STORE).exists() or not path.exists():
        return
    recorded = ActivationStore.read(out_dir / STORE).attrs.get("manifest_hash")
    if recorded is None:
        return
    manifest = load_manifest(out_dir)[0] if manifest is None else manifest
    if manifest_hash(manifest) != recorded:
        raise DataError(f"{path}: not the manifest {out_dir / STORE} was recorded with (its pairs, captions or "
                        f"image files differ from the store's manifest hash), so the store's rows cannot be "
                        f"matched to its pairs; restore this study's manifest.parquet (nothing was written)")


# Summary entries and the table provenance key that say the same thing (summary.json has no schema
# metadata, so these are how it is matched to the Parquet tables of its analysis).
SUMMARY_VS_PROVENANCE = {"n_inputs": "n_pairs_recorded", "contrast": "contrast", "fdr": "fdr", "n_perm": "n_perm",
                         "n_boot": "n_boot"}


def mixed_tables(out_dir: Path) -> str | None:
    """One line when DIR/tables holds the tables of two analyses side by side (an `analyze` killed
    half-way through replaces some of them only), else None. Every table `analyze` writes carries
    the same provenance (settings, pairs analysed, versions: provenance.table_provenance), and
    summary.json the same pairs and settings; two analyses that agree on all of it wrote the same
    tables, so only a real mix is found. Reads Parquet footers only."""
    from modalscope.cards.table import TOP_PAIRS
    from modalscope.tables import TABLE1, TABLE2, read_provenance, read_summary

    tables = Path(out_dir) / "tables"
    names = (TABLE3, LAYERS, INPUT_LAYERS, SIGNIFICANT, ALIGNMENT, TOP_PAIRS, TABLE1, TABLE2, LAYERS_VS_BASE,
             INPUT_LAYERS_VS_BASE)
    seen: tuple[str, dict] | None = None
    for name in names:
        path = tables / name
        if not path.exists():
            continue
        try:
            meta = {k: v for k, v in read_provenance(path).items() if k != "top_pairs"}
        except Exception:  # noqa: BLE001 - an unreadable table is the readers' to report
            continue
        if not meta:  # written by hand or by an older modalscope: nothing to compare
            continue
        if seen is None:
            seen = (name, meta)
            continue
        differ = sorted(k for k in set(meta) | set(seen[1]) if meta.get(k) != seen[1].get(k))
        if differ:
            return _mixed(out_dir, seen[0], name, differ)
    if seen is not None and (tables / SUMMARY).exists():
        try:
            summary = read_summary(tables / SUMMARY)
        except Exception:  # noqa: BLE001
            return None
        for entry in summary.values():
            if not isinstance(entry, dict):
                continue
            differ = sorted(key for key, prov in SUMMARY_VS_PROVENANCE.items()
                            if key in entry and prov in seen[1] and entry[key] != seen[1][prov])
            if differ:
                return _mixed(out_dir, seen[0], SUMMARY, differ)
    return None


def _mixed(out_dir: Path, first: str, second: str, keys: list[str]) -> str:
    return (f"{Path(out_dir) / 'tables'}: {first} and {second} come from two different analyses (they differ in "
            f"{', '.join(keys[:4])}), e.g. an `analyze` stopped half-way; rerun `modalscope analyze {out_dir}`")


def extraction_note(out_dir: Path) -> str | None:
    """One line when the store holds fewer pairs than the manifest (an unfinished extraction):
    the analysis uses the recorded ones, and the line says how to finish."""
    out_dir = Path(out_dir)
    if not (out_dir / STORE).exists() or not (out_dir / MANIFEST).exists():
        return None
    n_manifest = len(load_manifest(out_dir)[0])
    done = ActivationStore.read(out_dir / STORE).n_done
    if done >= n_manifest:
        return None
    return (f"{n_manifest:,} pairs in the manifest, {done:,} recorded: analysing {done:,}; "
            f"run `modalscope extract --out {out_dir} --resume` to finish")


def extraction_complete(out_dir: Path) -> int | None:
    """The pairs recorded when DIR's store already holds every pair of its manifest, else None."""
    out_dir = Path(out_dir)
    if not (out_dir / STORE).exists() or not (out_dir / MANIFEST).exists():
        return None
    n_manifest = len(load_manifest(out_dir)[0])
    return n_manifest if n_manifest and ActivationStore.read(out_dir / STORE).n_done >= n_manifest else None


def plot_stage(out_dir: Path, png: bool = True, stat: str = "max",
               progress: bool = False) -> tuple[list[Path], str | None]:
    """Figures 1 and 2 per site and reduction from DIR/tables, the significant-neuron counts,
    and PNG and SVG copies when a browser exists. `figure2_{site}.html` leads with `stat` and
    draws max and matched_max side by side; `figure{1,2}_{site}_{other}.html` show each other
    one. The HTML files share one figures/plotly.min.js (see figures/export.py).

    figures/ then holds this plot's figures only: a figure of an earlier plot that is not drawn
    now (a reduction or site no longer analysed, Δ_base gone) is removed, and so is every old
    PNG/SVG copy before the new ones are written (none stay without a browser or with png off)."""
    from modalscope.figures.assemble import StudyTables, study_figures
    from modalscope.figures.export import NO_BROWSER_MESSAGE, owned_figure_files, write_html, write_images
    from modalscope.figures.histograms import for_static
    from modalscope.provenance import record_stage

    from modalscope.paths import check_inside

    clock = time.perf_counter()
    check_manifest(out_dir)  # the report it is followed by shows the manifest's captions
    tables = StudyTables.read(out_dir)  # its site and reduction names checked against the store's
    tables.check_stat(stat, out_dir)
    mixed = mixed_tables(out_dir)
    if mixed:
        raise ValueError(mixed)
    figures_dir = check_inside(Path(out_dir) / "figures", out_dir)
    figures = {check_inside(figures_dir / f"{name}.html", figures_dir): fig
               for name, fig in study_figures(tables, stat).items()}
    from tqdm.auto import tqdm

    paths = [write_html(fig, path, plotlyjs="directory", within=out_dir)
             for path, fig in tqdm(figures.items(), desc="plot", unit="figure", disable=not progress, leave=False,
                                   file=sys.stderr)]
    for old in owned_figure_files(figures_dir):
        if old.suffix != ".html" or old not in figures:
            old.unlink()
    message = write_images({path: for_static(fig) for path, fig in figures.items()}, within=out_dir) if png else None
    if message == NO_BROWSER_MESSAGE:
        message = message.replace("DIR", str(out_dir))
    settings = dict(zip(PLOT_FIELDS, (png, stat)))
    record_stage(out_dir, "plot", time.perf_counter() - clock, settings)
    update_study_file(out_dir, settings)
    return paths, message


def report_stage(out_dir: Path, stat: str | None = None) -> Path:
    """DIR/report.html: provenance, the headline figures with their controls, significant
    counts, the strongest neurons each way and links to every table, in one offline page.
    `stat` (the reduction it leads with) defaults to the one DIR/study.json recorded."""
    import json

    from modalscope.report import write_report

    check_manifest(out_dir)
    mixed = mixed_tables(out_dir)
    if mixed:
        raise ValueError(mixed)
    if stat is None:
        study = Path(out_dir) / "study.json"
        stat = json.loads(study.read_text()).get("config", {}).get("stat", "max") if study.exists() else "max"
    return write_report(out_dir, stat)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the stage it stopped in, so the message names the command that reruns it."""

    def __init__(self, stage: str, out_dir: Path) -> None:
        super().__init__(stage)
        self.stage = stage
        self.out_dir = out_dir


class _Stage:
    """`with _Stage("analyze", DIR):` turns a KeyboardInterrupt inside into Interrupted."""

    def __init__(self, stage: str, out_dir: Path) -> None:
        self.stage, self.out_dir = stage, out_dir

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt) and not isinstance(error, Interrupted):
            raise Interrupted(self.stage, self.out_dir) from None


def run_study(config: StudyConfig, force: bool = False) -> StudyResult:
    """The whole method on one config: manifest, extraction, statistics, tables, figures, report.
    `force`: record even when the free disk looks too small for the store (budget.py)."""
    from modalscope.lock import study_lock

    config.validate()
    with study_lock(config.out_dir, "run_study"):  # one writer per folder (the CLI already holds it)
        return _run_study(config, force)


def _run_study(config: StudyConfig, force: bool) -> StudyResult:
    from modalscope.provenance import read_study_json, record_stage

    result = StudyResult(out_dir=config.out_dir)
    clock = time.perf_counter()
    done = extraction_complete(config.out_dir) if config.progress and sys.stderr.isatty() else None
    if done and int(os.environ.get("RANK", 0)) == 0:  # a rerun of a finished study: say so before the work
        print(f"extraction already complete ({done:,} pairs in {config.out_dir / STORE}): analysing and plotting "
              "again", file=sys.stderr)
    with _Stage("extract", config.out_dir):
        extract_stage(config, force=force)  # model checked, then pairs (DIR/manifest.parquet), then recorded
    manifest, _ = load_manifest(config.out_dir)
    result.timings["extract_s"] = time.perf_counter() - clock
    if int(os.environ.get("RANK", 0)) != 0:
        return result  # under torchrun, rank 0 analyses the merged store
    record_stage(config.out_dir, "extract", result.timings["extract_s"])
    result.messages.extend(data_notes(config.out_dir))  # fewer pairs, skipped pairs, cut captions
    note = extraction_note(config.out_dir)
    if note:
        result.messages.append(note)
    clock = time.perf_counter()
    with _Stage("analyze", config.out_dir):
        result.tables, skipped = analyze_stage(config, manifest)
    if skipped:
        result.messages.append(skipped)
    result.timings["analyze_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with _Stage("plot", config.out_dir):
        result.figures, png_message = plot_stage(config.out_dir, config.png, config.stat,
                                                 config.progress and sys.stderr.isatty())
    if png_message:
        result.messages.append(png_message)
    result.timings["plot_s"] = time.perf_counter() - clock
    if config.ablation:  # the study file's [ablation]: `modalscope ablate` on this study (ablation/stage.py)
        from modalscope.ablation.stage import ablation_stage

        with _Stage("ablate", config.out_dir):
            ablation_stage(config, result)
    seed = int(ActivationStore.read(config.out_dir / STORE).attrs.get("seed", config.seed))
    study = read_study_json(config.out_dir)  # the stages' records stay; the whole study's settings replace theirs
    study.update({"config": config.as_dict(), "timings": result.timings,
                  "seeds": seed_streams(seed)})  # which random stream the shuffle, sign flips and bootstrap drew
    write_json(study, config.out_dir / "study.json")
    write_study_file(config)
    with _Stage("report", config.out_dir):
        result.report = report_stage(config.out_dir, config.stat)
    return result


def study_headlines(out_dir: Path) -> list[str]:
    """The headline sentence of each site, as summary.json holds it (see report/headline.py)."""
    from modalscope.tables import read_summary

    summary = read_summary(Path(out_dir) / "tables" / SUMMARY)
    return [entry["headline"] for entry in summary.values() if isinstance(entry.get("headline"), str)]


# The study file's data keys: kept from DIR/study.toml when a rerun names no data (it reuses
# the manifest), so the file still repeats the study from its data.
DATA_KEYS = ("captions", "images", "jsonl", "instances", "num_pairs", "seed")


def write_study_file(config: StudyConfig, keep: tuple[str, ...] = ()) -> Path:
    """DIR/study.toml: every setting of the study, defaults included, so that `modalscope run
    --config DIR/study.toml --out NEW` repeats it. Written once the model and the data passed
    their checks and the store matched (never for a refused study), before the first forward, and
    again when the stage ends; paths are absolute (a local --model too) so it works from any
    folder. A rerun that names no data (it reuses the manifest, e.g. `extract --resume`) keeps the
    file's data keys, and the settings in `keep` (those the command has no option for, e.g. the
    analysis settings for `extract`) are kept from the file too."""
    from modalscope.study_file import StudyFileError, read

    path = config.out_dir / "study.toml"
    settings: dict[str, object] = {}
    if path.exists():
        try:
            current = read(path)
        except StudyFileError:
            current = {}
        names = (*DATA_KEYS, *keep) if config.captions is None and config.jsonl is None else keep
        settings = {k: v for k, v in current.items() if k in names}
    resolved = replace(config, **settings)
    paths: dict[str, object] = {name: Path(value).resolve() for name in ("out_dir", "captions", "images", "jsonl",
                                                                         "instances")
                                if (value := getattr(resolved, name)) is not None}
    for name in ("model", "base_model"):  # a local folder, as the loader read it; a hub id stays as it is
        value = getattr(resolved, name)
        if value and Path(value).is_dir():
            paths[name] = str(Path(value).resolve())
    return replace(resolved, **paths).to_toml(path)


# The settings `extract` has no option for: kept from DIR/study.toml when it rewrites the file.
EXTRACT_KEEPS = ("contrast", "fdr", "n_perm", "n_boot", "outlier_factor", "alignment_stat", "stat", "long_tables",
                 "csv", "png", "primary")


def update_study_file(out_dir: Path, settings: dict[str, object]) -> Path | None:
    """DIR/study.toml with the `settings` (StudyConfig fields) of a stage run alone (e.g.
    `analyze --contrast`), so the file still repeats the study its outputs show; left alone when
    there is none."""
    from modalscope.study_file import StudyFileError, read

    path = Path(out_dir) / "study.toml"
    if not path.exists():
        return None
    try:
        current = read(path)
    except StudyFileError:  # a hand-edited file that no longer parses: not ours to rewrite
        return None
    if all(current.get(name) == value for name, value in settings.items()):
        return path
    return StudyConfig(**{**current, **settings}).to_toml(path)


# The settings each stage run alone owns in study.json's `config` (and DIR/study.toml).
ANALYSIS_FIELDS = ("contrast", "fdr", "n_perm", "n_boot", "outlier_factor", "long_tables", "csv", "alignment_stat",
                   "primary")
PLOT_FIELDS = ("png", "stat")  # in this order: plot_stage's arguments


def export_stage(
    out_dir: Path,
    sites: list[str] | None = None,
    layers: list[int] | None = None,
    neurons: list[int] | None = None,
    name: str = "_export",
    csv: bool = False,
) -> list[Path]:
    """Tables 1-2 restricted to some sites/layers/neurons, streamed from the store."""
    import re

    from modalscope.paths import check_inside
    from modalscope.provenance import table_provenance

    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", name) or name.startswith("."):
        raise ValueError(f"--name {name!r}: a file-name suffix of letters, digits, '_', '-', '.' (at most 64), "
                         "e.g. _export")
    check_inside(Path(out_dir) / "tables", out_dir)
    store = ActivationStore.read(Path(out_dir) / STORE)
    for site in sites or []:
        if site not in store.sites:
            raise ValueError(f"--sites {site}: {out_dir} recorded only {', '.join(store.sites)}")
    beyond = [layer for layer in layers or [] if not 0 <= layer < store.n_layers]
    if beyond:  # `--layers 2-10` on 4 layers names 4-10, not the first of them alone
        shown = f"{beyond[0]}-{beyond[-1]}" if beyond == list(range(beyond[0], beyond[-1] + 1)) and len(beyond) > 1 \
            else ",".join(map(str, beyond))
        raise ValueError(f"--layers: {shown} {'are' if len(beyond) > 1 else 'is'} beyond the model, which has "
                         f"layers 0-{store.n_layers - 1}")
    chosen = list(sites or store.sites)
    for neuron in neurons or []:
        for site in chosen:
            if not 0 <= neuron < store.width(site):
                ok = [s for s in chosen if 0 <= neuron < store.width(s)]
                hint = f"; export {', '.join(ok)} alone with --sites {','.join(ok)}" if ok else ""
                raise ValueError(f"--neurons {neuron}: site {site} has neurons 0-{store.width(site) - 1}{hint}")
    manifest, _ = load_manifest(Path(out_dir))
    check_manifest(Path(out_dir), manifest)
    contrast = tuple(str(store.attrs.get("contrast", "text - image")).split(" - "))
    paths = write_long_tables(
        store, manifest["pair_id"].tolist(), Path(out_dir) / "tables", sites, layers, neurons, name,
        contrast=contrast, provenance=table_provenance(store, " - ".join(contrast)),
    )
    if csv:
        long_table_csv(paths)
    return paths
