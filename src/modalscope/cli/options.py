"""The command line's option types, help texts and option groups, shared by every command's parser."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from modalscope.config import ALL_STATS, DEFAULT_CONDITIONS, DEFAULT_STATS
from modalscope.models.adapter import SITES
from modalscope.store_dtypes import STORE_DTYPES


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
               "primary", "control")


FORCE_HELP = ("start even when the free disk under DIR looks too small for the store's estimate "
              "(`modalscope plan` prints it) (default: off)")


CONFIG_HELP = ("study file (TOML; `modalscope init` writes a starter, every run writes DIR/study.toml): "
               "every option under [data], [model], [conditions], [reductions], [statistics], [output] "
               "(and [ablation]: `ablate` after the analysis), "
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
        close = suggest_option(name, options)
        if owners:
            positional = [a.metavar for a in parser._actions if not a.option_strings and a.metavar
                          and str(a.metavar).isupper()]
            if name == "--out" and positional:  # analyze --out DIR: the study folder is positional
                hint = f"{positional[0]} is positional: `{parser.prog} {positional[0]}`"
            else:  # only a near spelling (`neuron --layers` -> --layer), not any option of this command
                near = difflib.get_close_matches(name, options, n=1, cutoff=0.8)
                hint = f"did you mean {near[0]}?" if near else f"see `{parser.prog} --help`"
            return f"{name} is not an option of {parser.prog.split()[-1]} (it is one of {', '.join(owners)}); {hint}"
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
                   help='instead of COCO: JSONL of {"image": path, "caption": text, "id": ...}, one per line; '
                        "relative image paths are read from the JSONL file's folder (default: none)")
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


CONTROL_HELP = ("random-twin: also run the same inputs (pairs, batches, token scopes) through a re-initialised "
                "copy of the model (same config, the model's own initialisation, seeded from --seed) into "
                "DIR/control/random-twin, and show its results beside every layer trend, cross-modal share, "
                "alignment curve and concept count; a rerun keeps a finished twin (default: none)")


def _control_option(p: argparse.ArgumentParser) -> None:
    """--control: the untrained twin (twin.py), for the commands that record (run, extract, demo)."""
    p.add_argument("--control", choices=["none", "random-twin"], default=None, help=CONTROL_HELP)


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
                       help="skip PNG and SVG copies of the figures, and remove those of an earlier plot in "
                            "DIR/figures (default: write them when Chrome/Chromium is found)")
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
