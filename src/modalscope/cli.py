"""Command line: parses arguments, builds a StudyConfig, calls the study functions.

Thin on purpose: everything here is also reachable from Python (`modalscope.run_study`).
User errors (bad data, bad settings, a store from another study) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import sys
import time
from pathlib import Path

from modalscope.config import ALL_STATS, DEFAULT_CONDITIONS, DEFAULT_STATS, StudyConfig
from modalscope.data.pairs import DataError
from modalscope.models.adapter import SITES
from modalscope.store import StoreMismatch
from modalscope.store_dtypes import STORE_DTYPES

# Errors of writing outputs that the user can fix (space, permissions, quota, file size).
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.ENOENT}

DESCRIPTION = """\
Does each neuron of a vision-language model respond more to text or to images?
For every image-caption pair, modalscope runs the caption alone and the image alone
through the model, records the max and mean activation of every neuron of every
decoder layer, and tests per neuron whether Δ = max_text - max_image differs from 0.

Start with `modalscope demo --out demo-out` (tiny model, synthetic data, offline; open
demo-out/report.html). For a real study, `modalscope init` writes a commented study.toml
(LLaVA-1.5-7B on COCO val2017); edit it, then `modalscope run --config study.toml`.
Every run writes DIR/study.toml, its complete settings: `modalscope run --config
DIR/study.toml --out NEW` repeats it. Flags given on the command line beat the file.
"""
# Flags whose dest is not the StudyConfig field of the same name (see study_file.KEYS).
FLAG_FIELDS = ("model", "revision", "base_model", "base_revision", "device", "dtype", "device_map",
               "quantization", "batch_size", "sort_window", "workers", "captions", "images", "jsonl", "instances",
               "num_pairs", "seed", "sites", "tokens", "stats", "quantile", "store_dtype", "conditions",
               "contrast", "fdr", "n_perm", "n_boot", "outlier_factor", "alignment_stat", "stat", "long_tables", "csv", "png",
               "primary")
FORCE_HELP = ("start even when the free disk under DIR looks too small for the store's estimate "
              "(`modalscope plan` prints it) (default: off)")
CONFIG_HELP = ("study file (TOML; `modalscope init` writes a starter, every run writes DIR/study.toml): "
               "every option under [data], [model], [conditions], [reductions], [statistics], [output], "
               "keys named like the flags (num_pairs, permutations, ...); a flag given here beats the file "
               "(default: none, the flags alone)")
MODEL_HELP = "hub id or local folder of a supported model (README: Supported models), e.g. llava-hf/llava-1.5-7b-hf"


class _Parser(argparse.ArgumentParser):
    """argparse, with options spelled out in full and errors on one line.

    Why: argparse's prefix matching lets `--num-pair 5` pass as `--num-pairs` (and would let a
    future option change what an old command means), and its usage dump buries the one line
    that matters. An unknown option gets the closest valid one instead."""

    commands: dict[str, argparse.ArgumentParser]

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.commands = {}

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        args = sys.argv[1:] if args is None else list(args)
        # An unknown option first: argparse would report a missing required one before it.
        command = next((a for a in args if a in self.commands), None)
        if command is not None:
            sub = self.commands[command]
            known = {o for a in sub._actions for o in a.option_strings}
            rest = args[args.index(command) + 1:]
            unknown = [a for a in rest if a.startswith("--") and a != "--" and a.split("=", 1)[0] not in known]
            if unknown:
                self.error(self._unrecognized(unknown, sub))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras, self.commands.get(getattr(parsed, "command", None), self)))
        return parsed

    def _unrecognized(self, extras: list[str], parser: argparse.ArgumentParser) -> str:
        """An option of another command says whose it is; a typo gets the closest option."""
        from modalscope.study_file import suggest_option

        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        unknown = next((e for e in extras if e.startswith("-")), None)
        if unknown is None:
            return f"unrecognized arguments: {' '.join(extras)}"
        name = unknown.split("=", 1)[0]
        owners = [command for command, sub in self.commands.items()
                  if sub is not parser and any(name in a.option_strings for a in sub._actions)]
        if owners:
            return (f"{name} is not an option of {parser.prog.split()[-1]} (it is one of {', '.join(owners)}); "
                    f"see `{parser.prog} --help`")
        close = suggest_option(name, options)
        hint = f"did you mean {close}?" if close else f"see `{parser.prog} --help`"
        return f"unrecognized option {name}; {hint}"

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"modalscope: error: {plain_usage_error(message)}\n")


# argparse's wording of a bad value -> what the message says instead (no type or function names).
_EXPECTED = {"int": "expected a whole number", "float": "expected a number"}


def plain_usage_error(message: str) -> str:
    """argparse's 'argument --num-pairs: invalid int value: 'x'' as '--num-pairs x: expected a
    whole number'; a message of our own types (which name the option first) stays as it is."""
    match = re.match(r"argument ([\w-]+)(?:/[\w-]+)?: (.*)$", message)
    if match is None:
        return message
    option, reason = match.groups()
    if reason.startswith(option + " "):
        return reason
    value = re.match(r"invalid (\w+) value: '(.*)'$", reason)
    if value:
        return f"{option} {value[2]}: {_EXPECTED.get(value[1], 'not a valid value')}"
    choice = re.match(r"invalid choice: '(.*)' \(choose from (.*)\)$", reason)
    if choice:
        options = [c.strip().strip("'") for c in choice[2].split(",")]
        return f"{option} {choice[1]}: choose {', '.join(options[:-1])} or {options[-1]}" if len(options) > 1 \
            else f"{option} {choice[1]}: choose {options[0]}"
    if reason == "expected one argument":
        return f"{option}: needs a value"
    return f"{option}: {reason}"


