"""The `plot` stage: every figure of the study from DIR/tables, one file each in DIR/figures.

Why figures/ holds only this plot's figures: a figure of an earlier plot that is not drawn now
would show an analysis that no longer exists; the catalogue (outputs.py) says which files of
figures/ are plot's to remove, and anything else there is never touched.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modalscope.paths import check_inside
from modalscope.stages.checks import check_manifest, mixed_tables
from modalscope.stages.settings import PLOT_FIELDS, update_study_file


def plot_stage(out_dir: Path, png: bool = True, stat: str = "max",
               progress: bool = False) -> tuple[list[Path], str | None]:
    """Figures 1 and 2 per site and reduction from DIR/tables, the significant-neuron counts,
    and PNG and SVG copies when a browser exists. `figure2_{site}.html` leads with `stat` and
    draws max and matched_max side by side; `figure{1,2}_{site}_{other}.html` show each other
    one. The HTML files share one figures/plotly.min.js (see figures/export.py).

    figures/ then holds this plot's figures only: a figure of an earlier plot that is not drawn
    now (a reduction or site no longer analysed, Δ_base gone) is removed, and so is every old
    PNG/SVG copy before the new ones are written (none stay without a browser or with png off)."""
    from tqdm.auto import tqdm

    from modalscope import outputs
    from modalscope.figures.assemble import StudyTables, study_figures
    from modalscope.figures.export import NO_BROWSER_MESSAGE, owned_figure_files, write_html, write_images
    from modalscope.figures.histograms import for_static
    from modalscope.provenance import record_stage

    clock = time.perf_counter()
    check_manifest(out_dir)  # the report it is followed by shows the manifest's captions
    tables = StudyTables.read(out_dir)  # its site and reduction names checked against the store's
    tables.check_stat(stat, out_dir)
    mixed = mixed_tables(out_dir)
    if mixed:
        raise ValueError(mixed)
    figures_dir = Path(out_dir) / outputs.FIGURES
    figures = {figure_path(out_dir, name): fig for name, fig in study_figures(tables, stat).items()}
    paths = [write_html(fig, path, plotlyjs="directory", within=out_dir)
             for path, fig in tqdm(figures.items(), desc="plot", unit="figure", disable=not progress, leave=False,
                                   file=sys.stderr)]
    for old in owned_figure_files(figures_dir):  # the catalogue's plot figures, not drawn now (or old copies)
        if old.suffix != ".html" or old not in figures:
            old.unlink()
    message = write_images({path: for_static(fig) for path, fig in figures.items()}, within=out_dir) if png else None
    if message == NO_BROWSER_MESSAGE:
        message = message.replace("DIR", str(out_dir))
    settings = dict(zip(PLOT_FIELDS, (png, stat)))
    record_stage(out_dir, "plot", time.perf_counter() - clock, settings)
    update_study_file(out_dir, settings)
    return paths, message


def figure_path(out_dir: Path, stem: str) -> Path:
    """DIR/figures/`stem`.html, a figure the catalogue lists under `plot` (outputs.py: so the report
    describes it and a later plot may remove it); refused outside DIR."""
    from modalscope import outputs

    relative = f"{outputs.FIGURES}/{stem}.html"
    if not any(output.stage == "plot" for output, _ in outputs.matches(relative)):
        raise ValueError(f"{relative}: a figure without an entry in outputs.CATALOGUE; add one")
    return check_inside(Path(out_dir) / relative, out_dir)
