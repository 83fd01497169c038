"""One function per command (`COMMANDS`); `run.main` calls the one argparse chose."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from modalscope import outputs
from modalscope.config import StudyConfig
from modalscope.ranks import Ranks
from modalscope.cli.run import _config, _report, _stored_settings


def _cmd_demo(args: argparse.Namespace, started: float) -> None:
    """The whole study on the embedded trained VLM and drawn-shapes set (or the tiny LLaVA)."""
    from modalscope import study
    from modalscope.demo import demo_config

    from modalscope.settings import fields_of

    overrides = {k: getattr(args, k) for k in fields_of("demo") if getattr(args, k) is not None}
    StudyConfig(out_dir=args.out, **overrides).validate()  # bounds first: the assets are written next
    config = demo_config(args.out, model=args.model, **overrides)
    _report(study.run_study(config), started, quiet=not config.progress)


def _cmd_init(args: argparse.Namespace, started: float) -> None:
    """A commented starter study.toml."""
    from modalscope.study_file import write_starter

    path = write_starter(args.path)
    print(f"wrote {path}: check the data paths in [data], then `modalscope run --config {path}`")


def _cmd_shrink(args: argparse.Namespace, started: float) -> None:
    """A random-weight checkpoint from a real model's files (models/shrunk.py `shrink`)."""
    from modalscope.models.shrunk import shrink

    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: must be 0 or more")
    if not 1 <= args.layers <= 64:
        raise ValueError(f"--layers {args.layers}: choose 1 to 64")
    from modalscope.models.shrunk import ShrunkSizes

    out = shrink(args.source, args.out, revision=args.revision, seed=args.seed, sizes=ShrunkSizes(layers=args.layers))
    print(f"wrote {out}: random weights, {args.source}'s tokenizer, processor and template; try a study with "
          f"`modalscope run --model {out} ...` (its report says random weights)")


def _cmd_run(args: argparse.Namespace, started: float) -> None:
    """The whole study."""
    from modalscope import study

    config = _config(args, args.out)
    _report(study.run_study(config, force=args.force), started, quiet=not config.progress)


def _cmd_plan(args: argparse.Namespace, started: float) -> None:
    """The study's budget, from the model's config alone (--config: the file's study)."""
    from modalscope.budget import plan_lines

    out = args.out or _file_settings(args).get("out_dir") or Path(".")
    config = _config(args, Path(out))
    config.check_batching()
    if config.num_pairs is None:
        raise ValueError(f"{args.config}: no [data] num_pairs; give it there or with --num-pairs N")
    print("\n".join(plan_lines(config, config.num_pairs)))


def _file_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings of --config's study file ({} without one)."""
    from modalscope.study_file import read

    return read(args.config) if getattr(args, "config", None) is not None else {}


def _study_folder(args: argparse.Namespace) -> Path:
    """The positional DIR, else --config's [output] out (a stage that only reads the study)."""
    folder = args.dir or _file_settings(args).get("out_dir")
    if folder is None:
        raise ValueError(f"{args.config}: no [output] out; give the study folder there or as DIR")
    return Path(folder)


def _cmd_extract(args: argparse.Namespace, started: float) -> None:
    """Record (or continue recording) the store."""
    from modalscope import study
    from modalscope.data.manifest import data_notes

    out, model = args.out, args.model
    if args.config is not None:  # the folder and model may come from the file
        from modalscope.study_file import read

        settings = read(args.config)
        out = out or settings.get("out_dir")
        model = model or settings.get("model")
        if out is None:
            raise ValueError(f"{args.config}: no [output] out; give the study folder there or with --out DIR")
    config = _config(args, Path(out), **_stored_settings(Path(out), model, args.resume))
    config.validate()
    clock = time.perf_counter()
    store = study.extract_stage(config, force=args.force, keep_settings=study.EXTRACT_KEEPS)
    if Ranks.from_env().leader:
        study.write_study_file(config, study.EXTRACT_KEEPS)  # the model and data passed their checks
        from modalscope.provenance import record_stage

        record_stage(config.out_dir, "extract", time.perf_counter() - clock)
        print(f"{store.n_done} of {store.attrs['n_inputs']} pairs recorded in {store.path}")
        for note in data_notes(config.out_dir):
            print(note)


