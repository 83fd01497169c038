"""The untrained twin (`--control random-twin`): the same inputs through a re-initialised copy of the model.

Why: a random network already produces layer trends, cross-modal neurons and concept-selective
neurons, from the architecture and the token counts alone. On a 32-layer random-weight LLaVA the raw
max reproduces a "forgetting" slope of -1.03 per layer (R² 0.99) while the length-matched max is
flat (issue 25). A finding means something about what the model learned only where it exceeds what
the same architecture gives before training. The twin measures that baseline with everything else
held fixed: the same config, the same processor and chat template, the same manifest, pairs, batches
and token scopes; only the weights differ.

What the twin is: `type(model)._from_config(config)` on a copy of the model's config, i.e. the
model's own initialisation as transformers does it (`PreTrainedModel.post_init` -> `init_weights` ->
`initialize_weights`, dispatching each sub-model's `_init_weights`: normal(0, initializer_range)
for linear and embedding weights, zero biases, unit norms, the rotary buffers recomputed), built on
the CPU in float32 under a torch seed drawn from the study's seed, then cast tensor by tensor to the
source model's dtypes and moved to its device. So the twin of a seed is the same on every machine.
Its seed stream is child TWIN_SPAWN_KEY of `SeedSequence(seed)`, outside seeds.STREAMS (children
0-5) and the concept null's (64): independent of every other draw of the study, and adding it
changed none of them.

Where it lives: DIR/control/random-twin/ is a study folder of its own, the same layout (its copy of
manifest.parquet and skipped.parquet, activations.zarr, truncated.parquet, tables/, study.json; no
study.toml: DIR/study.toml repeats both), so every analysis function runs on it unchanged. The
study's own outputs gain only additions, and only when the twin was recorded: per site a `twin`
block in tables/summary.json (its trends, cross-modal share, concept counts and alignment peaks
beside the study's, and whether each effect exceeds the twin's), a sentence appended to the
site's headline, grey dashed twin lines in Figures 2 and 3 and a twin column in the concept figure,
the figure `xmodal_share_{site}`, and the report's "Random twin" section.
"""

from __future__ import annotations

import copy
import math
import numbers
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modalscope import outputs

NONE, RANDOM_TWIN = "none", "random-twin"
CONTROLS = (NONE, RANDOM_TWIN)  # the values of --control / [conditions] control
TWIN_FOLDER = Path(outputs.TWIN)  # under DIR: control/random-twin (its one home: outputs.py)
# The twin's torch seed: child 65 of SeedSequence(seed) (seeds.STREAMS are 0-5, the concept null 64).
TWIN_SPAWN_KEY = 65
INIT = "type(model)._from_config(config): transformers' own initialisation (post_init -> init_weights)"


def twin_dir(out_dir: Path) -> Path:
    """DIR/control/random-twin: the twin's study folder."""
    return Path(out_dir) / TWIN_FOLDER


