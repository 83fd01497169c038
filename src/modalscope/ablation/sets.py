"""Which neurons to ablate: the sets the statistics select, a user's table, and their random twins.

Why: a neuron-level finding is only as good as its causal check, and the check is only as good
as its control. The sets come straight from Table 3 (so the ablation tests what the report
claims), and every set gets random sets matched in site, layer and size (the same number of
neurons in each layer, drawn from the neurons of that layer outside the set), so that "ablating
these k neurons hurts" is compared with "ablating any k neurons of those layers hurts".

Kinds, for a study of Δ = A − B (text − image by default), per site and layer band:
  text    the top k neurons with q < alpha and mean Δ > 0, by t (largest first): prefer A;
  image   the top k with q < alpha and mean Δ < 0, by t (most negative first): prefer B;
  xmodal  the top k with xmodal_q < alpha and xmodal_r > 0, by xmodal_r: respond to the same
          pairs in both modalities (Table 3's cross-modal columns, §10 of docs/method.md).
A layer band is a run of consecutive layers (`layer_bands`): "all" is the whole model. The
columns are those of the study's reduction `stat` (Table 3's suffixed columns for another one).
A user's set is a table (Parquet or CSV) of site, layer, neuron and optionally set (its name).
With concept labels (tables/concepts.parquet, concepts.py), `concept:NAME` is the top k "imagery"
neurons of concept NAME: selective for it from the caption alone and from the image alone, in the
same direction (`agree`), strongest first (the smaller of the two |AUROC − 0.5|); `concepts` is
one such set per concept of the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from modalscope.stats.fdr import ALPHA  # the FDR level a neuron must pass to enter a set: the study's one level

KINDS = ("text", "image", "xmodal")


@dataclass(frozen=True)
class NeuronSet:
    """Neurons of one site, by layer: {layer: sorted neuron indices}."""

    name: str  # "text", "image", "xmodal" or a user's set name
    site: str
    band: str  # "all" or "A-B" (layers A to B, inclusive)
    neurons: dict[int, np.ndarray] = field(hash=False, compare=False)

    @property
    def k(self) -> int:
        return int(sum(len(v) for v in self.neurons.values()))

    @property
    def label(self) -> str:
        return f"{self.name} · {self.site} · layers {self.band} · k={self.k}"


def layer_bands(n_layers: int, n_bands: int = 1) -> list[tuple[str, list[int]]]:
    """("all", every layer), then, for n_bands > 1, n_bands runs of consecutive layers as equal
    as can be (e.g. 32 layers in 3: 0-10, 11-21, 22-31)."""
    layers = list(range(n_layers))
    bands = [("all", layers)]
    if n_bands > 1:
        for part in np.array_split(np.arange(n_layers), min(n_bands, n_layers)):
            bands.append((f"{part[0]}-{part[-1]}", [int(x) for x in part]))
    return bands


def _by_layer(frame: pd.DataFrame) -> dict[int, np.ndarray]:
    return {int(layer): np.sort(group["neuron"].to_numpy(dtype=np.int64))
            for layer, group in frame.groupby("layer", sort=True)}


def select(neurons: pd.DataFrame, kind: str, k: int, alpha: float = ALPHA) -> pd.DataFrame:
    """The rows of Table 3 (one site, the study's columns unsuffixed) that make the top-k `kind` set."""
    if kind == "text":
        keep = neurons[(neurons["q_value"] < alpha) & (neurons["mean_diff"] > 0)]
        return keep.sort_values(["t_value", "layer", "neuron"], ascending=[False, True, True]).head(k)
    if kind == "image":
        keep = neurons[(neurons["q_value"] < alpha) & (neurons["mean_diff"] < 0)]
        return keep.sort_values(["t_value", "layer", "neuron"], ascending=[True, True, True]).head(k)
    if kind == "xmodal":
        if "xmodal_r" not in neurons.columns:
            return neurons.iloc[:0]
        keep = neurons[(neurons["xmodal_q"] < alpha) & (neurons["xmodal_r"] > 0)]
        return keep.sort_values(["xmodal_r", "layer", "neuron"], ascending=[False, True, True]).head(k)
    raise ValueError(f"set kind {kind!r}: choose from {', '.join(KINDS)} or give a table of (site, layer, neuron)")


def table_sets(neurons_by_site: dict[str, pd.DataFrame], kinds: Sequence[str], k: int, n_layers: int,
               n_bands: int = 1, alpha: float = ALPHA) -> tuple[list[NeuronSet], list[str]]:
    """The sets of each kind, site and band, and one note per set left out because no neuron
    passed (a set of 0 neurons has nothing to ablate)."""
    sets, notes = [], []
    for site, neurons in neurons_by_site.items():
        for band, layers in layer_bands(n_layers, n_bands):
            in_band = neurons[neurons["layer"].isin(layers)]
            for kind in kinds:
                chosen = select(in_band, kind, k, alpha)
                if chosen.empty:
                    notes.append(f"no {kind} set at {site}, layers {band}: no neuron passes q < {alpha}")
                    continue
                sets.append(NeuronSet(kind, site, band, _by_layer(chosen)))
    return sets, notes


def user_sets(path: Path, widths: dict[str, int], n_layers: int) -> list[NeuronSet]:
    """Sets from a table of site, layer, neuron (and `set`, its name; default the file's stem),
    checked against the study's sites, layers and widths in one line."""
    path = Path(path)
    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    missing = [c for c in ("site", "layer", "neuron") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: a neuron set table needs columns site, layer, neuron (missing {', '.join(missing)})")
    if "set" not in frame.columns:
        frame = frame.assign(set=path.stem)
    sets = []
    for (name, site), group in frame.groupby(["set", "site"], sort=False):
        site = str(site)
        if site not in widths:
            raise ValueError(f"{path}: site {site!r} is not a site of this study ({', '.join(widths)})")
        bad = group[(group["layer"] < 0) | (group["layer"] >= n_layers) | (group["neuron"] < 0)
                    | (group["neuron"] >= widths[site])]
        if not bad.empty:
            row = bad.iloc[0]
            raise ValueError(f"{path}: {site} layer {row['layer']} neuron {row['neuron']}: outside the study "
                             f"(layers 0-{n_layers - 1}, neurons 0-{widths[site] - 1})")
        group = group.drop_duplicates(["layer", "neuron"])
        layers = sorted(int(x) for x in group["layer"].unique())
        band = "all" if len(layers) == n_layers else (f"{layers[0]}-{layers[-1]}" if layers else "all")
        sets.append(NeuronSet(str(name), site, band, _by_layer(group)))
    return sets


def random_sets(target: NeuronSet, width: int, n_random: int, rng: np.random.Generator) -> list[dict[int, np.ndarray]]:
    """`n_random` sets matched to `target`: in each of its layers as many neurons as it has
    there, drawn uniformly without replacement from that layer's other neurons."""
    draws: list[dict[int, np.ndarray]] = [{} for _ in range(n_random)]
    for layer, chosen in sorted(target.neurons.items()):
        pool = np.setdiff1d(np.arange(width), chosen)
        n = min(len(chosen), len(pool))
        keys = rng.random((n_random, len(pool)))
        picks = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < len(pool) else np.tile(np.arange(len(pool)), (n_random, 1))
        for r in range(n_random):
            draws[r][layer] = np.sort(pool[picks[r]])
    return draws


def concept_sets(concepts: pd.DataFrame, names: Sequence[str] | None, sites: Sequence[str], stat: str, k: int,
                 n_layers: int, n_bands: int = 1) -> tuple[list[NeuronSet], list[str]]:
    """The `concept:NAME` sets (every concept of the table for `names` None) per site and band,
    from concepts.parquet's rows of reduction `stat` (its first reduction when it lacks `stat`)."""
    stats = list(dict.fromkeys(concepts["stat"].astype(str)))
    rows = concepts[concepts["stat"] == (stat if stat in stats else stats[0])]
    known = list(dict.fromkeys(rows["concept"].astype(str)))
    missing = [n for n in names or () if n not in known]
    if missing:
        raise ValueError(f"--sets concept:{missing[0]}: the study's concepts are {', '.join(known) or 'none'}")
    sets, notes = [], []
    agree = rows[rows["agree"].astype(bool)]
    strength = np.minimum((agree["auroc_text"] - 0.5).abs(), (agree["auroc_image"] - 0.5).abs())
    agree = agree.assign(strength=strength)
    for name in names or known:
        for site in sites:
            for band, layers in layer_bands(n_layers, n_bands):
                chosen = agree[(agree["concept"] == name) & (agree["site"] == site) & agree["layer"].isin(layers)]
                chosen = chosen.sort_values(["strength", "layer", "neuron"], ascending=[False, True, True]).head(k)
                if chosen.empty:
                    notes.append(f"no concept:{name} set at {site}, layers {band}: no neuron is selective for it "
                                 "in both modalities")
                    continue
                sets.append(NeuronSet(f"concept:{name}", site, band, _by_layer(chosen)))
    return sets, notes