def _cmd_analyze(args: argparse.Namespace, started: float) -> None:
    """Tables from the store."""
    from modalscope import study

    config = _config(args, args.dir)  # analyze's settings checked: a bad one is refused before DIR is touched
    manifest = study.analysis_manifest(config)
    partial = study.extraction_note(config.out_dir)
    if partial:
        print(partial)
    from modalscope.folder import study_store
    from modalscope.store import STORE, unchecked_note

    present = (config.out_dir / STORE / "zarr.json").is_file()
    unchecked = unchecked_note(study_store(config.out_dir)) if present else None  # the command's one read
    if unchecked:
        print(unchecked)
    paths, skipped = study.analyze_stage(config, manifest)
    for path in paths:
        print(f"  table   {path}")
    if skipped:
        print(skipped)
    from modalscope.figures.export import owned_figure_files

    drawn = (config.out_dir / outputs.REPORT).exists() or bool(owned_figure_files(config.out_dir / outputs.FIGURES))
    if drawn:
        print(f"figures and report.html show the previous analysis: `modalscope plot {config.out_dir}` "
              "redraws them")


def _cmd_plot(args: argparse.Namespace, started: float) -> None:
    """Figures and the report from the tables."""
    from modalscope import study

    config = _config(args, args.dir)
    out, png, stat = config.out_dir, config.png, config.stat
    paths, message = study.plot_stage(out, png, stat, progress=sys.stderr.isatty())
    for path in paths:
        print(f"  figure  {path}")
    print(f"  report  {study.report_stage(out, stat)}")  # its figure links follow
    if message:
        print(message)


def _cmd_report(args: argparse.Namespace, started: float) -> None:
    """The report from the tables and figures."""
    from modalscope import study
    from modalscope.settings import BY_FIELD

    stat = args.stat if args.stat is not None else _file_settings(args).get("stat")
    BY_FIELD["stat"].checked(stat)  # a file's value too: one of the reductions
    print(f"  report  {study.report_stage(_study_folder(args), stat)}")


def _cmd_export(args: argparse.Namespace, started: float) -> None:
    """Tables 1-2 for chosen layers and neurons."""
    from modalscope import study

    folder = _study_folder(args)
    csv = args.csv if args.csv is not None else bool(_file_settings(args).get("csv", False))
    tables = folder / outputs.TABLES
    before = set(tables.glob(f"*{args.name}.*")) if tables.is_dir() else set()
    for path in study.export_stage(folder, args.sites, args.layers, args.neurons, args.name, csv):
        print(f"  table   {path}" + (" (replaced the previous export; --name SUFFIX keeps both)"
                                     if path in before else ""))


def _cmd_neuron(args: argparse.Namespace, started: float) -> None:
    """One neuron's card from the tables (and the store for more pairs than they hold)."""
    from modalscope.cards.card import card_page, neuron_card
    from modalscope.cards.thumbnails import Thumbnails
    from modalscope.files import atomic_write

    if args.top is not None and args.top > MAX_TOP:
        raise ValueError(f"--top {args.top}: a card shows at most {MAX_TOP:,} pairs per stream")
    from modalscope.study import check_manifest

    folder = _study_folder(args)
    check_manifest(folder)  # the card's captions and images are the manifest's rows
    card = neuron_card(folder, args.site, args.layer, args.neuron, args.top)
    if args.out is None:  # the site becomes the file name: a plain name, and the file inside DIR
        from modalscope.paths import check_inside, is_safe_name

        if not is_safe_name(card.site):
            raise ValueError(f"--site {card.site!r}: not a plain site name; give --out FILE")
        out = check_inside(folder / outputs.CARDS / f"{card.site}_layer{card.layer}_neuron{card.neuron}.html", folder)
    else:
        out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    thumbnails = Thumbnails()
    print(f"  card    {atomic_write(out, card_page(card, thumbnails).encode('utf-8'))}")
    if thumbnails.missing:  # images moved or deleted since the study: the card shows placeholders
        print(f"modalscope: warning: {len(thumbnails.missing)} image(s) could not be read (e.g. "
              f"{thumbnails.missing[0]}), shown as placeholders; were the images moved since the study?",
              file=sys.stderr)


MAX_TOP = 1_000  # neuron --top: each pair is an embedded thumbnail


def _cmd_ablate(args: argparse.Namespace, started: float) -> None:
    """Ablate the neurons the study selects, against random sets (ablation/)."""
    from modalscope.ablation.cli import ablate_command

    ablate_command(args, started)


# One function per command; `_dispatch` calls the one argparse chose.
COMMANDS = {
    "demo": _cmd_demo, "init": _cmd_init, "run": _cmd_run, "plan": _cmd_plan, "extract": _cmd_extract,
    "analyze": _cmd_analyze, "plot": _cmd_plot, "report": _cmd_report, "export": _cmd_export,
    "neuron": _cmd_neuron, "shrink": _cmd_shrink,
    "ablate": _cmd_ablate,
}