# The largest index --layers/--neurons take: checked before a range is expanded (`0-99999999999`
# would otherwise build a list of that many ints), far above any model's layers and widths.
MAX_INDEX = {"layer": 9_999, "neuron": 999_999}


def _index_list(option: str, what: str):
    """argparse type of --layers/--neurons: '0,3-5' -> [0, 3, 4, 5] (repeats once); anything
    else is one line naming the option, the bad part and what is accepted."""
    accepted = (f"give {what} indices (whole numbers from 0) and ascending ranges A-B, "
                "separated by commas, e.g. 0,10-12")
    most = MAX_INDEX[what]

    def parse(text: str) -> list[int]:
        values: list[int] = []
        for part in text.split(","):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if match is None:
                shown = f"'{part.strip()}'" if part.strip() else "an empty item"
                raise argparse.ArgumentTypeError(f"{option} {text}: {shown} is not an index or a range; {accepted}")
            low, high = int(match[1]), int(match[2] or match[1])
            if max(low, high) > most:
                raise argparse.ArgumentTypeError(
                    f"{option} {text}: {max(low, high)} is beyond any model (a {what} index is at most "
                    f"{most:,}); {accepted}")
            if high < low:
                raise argparse.ArgumentTypeError(
                    f"{option} {text}: {low}-{high} is an empty range ({low} > {high}); {accepted}")
            values.extend(range(low, high + 1))
        return list(dict.fromkeys(values))

    return parse


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-size {text}: give a whole number or auto") from None


