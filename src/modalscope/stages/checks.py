"""What every stage after the recording checks of DIR before it reads: that a study is there,
that the manifest is the one the store was recorded with, that the tables come from one analysis,
and whether the recording is finished.

Why together: each is a one-line refusal (or note) about the folder's state, shared by `analyze`,
`plot`, `report`, `export`, `neuron` and `ablate`; they read the store and the manifest through
folder.py, once per command.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from modalscope import outputs
from modalscope.config import StudyConfig
from modalscope.data.manifest import MANIFEST, manifest_hash
from modalscope.data.pairs import DataError
from modalscope.folder import study_manifest, study_store
from modalscope.stages.pairs import prepare_manifest
from modalscope.store import STORE
from modalscope.tables import SUMMARY


def analysis_manifest(config: StudyConfig) -> pd.DataFrame:
    """The manifest of the study in DIR, for `analyze`; a folder without a study, or with no
    recorded pairs, is a one-line DataError pointing to the command that makes them."""
    out = config.out_dir
    has_manifest, has_store = (out / MANIFEST).exists(), (out / STORE).exists()
    if not has_manifest and not has_store:
        raise DataError(f"{out}: no study here (no {MANIFEST}, no {STORE}); make one with "
                        f"`modalscope run --out {out} ...` or `modalscope extract --out {out} ...`, then analyze it")
    if not has_store:
        raise DataError(f"{out}: nothing recorded yet (no {STORE}); record its manifest's pairs with "
                        f"`modalscope extract --out {out} --model MODEL`, then analyze it")
    manifest = prepare_manifest(config)
    check_manifest(out, manifest)
    done = int(study_store(out).attrs.get("n_done", 0))
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
    recorded = study_store(out_dir).attrs.get("manifest_hash")
    if recorded is None:
        return
    manifest = study_manifest(out_dir)[0] if manifest is None else manifest
    if manifest_hash(manifest) != recorded:
        raise DataError(f"{path}: not the manifest {out_dir / STORE} was recorded with (its pairs, captions or "
                        f"image files differ from the store's manifest hash), so the store's rows cannot be "
                        f"matched to its pairs; restore this study's {MANIFEST} (nothing was written)")


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
    from modalscope.tables import read_provenance, read_summary

    tables = Path(out_dir) / outputs.TABLES
    seen: tuple[str, dict] | None = None
    for output in outputs.CATALOGUE:  # every Parquet table `analyze` writes
        if output.stage != "analyze" or not output.path.startswith(f"{outputs.TABLES}/") \
                or not output.path.endswith(".parquet"):
            continue
        name, path = output.name, output.at(out_dir)
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
    return (f"{Path(out_dir) / outputs.TABLES}: {first} and {second} come from two different analyses (they differ in "
            f"{', '.join(keys[:4])}), e.g. an `analyze` stopped half-way; rerun `modalscope analyze {out_dir}`")


def extraction_note(out_dir: Path) -> str | None:
    """One line when the store holds fewer pairs than the manifest (an unfinished extraction):
    the analysis uses the recorded ones, and the line says how to finish."""
    out_dir = Path(out_dir)
    if not (out_dir / STORE).exists() or not (out_dir / MANIFEST).exists():
        return None
    n_manifest = len(study_manifest(out_dir)[0])
    done = study_store(out_dir).n_done
    if done >= n_manifest:
        return None
    return (f"{n_manifest:,} pairs in the manifest, {done:,} recorded: analysing {done:,}; "
            f"run `modalscope extract --out {out_dir} --resume` to finish")


def extraction_complete(out_dir: Path) -> int | None:
    """The pairs recorded when DIR's store already holds every pair of its manifest, else None."""
    out_dir = Path(out_dir)
    if not (out_dir / STORE).exists() or not (out_dir / MANIFEST).exists():
        return None
    n_manifest = len(study_manifest(out_dir)[0])
    return n_manifest if n_manifest and study_store(out_dir).n_done >= n_manifest else None


