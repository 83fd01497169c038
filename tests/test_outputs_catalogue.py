"""The catalogue of DIR (outputs.py) is the folder: a real study writes nothing it does not list, and
every entry a study always writes is there; the names it spells are still exported by their old homes
(their contract with users' scripts); the report describes every file it links from it."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from modalscope import outputs


def written(out_dir: Path) -> list[str]:
    found = []
    for root, _, files in os.walk(out_dir):
        found += [Path(root, f).relative_to(out_dir).as_posix() for f in files]
    return sorted(found)


def test_every_file_a_study_writes_is_in_the_catalogue(small_study: Path) -> None:
    unlisted = [f for f in written(small_study) if outputs.match(f) is None]
    assert not unlisted, f"outputs.CATALOGUE lacks an entry for {unlisted[:10]}"


def test_every_entry_a_study_always_writes_exists(small_study: Path) -> None:
    files = written(small_study)
    absent = [e.path for e in outputs.CATALOGUE
              if e.always and not any(e.fields(f) is not None for f in files)]
    assert not absent, f"catalogued as always written, but the small study has none of {absent}"


def test_each_written_file_has_one_line_in_the_report_file_list(small_study: Path) -> None:
    sites = ["residual", "mlp"]
    for name in written(small_study):
        if name.startswith(("activations.zarr/", "figures/plotly")):
            continue
        assert outputs.describe(name, sites), name


def test_the_old_homes_of_the_names_still_export_the_catalogues() -> None:
    """Users' scripts import these names from the modules that used to spell them."""
    from modalscope.ablation.progress import PROGRESS
    from modalscope.ablation.run import FIGURE, MEMBERS, TABLE
    from modalscope.concepts import CONCEPTS
    from modalscope.figures.export import PLOTLYJS
    from modalscope.figures.xmodal import SHARE_FIGURE
    from modalscope.lock import LOCK_NAME
    from modalscope.record.distributed import SHARDS
    from modalscope.record.extract import NONFINITE
    from modalscope.twin import TWIN_FOLDER

    assert (outputs.ABLATION, outputs.ABLATION_SETS, outputs.ABLATION_FIGURE) == (TABLE, MEMBERS, FIGURE)
    assert outputs.ABLATION_PROGRESS == PROGRESS.as_posix()
    assert (outputs.CONCEPTS, outputs.PLOTLYJS, outputs.SHARE_FIGURE, outputs.LOCK) == \
        (CONCEPTS, PLOTLYJS, SHARE_FIGURE, LOCK_NAME)
    assert (outputs.SHARDS, outputs.NONFINITE, outputs.TWIN) == (SHARDS, NONFINITE, TWIN_FOLDER.as_posix())


def test_every_builder_can_be_found() -> None:
    for entry in outputs.CATALOGUE:
        assert callable(entry.build()), entry.builder


def test_top_neurons_is_the_reports_lists(small_study: Path) -> None:
    """The new output (one builder, one catalogue entry): the report's top neurons each way, as a table."""
    from modalscope.figures.assemble import StudyTables
    from modalscope.report.facts import top_neurons

    table = pd.read_parquet(small_study / "tables" / "top_neurons.parquet")
    tables = StudyTables.read(small_study)
    for site in tables.sites:
        up, down = top_neurons(tables, site, "max")
        rows = table[(table["site"] == site) & (table["stat"] == "max")]
        assert rows[rows["direction"] == "text"]["neuron"].tolist() == up["neuron"].tolist()
        assert rows[rows["direction"] == "image"]["neuron"].tolist() == down["neuron"].tolist()
    assert set(table["stat"]) == set(tables.stats)


def test_each_stage_command_opens_the_study_store_once(small_study: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 22.2: the stages after extraction read DIR/activations.zarr through folder.py, once per
    command (it was opened up to 13 times in one `run`)."""
    import shutil

    from modalscope.cli import main
    from modalscope.store import STORE, ActivationStore

    study = tmp_path / "study"
    shutil.copytree(small_study, study)
    opened: list[str] = []
    read = ActivationStore.read.__func__

    def counted(cls, path, *args, **kwargs):
        if Path(path).resolve() == (study / STORE).resolve():
            opened.append(str(path))
        return read(cls, path, *args, **kwargs)

    monkeypatch.setattr(ActivationStore, "read", classmethod(counted))
    for command in (["analyze", str(study)], ["plot", str(study), "--no-png"], ["report", str(study)],
                    ["neuron", str(study), "--site", "mlp", "--layer", "1", "--neuron", "3"]):
        from modalscope import folder

        folder._STORES.clear()  # a fresh command: nothing held over from the last one
        opened.clear()
        assert main(command) == 0, command
        assert len(opened) == 1, (command, opened)