def _folder_type(option: str):
    """argparse type of a study folder: an empty name (`--out ""`) would mean the current folder."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{option} {text!r}: give a folder name (an empty one would write "
                                             "into the current folder)")
        return Path(text)

    return parse


def _sites(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


# Help texts shared by the commands that take the option; each ends with its default.
SEED_HELP = ("seed of the shuffle of the pairs, the sign flips and the bootstrap, three streams spawned "
             "from it (default: 0)")
SITES_HELP = "comma list of residual (decoder layer output) and mlp (down_proj input) (default: residual,mlp)"
TOKENS_HELP = "reduce over the caption/image tokens only (content) or every token but BOS (all) (default: content)"
CONTRAST_HELP = ("Δ = A - B between recorded streams: text, image, image_text, image_text_caption, "
                 "image_text_image, text_base (default: text-image, the report's)")


def _model_options(p: argparse.ArgumentParser, model_help: str, model_required: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=model_required, help=model_help)
    g.add_argument("--revision", help="hub revision (branch, tag or commit) to load (default: main, the latest)")
    g.add_argument("--base-model", metavar="MODEL",
                   help="the language model the VLM was trained from (e.g. lmsys/vicuna-7b-v1.5 for "
                        "LLaVA-1.5-7B): also run the text inputs through it, with the same token ids "
                        "(stream text_base; contrast text - text_base) (default: none)")
    g.add_argument("--base-revision", help="hub revision of --base-model (default: main, the latest)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto: cuda if available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model weights dtype; reductions accumulate in float32 regardless (default: float32)")
    g.add_argument("--device-map", choices=["auto"],
                   help="auto: spread the layers over all visible GPUs, for models bigger than one GPU "
                        "(default: one device)")
    g.add_argument("--quantization", choices=["8bit", "4bit"],
                   help="load weights in 8 or 4 bits (needs `pip install 'modalscope[quant]'` and a GPU) "
                        "(default: none)")
    g.add_argument("--batch-size", type=_batch_size, default=16, metavar="N",
                   help="pairs per forward; auto: start at 64 on a GPU and halve on out-of-memory (default: 16)")
    g.add_argument("--sort-window", type=int, metavar="N",
                   help="batch pairs by caption length within windows of N batches, to cut padding; "
                        "records keep manifest order (default: up to 8 within 1 GiB of host memory; 1: off)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="processes decoding images and preparing batches (default: 0 on CPU, 4 on GPU)")


def _data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (first run in DIR only; later runs reuse DIR/manifest.parquet)")
    g.add_argument("--captions", type=Path, help="COCO captions JSON, e.g. captions_val2017.json (default: none)")
    g.add_argument("--images", type=Path, help="COCO image folder, e.g. val2017/ (default: none)")
    g.add_argument("--jsonl", type=Path,
                   help='instead of COCO: JSONL of {"image": path, "caption": text, "id": ...} (default: none)')
    g.add_argument("--instances", type=Path,
                   help="COCO instances JSON, e.g. instances_val2017.json: each image's object categories become "
                        "its pair's concept labels (tables/concepts.parquet) (default: none)")
    g.add_argument("--num-pairs", type=int, metavar="N",
                   help="use the first N usable pairs of the shuffled list (unusable ones are listed in "
                        "DIR/skipped.parquet) (default: all usable pairs)")
    g.add_argument("--seed", type=int, default=0, help=SEED_HELP)


def _recording_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recording")
    g.add_argument("--sites", type=_sites, default=SITES, metavar="LIST", help=SITES_HELP)
    g.add_argument("--tokens", choices=["content", "all"], default="content", help=TOKENS_HELP)
    g.add_argument("--stats", type=_sites, default=DEFAULT_STATS, metavar="LIST",
                   help="reductions over tokens to record (max and mean always): matched_max (length-matched "
                        "max), frac_active, quantile (default: max,mean,matched_max)")
    g.add_argument("--quantile", type=float, default=0.9,
                   help="the quantile of the `quantile` reduction (default: 0.9)")
    g.add_argument("--store-dtype", choices=list(STORE_DTYPES), default="float16",
                   help="dtype of the stored reductions: float16 and bfloat16 halve the store (bfloat16: float32's "
                        "range, 8x float16's rounding); a value beyond float16's range keeps that array float32 "
                        "when found in the first window (default: float16)")
    g.add_argument("--conditions", type=_sites, default=DEFAULT_CONDITIONS, metavar="LIST",
                   help="forwards per pair: text (caption alone) and image (image alone) always; image_text "
                        "(both in one turn) (default: text,image)")


def _analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics")
    g.add_argument("--contrast", default="text-image", metavar="A-B", help=CONTRAST_HELP)
    g.add_argument("--fdr", choices=["bh", "by"], default="bh",
                   help="false discovery rate control over a site's neurons: Benjamini-Hochberg (bh) or "
                        "Benjamini-Yekutieli (by, any dependence) (default: bh)")
    g.add_argument("--primary", default=None, metavar="SITE:REDUCTION",
                   help="the primary family of tests, corrected on its own (Table 3 q_hier = its q_value); every "
                        "other site x reduction x contrast x test by Benjamini-Bogomolov (q_hier) "
                        "(default: mlp:matched_max, else the recorded site / max)")
    g.add_argument("--permutations", dest="n_perm", type=int, default=1000, metavar="N",
                   help="sign-flip permutations for the null, at least 200 (default: 1000)")
    g.add_argument("--bootstrap", dest="n_boot", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of inputs for the trend's CI, at least 200 (default: 1000)")
    g.add_argument("--outlier-factor", type=float, default=10.0, metavar="F",
                   help="flag massive neurons: max |activation| at least F times the layer median and more than 5 "
                        "robust SDs of log max |activation| above the layer's median; Table 3 `outlier` (default: 10)")
    g.add_argument("--alignment-stat", choices=ALL_STATS, default="mean",
                   help="reduction whose per-pair population vectors the layer alignment (CKA, mutual k-NN, "
                        "retrieval; tables/alignment.parquet) compares between the contrasted conditions "
                        "(default: mean)")


# The output options, by the stage that uses them (`_output_options(p, ...)` adds those named).
OUTPUT_OPTIONS = ("long_tables", "csv", "png", "stat", "quiet")


def _output_options(p: argparse.ArgumentParser, names: tuple[str, ...] = OUTPUT_OPTIONS) -> None:
    g = p.add_argument_group("outputs")
    if "long_tables" in names:
        g.add_argument("--long-tables", choices=["auto", "always", "never"], default="auto",
                       help="write Tables 1-2 (one row per input x layer x neuron): auto (when <= 50M rows), "
                            "always or never; a rerun that leaves them out removes old ones (default: auto)")
    if "csv" in names:
        g.add_argument("--csv", action="store_true",
                       help="also write CSV copies of the tables; a rerun without it removes old copies "
                            "(default: off)")
    if "png" in names:
        g.add_argument("--no-png", dest="png", action="store_false",
                       help="skip PNG and SVG copies of the figures (default: write them when Chrome/Chromium "
                            "is found)")
    if "stat" in names:
        g.add_argument("--stat", default="max", choices=ALL_STATS,
                       help="reduction the headline figures (figure1/2_{site}.html) lead with; the others get "
                            "figure*_{site}_{stat}.html (default: max)")
    if "quiet" in names:
        g.add_argument("--quiet", action="store_true", help="no progress bars, and a whole study lists the report, "
                       "not each table and figure (default: show them)")


def _folder(p: argparse.ArgumentParser, config_given: bool, option: bool) -> None:
    """The study folder: --out DIR (run, extract) or the positional DIR (analyze, plot)."""
    text = "study folder DIR (required, unless --config gives [output] out)"
    if option:
        p.add_argument("--out", type=_folder_type("--out"), required=not config_given, metavar="DIR", help=text)
    else:
        p.add_argument("dir", type=_folder_type("DIR"), nargs="?" if config_given else None, metavar="DIR",
                       help=text)
    p.add_argument("--config", type=Path, metavar="STUDY.TOML", help=CONFIG_HELP)


def _command(sub, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")


def _demo_command(sub) -> None:
    """demo: the options of the embedded study (its model and data are built in)."""
    p = _command(sub, "demo", "whole study on the embedded tiny LLaVA (random weights) and synthetic COCO set")
    p.add_argument("--out", type=_folder_type("--out"), required=True, metavar="DIR",
                   help="study folder; the assets are built in DIR/assets (required)")
    p.add_argument("--num-pairs", type=int, metavar="N", help="pairs to use (default: all 240)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="pairs per forward (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--sites", type=_sites, default=SITES, metavar="LIST", help=SITES_HELP)
    p.add_argument("--tokens", choices=["content", "all"], default="content", help=TOKENS_HELP)
    _analysis_options(p)
    _output_options(p)


def _plan_command(sub) -> None:
    """plan: the model (its config alone), the study's size and what it records."""
    p = _command(sub, "plan", "what a study will cost (store size, files, free disk) from the model's config alone")
    p.add_argument("--model", required=True, help=MODEL_HELP + " (required; only its config is read)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit) (default: main, the latest)")
    p.add_argument("--num-pairs", type=int, required=True, metavar="N", help="pairs of the study (required)")
    p.add_argument("--out", type=_folder_type("--out"), metavar="DIR",
                   help="study folder whose free disk to check (default: none)")
    p.add_argument("--base-model", metavar="MODEL", help="with a base model: its text stream too (default: none)")
    p.add_argument("--batch-size", type=_batch_size, default=16, metavar="N", help="pairs per forward (default: 16)")
    p.add_argument("--sort-window", type=int, metavar="N",
                   help="batches per length-sorted window (default: up to 8 within 1 GiB of host memory)")
    _recording_options(p)


