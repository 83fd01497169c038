"""`modalscope ablate DIR`: its options and what it prints (cli.py registers it).

Why a module of its own: the command has a dozen options of its own, and cli.py is shared; it
adds the parser and calls `ablate_command`. Nothing here imports torch (the parser is built for
every command).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from modalscope.settings import BY_FIELD

HELP = "ablate the neurons the statistics select (and random sets like them); measure the captions' likelihood"


def _whole(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{option} {text}: expected a whole number") from None


def _positive(option: str, low: int, high: int):
    def parse(text: str) -> int:
        value = _whole(option, text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{option} {text}: give {low:,} to {high:,}")
        return value

    return parse


def _list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


# The options that are also the study file's [ablation] keys (`run` ablates with them), in --help order.
SHARED = ("ablation_k", "ablation_sets", "ablation_method", "ablation_random", "ablation_pairs", "ablation_bands",
          "ablation_readouts")


def _parse_row(field: str):
    """The argparse type of the [ablation] row `field`: a whole number or a comma list, then the
    row's own check, its message naming the option ("--k 0: give 1 to 1,000,000")."""
    row = BY_FIELD[field]

    def parse(text: str):
        value = _list(text) if row.kind == "list" else _whole(row.option, text)
        try:
            row.checked(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{row.option} {text}: {str(error).split(': ', 1)[-1]}") from None
        return value

    return parse


def _row_kwargs(field: str) -> dict:
    row = BY_FIELD[field]
    shown = row.shown_default or (",".join(row.default) if isinstance(row.default, tuple) else str(row.default))
    return {"dest": field, "type": _parse_row(field), "default": row.default, "metavar": row.metavar,
            "help": f"{row.help} (default: {shown})"}


def add_ablate_command(sub, command, folder_type) -> argparse.ArgumentParser:
    """The `ablate` parser, made with cli.py's `_command` and `_folder_type`."""
    p = command(sub, "ablate", HELP)
    p.add_argument("dir", type=folder_type("DIR"), metavar="DIR", help="study folder DIR, analysed (required)")
    for field in SHARED:  # help, default and check: the study file's [ablation] rows (settings/table.py)
        p.add_argument(BY_FIELD[field].option, **_row_kwargs(field))
    p.add_argument("--concept-words", type=_list, metavar="LIST",
                   help="the words image_concept and text_concept score in every caption (default: each pair's "
                        "concept labels, the manifest's concepts)")
    p.add_argument("--sites", type=_list, metavar="LIST", help="comma list of sites (default: all analysed)")
    p.add_argument("--stat", default="max", help="the reduction of Table 3 whose columns select (default: max)")
    p.add_argument("--batch-size", type=_positive("--batch-size", 1, 65_536), default=32, metavar="N",
                   help="rows (a set on a pair) per forward (default: 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="weights' dtype (default: the study's)")
    p.add_argument("--seed", type=_positive("--seed", 0, 2**63 - 1), default=0,
                   help="seed of the random sets (default: 0)")
    p.add_argument("--new-tokens", type=_positive("--new-tokens", 1, 4096), default=24, metavar="N",
                   help="greedy tokens per generated caption of the caption_words readout (default: 24)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    return p


def ablate_command(args: argparse.Namespace, started: float) -> None:
    from modalscope.ablation.run import AblationSettings, run_ablation

    settings = AblationSettings(k=args.ablation_k, sets=args.ablation_sets, methods=args.ablation_method,
                                n_random=args.ablation_random, n_pairs=args.ablation_pairs,
                                n_bands=args.ablation_bands, readouts=args.ablation_readouts or None,
                                concept_words=args.concept_words or None,
                                sites=args.sites or None, stat=args.stat, batch_size=args.batch_size,
                                device=args.device, dtype=args.dtype, seed=args.seed, progress=not args.quiet,
                                new_tokens=args.new_tokens)
    result = run_ablation(Path(args.dir), settings)
    record_settings(Path(args.dir), settings)
    for note in result.notes:
        print(f"  note    {note}")
    print(f"  table   {result.table}")
    if result.figure is not None:
        print(f"  figure  {result.figure}")
    print(f"ablation done in {time.perf_counter() - started:.1f} s ({result.rows_per_second:.1f} set-pair rows/s)")


def record_settings(out_dir: Path, settings) -> None:
    """DIR/study.toml's [ablation] section says what `ablate` ran, so that `run --config
    DIR/study.toml` repeats the study with its ablation (the study file's keys: k, sets,
    method, random, pairs, bands, readouts). Options the section has no key for come from the
    study when `run` ablates (its reduction, device, dtype and seed, every analysed site): a
    standalone `ablate` that chose others says so here, since the file cannot."""
    from modalscope.stages.settings import update_study_file

    update_study_file(out_dir, {"ablation": True, "ablation_k": settings.k, "ablation_sets": tuple(settings.sets),
                                "ablation_method": tuple(settings.methods), "ablation_random": settings.n_random,
                                "ablation_pairs": settings.n_pairs, "ablation_bands": settings.n_bands,
                                "ablation_readouts": tuple(settings.readouts) if settings.readouts else None})
    if settings.sites or settings.stat != "max" or settings.concept_words:
        print("  note    study.toml's [ablation] records k, sets, method, random, pairs, bands and readouts; "
              "--sites, --stat and --concept-words have no key there (`run` ablates every analysed site on "
              "the study's --stat)")
