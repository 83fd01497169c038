"""`modalscope ablate DIR`: its options and what it prints (cli.py registers it).

Why a module of its own: the command has a dozen options of its own, and cli.py is shared; it
adds the parser and calls `ablate_command`. Nothing here imports torch (the parser is built for
every command).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "ablate the neurons the statistics select (and random sets like them); measure the captions' likelihood"


def _positive(option: str, low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} {text}: expected a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{option} {text}: give {low:,} to {high:,}")
        return value

    return parse


def _list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_ablate_command(sub, command, folder_type) -> argparse.ArgumentParser:
    """The `ablate` parser, made with cli.py's `_command` and `_folder_type`."""
    p = command(sub, "ablate", HELP)
    p.add_argument("dir", type=folder_type("DIR"), metavar="DIR", help="study folder DIR, analysed (required)")
    p.add_argument("--k", type=_positive("--k", 1, 1_000_000), default=10, metavar="K",
                   help="neurons per set: the top K that pass q < 0.05 (default: 10)")
    p.add_argument("--sets", type=_list, default=("text", "image", "xmodal"), metavar="LIST",
                   help="comma list of text, image, xmodal (Table 3's top K of each site), concept:NAME or "
                        "concepts (the top K imagery neurons of a concept, or of each; needs concept labels) and "
                        "files of (site, layer, neuron[, set]) rows, Parquet or CSV (default: text,image,xmodal)")
    p.add_argument("--method", type=_list, default=("mean",), metavar="METHOD",
                   help="mean (set to the neuron's mean over the held-out half of the study's inputs), zero, "
                        "or mean,zero (default: mean)")
    p.add_argument("--random", type=_positive("--random", 1, 100_000), default=100, metavar="R",
                   help="random sets per set, matched in site, layers and size; p's floor is 1/(R+1) (default: 100)")
    p.add_argument("--pairs", type=_positive("--pairs", 2, 10_000_000), metavar="N",
                   help="pairs to score, from the half of the manifest the means do not use (default: all of it)")
    p.add_argument("--bands", type=_positive("--bands", 1, 1_000), default=1, metavar="N",
                   help="also make the sets within N bands of consecutive layers (default: 1, the whole model)")
    p.add_argument("--readouts", type=_list, metavar="LIST",
                   help="image (log p(caption | image)), text (log p(caption) in the text-only input), "
                        "image_concept and text_concept (the same, of the concept words in the caption only), "
                        "caption_words (a caption generated greedily from the image alone: the accuracy of its "
                        "colour, shape, count and size words against the pairs' drawn-world concept labels) "
                        "(default: image,text, and caption_words when the pairs have drawn-world labels; text "
                        "alone for a model without vision)")
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

    settings = AblationSettings(k=args.k, sets=args.sets, methods=args.method, n_random=args.random,
                                n_pairs=args.pairs, n_bands=args.bands, readouts=args.readouts or None,
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
