"""DIR/study.toml: every setting of the study, so that `modalscope run --config DIR/study.toml
--out NEW` repeats it, kept true as stages run alone with settings of their own.

Why here: each stage that runs alone owns some settings (`analyze --contrast`, `plot --stat`), and
the file must say the ones its outputs show; which settings each stage owns is listed once below.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.outputs import STUDY_TOML
from modalscope.settings import BY_FIELD, fields_of, in_section


# The study file's data keys: kept from DIR/study.toml when a rerun names no data (it reuses
# the manifest), so the file still repeats the study from its data.
DATA_KEYS = in_section("data")


def write_study_file(config: StudyConfig, keep: tuple[str, ...] = ()) -> Path:
    """DIR/study.toml: every setting of the study, defaults included, so that `modalscope run
    --config DIR/study.toml --out NEW` repeats it. Written once the model and the data passed
    their checks and the store matched (never for a refused study), before the first forward, and
    again when the stage ends; paths are absolute (a local --model too) so it works from any
    folder. A rerun that names no data (it reuses the manifest, e.g. `extract --resume`) keeps the
    file's data keys, and the settings in `keep` (those the command has no option for, e.g. the
    analysis settings for `extract`) are kept from the file too."""
    from modalscope.study_file import StudyFileError, read

    path = config.out_dir / STUDY_TOML
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


# The settings `extract` does not own: kept from DIR/study.toml when it rewrites the file. The
# analysis and plot settings `run` takes and `extract` does not, `contrast` (extract takes it only
# to choose the streams it records; the file's, set by `analyze --contrast`, stays), and the
# [ablation] section (`ablate`'s settings, which no recording changes).
EXTRACT_KEEPS = tuple(dict.fromkeys(("contrast", *(f for f in fields_of("run") if f not in fields_of("extract")),
                                     *in_section("ablation"))))


def update_study_file(out_dir: Path, settings: dict[str, object]) -> Path | None:
    """DIR/study.toml with the `settings` (StudyConfig fields) of a stage run alone (e.g.
    `analyze --contrast`), so the file still repeats the study its outputs show; left alone when
    there is none."""
    from modalscope.study_file import StudyFileError, read

    path = Path(out_dir) / STUDY_TOML
    if not path.exists():
        return None
    try:
        current = read(path)
    except StudyFileError:  # a hand-edited file that no longer parses: not ours to rewrite
        return None
    if all(current.get(name) == value for name, value in settings.items()):
        return path
    updated = StudyConfig(**{**current, **settings})
    updated.check(*(name for name in settings if name in BY_FIELD))  # never write a value `run --config` would refuse (one line, nothing written)
    return updated.to_toml(path)


# The settings each stage run alone owns in study.json's `config` (and DIR/study.toml).
ANALYSIS_FIELDS = fields_of("analyze")
PLOT_FIELDS = fields_of("plot")  # ("png", "stat"): in this order, plot_stage's arguments
if PLOT_FIELDS != ("png", "stat"):  # plot.py zips them with its arguments
    raise RuntimeError(f"settings table: plot takes {PLOT_FIELDS}, plot_stage expects ('png', 'stat')")