def _export_command(sub) -> None:
    """export: which layers, neurons and sites of Tables 1-2 to write."""
    p = _command(sub, "export", "Tables 1-2 for chosen layers/neurons (for large studies)")
    p.add_argument("dir", type=_folder_type("DIR"), metavar="DIR", help="study folder DIR (required)")
    p.add_argument("--layers", type=_index_list("--layers", "layer"), metavar="LIST",
                   help="decoder layers, e.g. 0,10-12 (default: all)")
    p.add_argument("--neurons", type=_index_list("--neurons", "neuron"), metavar="LIST",
                   help="neurons of each site, e.g. 128,4000-4010 (default: all)")
    p.add_argument("--sites", type=_sites, metavar="LIST", help="comma list of sites (default: all recorded)")
    p.add_argument("--name", default="_export", help="suffix of the written files (default: _export)")
    p.add_argument("--csv", action="store_true", help="also write CSV copies (default: off)")


def _neuron_command(sub) -> None:
    """neuron: which neuron's card to write, where, and how many pairs per stream."""
    p = _command(sub, "neuron", "one neuron's card (offline HTML): the captions and images that excite it most")
    p.add_argument("dir", type=_folder_type("DIR"), metavar="DIR", help="study folder DIR, analysed (required)")
    p.add_argument("--site", required=True, help="site of the neuron, e.g. mlp (required)")
    p.add_argument("--layer", type=int, required=True, metavar="L", help="decoder layer, from 0 (required)")
    p.add_argument("--neuron", type=int, required=True, metavar="N", help="neuron of the site, from 0 (required)")
    p.add_argument("--out", type=_folder_type("--out"), metavar="FILE",
                   help="where to write the card (default: DIR/cards/SITE_layerL_neuronN.html)")
    p.add_argument("--top", type=int, metavar="K",
                   help="pairs per stream; more than the analysis ranked are read from the store "
                        "(default: the 8 of tables/top_pairs.parquet)")


