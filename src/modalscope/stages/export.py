"""The `export` stage: Tables 1-2 of chosen sites, layers and neurons, streamed from the store.

Why: Tables 1-2 of a real study hold billions of rows and `analyze` leaves them out by default;
`export` writes the part a question needs, beside the study's tables under its own --name suffix.
"""

from __future__ import annotations

from pathlib import Path

from modalscope import outputs
from modalscope.folder import study_manifest, study_store
from modalscope.stages.checks import check_manifest
from modalscope.tables import TABLE1, TABLE2, long_table_csv, write_long_tables

# The catalogue's entries of what export writes (`{name}`: its --name suffix).
EXPORTS = tuple(f"{outputs.TABLES}/{table.replace('.parquet', '{name}.parquet')}" for table in (TABLE1, TABLE2))

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

    from modalscope.provenance import table_provenance

    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", name) or name.startswith("."):
        raise ValueError(f"--name {name!r}: a file-name suffix of letters, digits, '_', '-', '.' (at most 64), "
                         "e.g. _export")
    for output in EXPORTS:  # its files, inside DIR (a tables/ linked elsewhere is refused before any read)
        outputs.entry(output).at(out_dir, name=name)
    store = study_store(out_dir)
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
    manifest, _ = study_manifest(out_dir)
    check_manifest(Path(out_dir), manifest)
    contrast = tuple(str(store.attrs.get("contrast", "text - image")).split(" - "))
    paths = write_long_tables(
        store, manifest["pair_id"].tolist(), Path(out_dir) / outputs.TABLES, sites, layers, neurons, name,
        contrast=contrast, provenance=table_provenance(store, " - ".join(contrast)),
    )
    if csv:
        long_table_csv(paths)
    return paths