def twin_torch_seed(seed: int) -> int:
    """The torch seed of the twin of a study with `seed` (a 63-bit int from its own SeedSequence child)."""
    words = np.random.SeedSequence(int(seed), spawn_key=(TWIN_SPAWN_KEY,)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def twin_problem(config) -> str | None:
    """Why `--control random-twin` cannot run with `config`'s other settings (one line), else None."""
    if getattr(config, "control", None) != RANDOM_TWIN:
        return None
    if config.quantization:
        return (f"--control random-twin: not with --quantization {config.quantization} (a re-initialised twin has no "
                "quantized checkpoint to load); record the study and its twin unquantized")
    if config.device_map:
        return (f"--control random-twin: not with --device-map {config.device_map} (the twin is built on one "
                "device); give --device instead")
    if config.base_model:
        return ("--control random-twin: not with --base-model (the twin has no base language model of its own, "
                "so Δ_base would compare a random network with a trained one); run the base contrast as a study "
                "of its own")
    return None


@dataclass
class TwinSpec:
    """What the twin is built from, read off the source model before it is released: its class,
    a copy of its config, each tensor's dtype and the device its inputs go to."""

    cls: type
    config: Any
    dtypes: dict[str, Any]
    device: Any

    @classmethod
    def of(cls, model, device=None) -> "TwinSpec":
        dtypes = {name: t.dtype for name, t in (*model.named_parameters(), *model.named_buffers())}
        device = device if device is not None else model.get_input_embeddings().weight.device
        return cls(type(model), copy.deepcopy(model.config), dtypes, device)

    def build(self, seed: int):
        """The twin: the model's own initialisation under the torch seed of `seed` (twin_torch_seed),
        in float32 on the CPU (the same numbers on every machine), then each tensor cast to the
        source's dtype and moved to its device; in eval mode, its config equal to the source's."""
        import torch

        config = copy.deepcopy(self.config)
        dtypes = _config_dtypes(config)
        with torch.random.fork_rng(devices=[]):  # the study's other torch draws are left as they were
            torch.manual_seed(twin_torch_seed(seed))
            with torch.device("cpu"):
                model = self.cls._from_config(config, dtype=torch.float32)
        _restore_config_dtypes(model.config, dtypes)  # _from_config wrote float32 into the config
        with torch.no_grad():
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                want = self.dtypes.get(name)
                if want is not None and tensor.dtype != want and tensor.is_floating_point():
                    tensor.data = tensor.data.to(want)
        return model.to(self.device).eval()


def _config_dtypes(config) -> dict[str, Any]:
    found = {"": getattr(config, "dtype", None)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            found[key] = getattr(sub, "dtype", None)
    return found


def _restore_config_dtypes(config, dtypes: dict[str, Any]) -> None:
    for key, value in dtypes.items():
        target = config if key == "" else getattr(config, key, None)
        if target is not None:
            target.dtype = value


def build_twin(model, seed: int):
    """The random twin of `model` for a study with `seed` (see TwinSpec.build)."""
    return TwinSpec.of(model).build(seed)


def twin_provenance(provenance: dict, seed: int) -> dict:
    """The source's provenance, made the twin's: no weight files, and what the weights are instead."""
    source = provenance.get("commit_hash") or provenance.get("weights_fingerprint") or provenance.get("revision")
    return {**provenance, "commit_hash": None, "weights_fingerprint": None, "twin_weights": twin_weights(source, seed)}


def twin_of(loaded, seed: int, release_source: bool = False):
    """A LoadedModel of the twin: its model, the source's processor and adapter, the provenance
    of a twin. `release_source`: the source's weights are freed first (they are not needed once its
    recording is done), so the twin fits wherever the source did."""
    from modalscope.models.loading import LoadedModel

    spec = TwinSpec.of(loaded.model, loaded.device)
    if release_source:
        release(loaded)
    model = spec.build(seed)
    if loaded.adapter.prepare is not None:
        loaded.adapter.prepare(model)
    return LoadedModel(model=model, processor=loaded.processor, adapter=loaded.adapter,
                       provenance=twin_provenance(loaded.provenance, seed))


def release(loaded) -> None:
    """Free a model's weights (moved to the meta device) once nothing reads them any more."""
    import torch

    device = loaded.device
    try:
        loaded.model.to("meta")
    except (RuntimeError, NotImplementedError, ValueError):  # a model that cannot move: keep it
        return
    if device.type == "cuda":
        torch.cuda.empty_cache()


def twin_weights(source_weights: object, seed: int) -> str:
    """What the store's `weights` says of the twin (resume checks it: another seed or source is refused)."""
    return f"random twin (seed {int(seed)}, SeedSequence spawn key {TWIN_SPAWN_KEY}) of {source_weights}"


def twin_attributes(attrs: dict, seed: int) -> dict:
    """The twin store's provenance: the study store's, with the weights said to be the twin's and how
    they were made; the hashes of the source's weight files are not the twin's and are left out."""
    out = {k: v for k, v in attrs.items() if k not in ("weights_files", "weights_stat")}
    out.update({"weights": twin_weights(attrs.get("weights"), seed), "commit_hash": None, "weights_fingerprint": None,
                "control": {"kind": RANDOM_TWIN, "seed": int(seed), "spawn_key": [TWIN_SPAWN_KEY],
                            "torch_seed": twin_torch_seed(seed), "init": INIT, "of_weights": attrs.get("weights")}})
    return out


def prepare_folder(out_dir: Path) -> Path:
    """DIR/control/random-twin with the study's manifest (and skipped pairs), copied byte for byte:
    row i is input i there too, and its store checks the same manifest hash."""
    from modalscope.data.manifest import MANIFEST, SKIPPED

    folder = twin_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, SKIPPED):
        source, target = Path(out_dir) / name, folder / name
        if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    return folder


def twin_store_done(out_dir: Path) -> int:
    """Pairs the twin's store holds (0 without one)."""
    from modalscope.store import STORE, ActivationStore

    path = twin_dir(out_dir) / STORE
    return ActivationStore.read(path).n_done if (path / "zarr.json").is_file() else 0


def analysable(out_dir: Path) -> tuple[bool, str | None]:
    """(whether the twin is analysed beside the study, a one-line note when a twin exists but is not):
    its store must hold the study's pairs of the study's manifest."""
    from modalscope.store import STORE

    folder = twin_dir(out_dir)
    if not (folder / STORE / "zarr.json").is_file():
        return False, None
    from modalscope.folder import read_store

    main = read_store(Path(out_dir) / STORE)  # the command's own read of each (folder.py)
    twin = read_store(folder / STORE)
    if twin.attrs.get("manifest_hash") != main.attrs.get("manifest_hash"):
        return False, (f"{folder}: the random twin was recorded from another manifest; not compared (remove the "
                       "folder and rerun with --control random-twin)")
    if twin.n_done != main.n_done:
        return False, (f"{folder}: the random twin has recorded {twin.n_done:,} of the study's {main.n_done:,} pairs; "
                       f"not compared: run `modalscope extract --out {out_dir} --resume` to finish it")
    return True, None


# The comparison ------------------------------------------------------------------------------------
def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def lead_stat(entry: dict) -> str:
    """The reduction the comparison leads with: the primary family's (--primary; default
    matched_max) when this site's summary has its trend, else max."""
    primary = str(entry.get("fdr_primary") or "").split(":")
    stat = primary[1] if len(primary) > 1 else "matched_max"
    return stat if stat == "max" or stat in (entry.get("by_stat") or {}) else "max"


def _trend(entry: dict, stat: str) -> dict | None:
    return entry if stat == "max" else (entry.get("by_stat") or {}).get(stat)


def compare_slopes(study: dict, twin: dict) -> dict:
    """Whether the study's layer slope exceeds the twin's: larger in size AND the twin's slope
    outside the study's bootstrap 95% CI (the difference is beyond the study's own uncertainty over
    inputs; without a CI, larger in size). `ratio`: study / twin (None when the twin's is 0)."""
    slope, other = study.get("slope"), twin.get("slope")
    out = {"study_slope": slope, "study_slope_ci_low": study.get("slope_ci_low"),
           "study_slope_ci_high": study.get("slope_ci_high"), "study_r2": study.get("r2"),
           "twin_slope": other, "twin_slope_ci_low": twin.get("slope_ci_low"),
           "twin_slope_ci_high": twin.get("slope_ci_high"), "twin_r2": twin.get("r2"),
           "ratio": None, "exceeds": False}
    if not (_finite(slope) and _finite(other)):
        return out
    low, high = study.get("slope_ci_low"), study.get("slope_ci_high")
    outside = not (_finite(low) and _finite(high)) or not (low <= other <= high)
    out["ratio"] = slope / other if other != 0 else None
    out["exceeds"] = bool(abs(slope) > abs(other) and outside)
    return out


def compare_counts(study: float | None, twin: float | None) -> dict:
    """A share or count against the twin's: exceeds when strictly larger; ratio study / twin."""
    out = {"study": study, "twin": twin, "ratio": None, "exceeds": False}
    if _finite(study) and _finite(twin):
        out["ratio"] = study / twin if twin else None
        out["exceeds"] = bool(study > twin)
    return out


def _xmodal_share(entry: dict, stat: str) -> float | None:
    xmodal = entry.get("xmodal") or {}
    chosen = xmodal if stat == "max" else (xmodal.get("by_stat") or {}).get(stat)
    if not chosen or not chosen.get("n_neurons"):
        return None
    return float(chosen.get("n_cross_modal", 0)) / float(chosen["n_neurons"])


def _imagery(entry: dict, stat: str) -> tuple[str | None, float | None]:
    concepts = entry.get("concepts")
    if not isinstance(concepts, dict):
        return None, None
    chosen = concepts if concepts.get("stat", "max") == stat else (concepts.get("by_stat") or {}).get(stat)
    if chosen is None:
        stat, chosen = concepts.get("stat", "max"), concepts
    return stat, float(chosen.get("n_imagery_total", 0))


def twin_block(entry: dict, twin: dict) -> dict:
    """summary.json's `twin` of one site: the twin's trends beside the study's (raw and
    length-matched max, the lead reduction first), the cross-modal share, the imagery counts and
    the alignment peaks, each with whether the study's exceeds the twin's."""
    lead = lead_stat(entry)
    stats = list(dict.fromkeys(s for s in (lead, "matched_max", "max") if _trend(entry, s) and _trend(twin, s)))
    block: dict[str, Any] = {"control": RANDOM_TWIN, "folder": TWIN_FOLDER.as_posix(), "stat": lead,
                             "trend": {s: compare_slopes(_trend(entry, s), _trend(twin, s)) for s in stats}}
    share, other = _xmodal_share(entry, lead), _xmodal_share(twin, lead)
    if share is not None and other is not None:
        block["xmodal_share"] = compare_counts(share, other)
    stat, count = _imagery(entry, lead)
    twin_stat, twin_count = _imagery(twin, stat) if stat else (None, None)
    if count is not None and twin_count is not None and twin_stat == stat:
        block["imagery"] = {"stat": stat, **compare_counts(count, twin_count),
                            "by_concept": _by_concept(entry, twin, stat)}
    peaks = {}
    ours = ((entry.get("alignment") or {}).get("measures") or {})
    theirs = ((twin.get("alignment") or {}).get("measures") or {})
    for measure, facts in ours.items():
        if measure in theirs:
            peaks[measure] = {"study_peak": facts.get("value"), "study_peak_layer": facts.get("peak_layer"),
                              "twin_peak": theirs[measure].get("value"),
                              "twin_peak_layer": theirs[measure].get("peak_layer")}
    if peaks:
        block["alignment"] = peaks
    return block


def _by_concept(entry: dict, twin: dict, stat: str) -> dict:
    def concepts_of(site_entry: dict) -> dict:
        concepts = site_entry.get("concepts") or {}
        chosen = concepts if concepts.get("stat", "max") == stat else (concepts.get("by_stat") or {}).get(stat, {})
        return chosen.get("by_concept") or {}

    ours, theirs = concepts_of(entry), concepts_of(twin)
    return {name: {"study": int(facts.get("n_imagery", 0)), "twin": int(theirs.get(name, {}).get("n_imagery", 0))}
            for name, facts in ours.items()}


def add_twin(summary: dict, twin_summary: dict) -> dict:
    """The study's summary with each site's `twin` block and the twin sentence after its headline."""
    from modalscope.report.headline import headline

    for site, entry in summary.items():
        other = twin_summary.get(site)
        if not isinstance(entry, dict) or not isinstance(other, dict):
            continue
        entry["twin"] = twin_block(entry, other)
        entry["headline"] = headline(site, entry)
    return summary