def build_parser(config_given: bool = False) -> argparse.ArgumentParser:
    """The CLI: each command takes only the options it uses. With `config_given` (a --config on
    the command line) the study folder and --model may come from the file, so argparse does
    not require them."""
    parser = _Parser(
        prog="modalscope", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices

    _demo_command(sub)

    p = _command(sub, "init", "write a commented starter study.toml (LLaVA-1.5-7B on COCO val2017)")
    p.add_argument("path", type=Path, nargs="?", default=Path("study.toml"), metavar="PATH",
                   help="where to write it; an existing file is never overwritten (default: ./study.toml)")

    p = _command(sub, "run", "whole study: manifest, extract, analyze, plot, report")
    _folder(p, config_given, option=True)
    _model_options(p, MODEL_HELP + " (required, unless --config gives [model] model)", not config_given)
    _data_options(p)
    _recording_options(p)
    _analysis_options(p)
    _output_options(p)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    _plan_command(sub)

    p = _command(sub, "shrink", "the dry run of a real study: a random-weight checkpoint of a model's family "
                 "with its real tokenizer, processor and template, shrunk to run on a laptop")
    p.add_argument("source", metavar="MODEL", help="a hub id (its config, tokenizer and processor files only, "
                   "from the hub or its cache; never the weights) or a local model folder (required)")
    p.add_argument("out", type=_folder_type("OUT"), metavar="OUT", help="a new or empty folder for the checkpoint (required)")
    p.add_argument("--revision", help="the hub revision (branch, tag or commit) to read (default: main)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")

    p = _command(sub, "extract", "record activations into DIR/activations.zarr (continues a stopped run)")
    _folder(p, config_given, option=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped extraction in DIR with the settings it recorded (model, "
                        "revision, dtype, sites, tokens, reductions, conditions, batch size) (default: off)")
    _model_options(p, MODEL_HELP + " (default: the model DIR recorded, when it holds a study)", False)
    _data_options(p)
    _recording_options(p)
    g = p.add_argument_group("statistics")
    g.add_argument("--contrast", default="text-image", metavar="A-B",
                   help=CONTRAST_HELP.replace(" (default", "; its streams must be recorded (default"))
    _output_options(p, ("quiet",))
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    p = _command(sub, "analyze", "statistics and tables from DIR/activations.zarr into DIR/tables")
    _folder(p, config_given, option=False)
    _analysis_options(p)
    _output_options(p, ("long_tables", "csv"))

    p = _command(sub, "plot", "figures (HTML, PNG, SVG) and DIR/report.html from DIR/tables")
    _folder(p, config_given, option=False)
    _output_options(p, ("png", "stat"))

    p = _command(sub, "report", "DIR/report.html from DIR/tables: the study on one offline page")
    p.add_argument("dir", type=_folder_type("DIR"), metavar="DIR", help="study folder DIR (required)")
    p.add_argument("--stat", choices=ALL_STATS,
                   help="reduction the report leads with (default: the study's --stat, else max)")

    _export_command(sub)
    _neuron_command(sub)
    from modalscope.ablation.cli import add_ablate_command  # its options live beside it

    add_ablate_command(sub, _command, _folder_type)
    return parser


def _config(args: argparse.Namespace, out_dir: Path | None, **extra: object) -> StudyConfig:
    """The study of the flags, or with --config of the file with the flags the user gave on top
    (`args.given`: a default never beats the file); `extra` beats both."""
    if getattr(args, "config", None) is not None:
        given = getattr(args, "given", set())
        overrides: dict[str, object] = {k: getattr(args, k) for k in FLAG_FIELDS if k in given}
        if "quiet" in given:
            overrides["progress"] = not args.quiet
        if out_dir is not None:
            overrides["out_dir"] = out_dir
        overrides.update(extra)
        return StudyConfig.from_toml(args.config, **overrides)
    fields = {k: getattr(args, k) for k in FLAG_FIELDS if hasattr(args, k)}
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(extra)
    return StudyConfig(out_dir=out_dir, progress=not getattr(args, "quiet", False), **fields)


def _report(result, started: float, quiet: bool = False) -> None:
    """What a whole study wrote (with --quiet only how many tables and figures: the report links
    them all), its notes, and last the headline sentence of each site (the report's "At a
    glance"; summary.json's `headline`)."""
    if int(os.environ.get("RANK", 0)) != 0:
        return  # under torchrun, rank 0 speaks for the study
    from modalscope.study import study_headlines

    print(f"study written to {result.out_dir} in {time.perf_counter() - started:.1f} s"
          + (f": {len(result.tables)} tables, {len(result.figures)} figures" if quiet else ""))
    for path in [] if quiet else result.tables:
        print(f"  table   {path}")
    for path in [] if quiet else result.figures:
        print(f"  figure  {path}")
    if result.report is not None:
        print(f"  report  {result.report}")
    for message in result.messages:
        print(message)
    print(headline_block(result.out_dir, study_headlines(result.out_dir)))


def headline_block(out_dir: Path, sentences: list[str]) -> str:
    """'At a glance' and one sentence per site; a study of a random-weights model (the demo's, or
    one `modalscope shrink` built) says so."""
    from modalscope.report.facts import random_weights_title

    note = random_weights_title(out_dir)
    title = f"At a glance ({note}):" if note else "At a glance:"
    return "\n".join([title, *(f"  {sentence}" for sentence in sentences)])


def _given(argv: list[str], config_given: bool) -> set[str]:
    """The dests the user actually typed: the same parse with every default suppressed."""
    parser = build_parser(config_given)
    for p in (parser, *parser.commands.values()):
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, with `given`: with --config, the options the user typed (only
    those beat the file)."""
    config_given = any(a == "--config" or a.startswith("--config=") for a in argv)
    args = build_parser(config_given).parse_args(argv)
    args.given = _given(argv, config_given) if config_given else set()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 0
    from modalscope import provenance

    started = time.perf_counter()
    provenance.COMMAND = shlex.join(["modalscope", *argv])  # study.json records it
    try:
        return _dispatch(args, started)
    except (DataError, StoreMismatch, ValueError, FileNotFoundError) as err:
        print(f"modalscope: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only or vanished output folder: the store stays consistent
        if err.errno not in WRITE_ERRORS:
            raise
        folder = getattr(args, "out", None) or getattr(args, "dir", None)
        where = f"{err.filename}: " if err.filename else (f"writing under {folder}: " if folder else "")
        print(f"modalscope: error: {where}{err.strerror or err}; finished work is kept: fix this and "
              f"rerun the same command to continue", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(interrupted_message(args, stop), file=sys.stderr)
        return 130
    finally:
        provenance.COMMAND = None
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def interrupted_message(args: argparse.Namespace, stop: KeyboardInterrupt) -> str:
    """Ctrl-C: what is kept and the command that continues from the stage that stopped
    (`study.Interrupted` names it inside `run`; a stage command is its own stage)."""
    stage = getattr(stop, "stage", None) or {"run": "extract", "demo": "extract"}.get(args.command, args.command)
    out = getattr(stop, "out_dir", None) or getattr(args, "out", None) or getattr(args, "dir", None)
    whole = args.command in ("run", "demo")
    if stage == "extract":
        from modalscope.store import STORE

        if out is None or not (Path(out) / STORE).exists():  # nothing recorded: --resume would find nothing
            return "modalscope: interrupted before any pair was recorded; rerun the same command to start"
        return (f"modalscope: interrupted; finished pairs are kept: rerun `modalscope extract --out {out} --resume` "
                "(or the same command) to continue")
    if out is None or stage in ("init", "export"):
        return "modalscope: interrupted; nothing half-written is left: rerun the same command"
    if stage == "ablate":
        return (f"modalscope: interrupted; the readouts so far are kept in {out}/ablation/progress.npz: "
                "rerun the same command to continue")
    if stage == "analyze":
        then = f" then `modalscope plot {out}`" if whole else ""
        return (f"modalscope: interrupted during the analysis; every recorded pair is kept: rerun "
                f"`modalscope analyze {out}`{then} (or the same command) to write the tables")
    if stage == "plot":
        return (f"modalscope: interrupted while drawing the figures; the tables are kept: rerun "
                f"`modalscope plot {out}` (or the same command) to draw them")
    return (f"modalscope: interrupted while writing the report; the tables and figures are kept: rerun "
            f"`modalscope report {out}` to write it")


def _dispatch(args: argparse.Namespace, started: float) -> int:
    """The command, holding its study folder's lock (lock.py) when it writes into one: a second
    writer is refused in one line naming the process that holds the folder."""
    from modalscope import provenance
    from modalscope.lock import study_lock

    folder = written_folder(args)
    if folder is None:
        COMMANDS[args.command](args, started)
        return 0
    with study_lock(folder, provenance.COMMAND or f"modalscope {args.command}"):
        COMMANDS[args.command](args, started)
    return 0


# Commands that write into their study folder: --out DIR for these, the positional DIR for the rest.
OUT_FOLDER = ("demo", "run", "extract")


def written_folder(args: argparse.Namespace) -> Path | None:
    """The study folder the command writes into (None for init and plan, and for `neuron --out
    FILE`, which only reads it), refused in one line when it names something that is not a folder
    (before any model loads)."""
    if args.command in ("init", "plan") or (args.command == "neuron" and args.out is not None):
        return None
    option = "--out" if args.command in OUT_FOLDER else "DIR"
    folder = getattr(args, "out" if args.command in OUT_FOLDER else "dir", None)
    if folder is None and getattr(args, "config", None) is not None:
        from modalscope.study_file import read

        folder = read(args.config).get("out_dir")
        option = f"{args.config}: [output] out"
    if folder is None:
        return None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: a file, not a folder; give a study folder (it is made if missing)")
    return folder


def _cmd_demo(args: argparse.Namespace, started: float) -> None:
    """The whole study on the embedded tiny LLaVA and synthetic COCO set."""
    from modalscope import study
    from modalscope.demo import demo_config

    keys = ("num_pairs", "batch_size", "device", "seed", "sites", "tokens", "contrast", "fdr", "n_perm",
            "n_boot", "outlier_factor", "alignment_stat", "stat", "long_tables", "csv", "png", "primary")
    overrides = {k: getattr(args, k, None) for k in keys if getattr(args, k, None) is not None}
    StudyConfig(out_dir=args.out, **overrides).validate()  # bounds first: the assets are written next
    config = demo_config(args.out, progress=not args.quiet, **overrides)
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
    out = shrink(args.source, args.out, revision=args.revision, seed=args.seed)
    print(f"wrote {out}: random weights, {args.source}'s tokenizer, processor and template; try a study with "
          f"`modalscope run --model {out} ...` (its report says random weights)")


def _cmd_run(args: argparse.Namespace, started: float) -> None:
    """The whole study."""
    from modalscope import study

    config = _config(args, args.out)
    _report(study.run_study(config, force=args.force), started, quiet=not config.progress)


def _cmd_plan(args: argparse.Namespace, started: float) -> None:
    """The study's budget, from the model's config alone."""
    from modalscope.budget import plan_lines

    fields = {k: getattr(args, k) for k in ("model", "revision", "base_model", "batch_size", "sort_window",
                                            "sites", "tokens", "stats", "quantile", "store_dtype", "conditions")}
    if args.num_pairs < 1:
        raise ValueError(f"--num-pairs {args.num_pairs}: a study needs at least 1 pair (a t-test, 2)")
    config = StudyConfig(out_dir=args.out or Path("."), num_pairs=args.num_pairs, **fields)
    config.check_batching()
    print("\n".join(plan_lines(config, args.num_pairs)))


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
    if int(os.environ.get("RANK", 0)) == 0:
        study.write_study_file(config, study.EXTRACT_KEEPS)  # the model and data passed their checks
        from modalscope.provenance import record_stage

        record_stage(config.out_dir, "extract", time.perf_counter() - clock)
        print(f"{store.n_done} of {store.attrs['n_inputs']} pairs recorded in {store.path}")
        for note in data_notes(config.out_dir):
            print(note)


def _cmd_analyze(args: argparse.Namespace, started: float) -> None:
    """Tables from the store."""
    from modalscope import study

    config = _config(args, args.dir)
    config.check_statistics()  # before the store is read (with --config, the file's values were checked)
    manifest = study.analysis_manifest(config)
    partial = study.extraction_note(config.out_dir)
    if partial:
        print(partial)
    from modalscope.store import STORE, unchecked_note

    unchecked = unchecked_note(config.out_dir / STORE)
    if unchecked:
        print(unchecked)
    paths, skipped = study.analyze_stage(config, manifest)
    for path in paths:
        print(f"  table   {path}")
    if skipped:
        print(skipped)
    from modalscope.figures.export import owned_figure_files

    drawn = (config.out_dir / "report.html").exists() or bool(owned_figure_files(config.out_dir / "figures"))
    if drawn:
        print(f"figures and report.html show the previous analysis: `modalscope plot {config.out_dir}` "
              "redraws them")


def _cmd_plot(args: argparse.Namespace, started: float) -> None:
    """Figures and the report from the tables."""
    from modalscope import study

    out, png, stat = args.dir, args.png, args.stat
    if args.config is not None:
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

    print(f"  report  {study.report_stage(args.dir, args.stat)}")


def _cmd_export(args: argparse.Namespace, started: float) -> None:
    """Tables 1-2 for chosen layers and neurons."""
    from modalscope import study

    for path in study.export_stage(args.dir, args.sites, args.layers, args.neurons, args.name, args.csv):
        print(f"  table   {path}")


def _cmd_neuron(args: argparse.Namespace, started: float) -> None:
    """One neuron's card from the tables (and the store for more pairs than they hold)."""
    from modalscope.cards.card import card_page, neuron_card
    from modalscope.cards.thumbnails import Thumbnails
    from modalscope.figures.export import atomic_write

    if args.top is not None and args.top > MAX_TOP:
        raise ValueError(f"--top {args.top}: a card shows at most {MAX_TOP:,} pairs per stream")
    from modalscope.study import check_manifest

    check_manifest(args.dir)  # the card's captions and images are the manifest's rows
    card = neuron_card(args.dir, args.site, args.layer, args.neuron, args.top)
    if args.out is None:  # the site becomes the file name: a plain name, and the file inside DIR
        from modalscope.paths import check_inside, is_safe_name

        if not is_safe_name(card.site):
            raise ValueError(f"--site {card.site!r}: not a plain site name; give --out FILE")
        out = check_inside(Path(args.dir) / "cards" / f"{card.site}_layer{card.layer}_neuron{card.neuron}.html",
                           args.dir)
    else:
        out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"  card    {atomic_write(out, card_page(card, Thumbnails()).encode('utf-8'))}")


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


def _stored_settings(out: Path, model: str | None, resume: bool) -> dict[str, object]:
    """`extract --resume` (or without --model) continues with what DIR's store recorded."""
    if model and not resume:
        return {}
    from modalscope.store import STORE, ActivationStore

    path = out / STORE
    if not path.exists():
        raise ValueError(f"{path}: nothing to resume; give --model and data to start a study")
    attrs = ActivationStore.read(path).attrs
    if not resume:
        return {"model": attrs["model"]}
    conditions = tuple(c for c in ("text", "image", "image_text") if c in attrs["conditions"])
    base = attrs.get("base_model") or {}
    return {"model": attrs["model"], "revision": attrs.get("revision"), "dtype": attrs["dtype"],
            "base_model": base.get("model"), "base_revision": base.get("revision"),
            "quantization": attrs.get("quantization"),
            "sites": tuple(attrs["sites"]), "tokens": attrs["tokens"], "stats": tuple(attrs["stats"]),
            "conditions": conditions, "quantile": attrs["quantile"],
            "batch_size": int(attrs["batch_size"]), "sort_window": attrs.get("sort_window")}
