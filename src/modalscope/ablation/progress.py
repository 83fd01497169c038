"""Resume for `modalscope ablate`: the readouts so far, in DIR/ablation/progress.npz.

Why: a real study's ablation runs for hours on a GPU; a stop must not cost what was done. The
file holds, per readout, the readouts [row kind, scored pair] and which are done, and a key (a
hash of the settings, the manifest, the model, the scored pairs and the sets' neurons): a rerun
with the same key continues, any other key starts over (the file is then replaced). Written
atomically (files.atomic), so a stop while writing keeps the previous file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from modalscope.files import atomic
from modalscope.outputs import ABLATION_PROGRESS

PROGRESS = Path(ABLATION_PROGRESS)  # under DIR (its one home: outputs.py)


def key_of(store, settings, targets, readouts, scored, loaded) -> str:
    """What determines the readouts: a rerun with another key starts over."""
    what = {k: v for k, v in asdict(settings).items() if k not in ("progress", "batch_size", "device")}
    what.update(manifest=store.attrs.get("manifest_hash"), readouts=list(readouts), scored=scored.tolist(),
                model=loaded.provenance.get("weights_fingerprint") or loaded.provenance.get("model"),
                dtype=str(loaded.model.dtype),
                targets=[(t.name, t.site, t.band, {str(k): v.tolist() for k, v in t.neurons.items()}) for t in targets])
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def resume(out_dir: Path, key: str, readouts, n_specs: int, n_pairs: int):
    results = {r: np.full((n_specs, n_pairs), np.nan) for r in readouts}
    done = {r: np.zeros((n_specs, n_pairs), dtype=bool) for r in readouts}  # per row kind and scored pair
    path = out_dir / PROGRESS
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                for r in readouts:
                    results[r] = saved[f"results_{r}"].copy()
                    done[r] = saved[f"done_{r}"].copy()
    return results, done


def save(out_dir: Path, key: str, results, done) -> None:
    path = out_dir / PROGRESS
    with atomic(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, key=np.asarray(key), **{f"results_{r}": v for r, v in results.items()},
                 **{f"done_{r}": d for r, d in done.items()})
