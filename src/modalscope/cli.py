"""Command line: parses arguments, builds a StudyConfig, calls the study functions.

Thin on purpose: everything here is also reachable from Python (`modalscope.run_study`).
User errors (bad data, bad settings, a store from another study) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

from modalscope.config import ALL_STATS, CONDITIONS, StudyConfig
from modalscope.data.pairs import DataError
from modalscope.models.adapter import SITES
from modalscope.store import StoreMismatch

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
               "quantization", "batch_size", "sort_window", "workers", "captions", "images", "jsonl",
               "num_pairs", "seed", "sites", "tokens", "stats", "quantile", "conditions", "contrast", "fdr",
               "n_perm", "n_boot", "outlier_factor", "stat", "long_tables", "csv", "png")
CONFIG_HELP = ("study file (TOML; `modalscope init` writes a starter, every run writes DIR/study.toml): "
               "every option under [data], [model], [conditions], [reductions], [statistics], [output], "
               "keys named like the flags (num_pairs, permutations, ...); a flag given here beats the file")


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

    @staticmethod
    def _unrecognized(extras: list[str], parser: argparse.ArgumentParser) -> str:
        from modalscope.study_file import suggest_option

        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        unknown = next((e for e in extras if e.startswith("-")), None)
        if unknown is None:
            return f"unrecognized arguments: {' '.join(extras)}"
        name = unknown.split("=", 1)[0]
        close = suggest_option(name, options)
        hint = f"did you mean {close}?" if close else f"see `{parser.prog} --help`"
        return f"unrecognized option {name}; {hint}"

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"modalscope: error: {message}\n")


def _csv_ints(text: str) -> list[int]:
    """'0,3-5' -> [0, 3, 4, 5]."""
    values: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        values.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return values


def _batch_size(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _sites(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _study_options(p: argparse.ArgumentParser, model_required: bool) -> None:
    g = p.add_argument_group("model")
    p.add_argument("--config", type=Path, metavar="STUDY.TOML", help=CONFIG_HELP)
    g.add_argument("--model", required=model_required,
                   help="hub id or local folder of a supported model (README: Supported models), "
                        "e.g. llava-hf/llava-1.5-7b-hf")
    g.add_argument("--revision", help="hub revision (branch, tag or commit) to load")
    g.add_argument("--base-model", metavar="MODEL",
                   help="the language model the VLM was trained from (e.g. lmsys/vicuna-7b-v1.5 for "
                        "LLaVA-1.5-7B): also run the text inputs through it, with the same token ids "
                        "(stream text_base; contrast text - text_base)")
    g.add_argument("--base-revision", help="hub revision of --base-model")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model weights dtype; reductions accumulate in float32 regardless")
    g.add_argument("--device-map", choices=["auto"],
                   help="auto: spread the layers over all visible GPUs (models bigger than one GPU)")
    g.add_argument("--quantization", choices=["8bit", "4bit"],
                   help="load weights in 8 or 4 bits (needs `pip install 'modalscope[quant]'` and a GPU)")
    g.add_argument("--batch-size", type=_batch_size, default=16, metavar="N",
                   help="pairs per forward (default 16); auto: start at 64 on a GPU and halve on out-of-memory")
    g.add_argument("--sort-window", type=int, metavar="N",
                   help="batch pairs by caption length within windows of N batches, to cut padding; "
                        "records keep manifest order (default: up to 8 within 1 GiB of host memory; 1: off)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="processes decoding images and preparing batches (default 0 on CPU, 4 on GPU)")
    g = p.add_argument_group("data (first run in DIR only; later runs reuse DIR/manifest.parquet)")
    g.add_argument("--captions", type=Path, help="COCO captions JSON, e.g. captions_val2017.json")
    g.add_argument("--images", type=Path, help="COCO image folder, e.g. val2017/")
    g.add_argument("--jsonl", type=Path, help='JSONL of {"image": path, "caption": text, "id": ...}')
    g.add_argument("--num-pairs", type=int, metavar="N", help="use the first N usable pairs of the shuffled list (unusable ones are "
                        "listed in DIR/skipped.parquet; fewer than N: all are used)")
    g.add_argument("--seed", type=int, default=0, help="seed of the one-time shuffle (default 0)")
    g = p.add_argument_group("recording")
    g.add_argument("--sites", type=_sites, default=SITES, metavar="LIST",
                   help="comma list of residual (decoder layer output) and mlp (down_proj input); default both")
    g.add_argument("--tokens", choices=["content", "all"], default="content",
                   help="reduce over caption/image tokens only (content, default) or every token but BOS")
    g.add_argument("--stats", type=_sites, default=ALL_STATS, metavar="LIST",
                   help="reductions over tokens to record (max and mean always): "
                        "matched_max (length-matched max), frac_active, quantile; default all")
    g.add_argument("--quantile", type=float, default=0.9, help="quantile of the `quantile` reduction (0.9)")
    g.add_argument("--conditions", type=_sites, default=CONDITIONS, metavar="LIST",
                   help="forwards per pair: text (caption alone) and image (image alone) always; "
                        "image_text (both in one turn) by default")
    _analysis_options(p)
    _output_options(p)


def _analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("statistics")
    g.add_argument("--contrast", default="text-image", metavar="A-B",
                   help="Δ = A - B between recorded streams: text, image, image_text, "
                        "image_text_caption, image_text_image (default text-image, the report's)")
    g.add_argument("--fdr", choices=["bh", "by"], default="bh",
                   help="false discovery rate control over a site's neurons: Benjamini-Hochberg "
                        "(default) or Benjamini-Yekutieli (any dependence)")
    g.add_argument("--permutations", dest="n_perm", type=int, default=1000, metavar="N",
                   help="sign-flip permutations for the null (default 1000, at least 200)")
    g.add_argument("--bootstrap", dest="n_boot", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of inputs for the trend's CI (default 1000)")
    g.add_argument("--outlier-factor", type=float, default=100.0, metavar="F",
                   help="flag neurons whose max |activation| exceeds this times the layer median")


def _output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--long-tables", choices=["auto", "always", "never"], default="auto",
                   help="write Tables 1-2 (one row per input x layer x neuron); auto: when <= 50M rows")
    g.add_argument("--csv", action="store_true", help="also write CSV copies of the tables")
    g.add_argument("--no-png", dest="png", action="store_false",
                   help="skip PNG and SVG copies of figures (they need Chrome/Chromium)")
    g.add_argument("--stat", default="max", choices=ALL_STATS,
                   help="reduction the headline figures (figure1/2_{site}.html) lead with; "
                        "the others get figure*_{site}_{stat}.html (default max)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser(config_given: bool = False) -> argparse.ArgumentParser:
    """The CLI. With `config_given` (a --config on the command line) the study folder and
    --model may come from the file, so argparse does not require them."""
    parser = _Parser(
        prog="modalscope", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices
    out_help = "study folder DIR (with --config, default: its [output] out)"

    p = sub.add_parser("demo", help="whole study on the embedded tiny LLaVA and synthetic COCO set")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="study folder (assets are built in DIR/assets)")
    p.add_argument("--num-pairs", type=int, help="pairs to use (default: all 240)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sites", type=_sites, default=SITES)
    p.add_argument("--tokens", choices=["content", "all"], default="content")
    _analysis_options(p)
    _output_options(p)

    p = sub.add_parser("init", help="write a commented starter study.toml (LLaVA-1.5-7B on COCO val2017)")
    p.add_argument("path", type=Path, nargs="?", default=Path("study.toml"), metavar="PATH",
                   help="where to write it (default ./study.toml; an existing file is never overwritten)")

    p = sub.add_parser("run", help="whole study: manifest, extract, analyze, plot, report")
    p.add_argument("--out", type=Path, required=not config_given, metavar="DIR", help=out_help)
    _study_options(p, model_required=not config_given)

    p = sub.add_parser("extract", help="record activations into DIR/activations.zarr (continues a stopped run)")
    p.add_argument("--out", type=Path, required=not config_given, metavar="DIR", help=out_help)
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped extraction in DIR with the settings it recorded "
                        "(model, revision, dtype, sites, tokens, reductions, conditions, batch size)")
    _study_options(p, model_required=False)

    for name, text in [("analyze", "statistics and tables from DIR/activations.zarr"),
                       ("plot", "figures (HTML, PNG, SVG) and DIR/report.html from DIR/tables")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("dir", type=Path, nargs="?" if config_given else None, help=out_help)
        p.add_argument("--config", type=Path, metavar="STUDY.TOML", help=CONFIG_HELP)
        if name == "analyze":
            _analysis_options(p)
        _output_options(p)

    p = sub.add_parser("report", help="DIR/report.html from DIR/tables: the study on one offline page")
    p.add_argument("dir", type=Path, help="study folder DIR")
    p.add_argument("--stat", choices=ALL_STATS,
                   help="reduction the report leads with (default: the study's --stat, else max)")

    p = sub.add_parser("export", help="Tables 1-2 for chosen layers/neurons (for large studies)")
    p.add_argument("dir", type=Path, help="study folder DIR")
    p.add_argument("--layers", type=_csv_ints, help="e.g. 0,10-12 (default all)")
    p.add_argument("--neurons", type=_csv_ints, help="e.g. 128,4000-4010 (default all)")
    p.add_argument("--sites", type=_sites, help="default: all recorded sites")
    p.add_argument("--name", default="_export", help="suffix of the written files (default _export)")
    p.add_argument("--csv", action="store_true", help="also write CSV copies")
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


def _report(result, started: float) -> None:
    if int(os.environ.get("RANK", 0)) != 0:
        return  # under torchrun, rank 0 speaks for the study
    print(f"study written to {result.out_dir} in {time.perf_counter() - started:.1f} s")
    for path in result.tables:
        print(f"  table   {path}")
    for path in result.figures:
        print(f"  figure  {path}")
    if result.report is not None:
        print(f"  report  {result.report}")
    for message in result.messages:
        print(message)


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
    started = time.perf_counter()
    try:
        return _dispatch(args, started)
    except (DataError, StoreMismatch, ValueError, FileNotFoundError) as err:
        print(f"modalscope: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only or vanished output folder: the store stays consistent
        if err.errno not in WRITE_ERRORS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"modalscope: error: {where}{err.strerror or err}; finished work is kept: fix this and "
              f"rerun the same command to continue", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None) or getattr(args, "dir", None)
        how = f"`modalscope extract --out {out} --resume` (or the same command)" if out else "the same command"
        print(f"modalscope: interrupted; finished pairs are kept: rerun {how} to continue", file=sys.stderr)
        return 130
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _dispatch(args: argparse.Namespace, started: float) -> int:
    from modalscope import study
    from modalscope.data.manifest import data_notes

    if args.command == "demo":
        from modalscope.demo import demo_config

        keys = ("num_pairs", "batch_size", "device", "seed", "sites", "tokens", "contrast", "fdr", "n_perm",
                "n_boot", "outlier_factor", "stat", "long_tables", "csv", "png")
        overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
        config = demo_config(args.out, progress=not args.quiet, **overrides)
        _report(study.run_study(config), started)
    elif args.command == "init":
        from modalscope.study_file import write_starter

        path = write_starter(args.path)
        print(f"wrote {path}: check the data paths in [data], then `modalscope run --config {path}`")
    elif args.command == "run":
        _report(study.run_study(_config(args, args.out)), started)
    elif args.command == "extract":
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
        store = study.extract_stage(config)
        if int(os.environ.get("RANK", 0)) == 0:
            study.write_study_file(config)  # the model and data passed their checks
            print(f"{store.n_done} of {store.attrs['n_inputs']} pairs recorded in {store.path}")
            for note in data_notes(config.out_dir):
                print(note)
    elif args.command == "analyze":
        config = _config(args, args.dir)
        manifest = study.prepare_manifest(config)
        paths, skipped = study.analyze_stage(config, manifest)
        for path in paths:
            print(f"  table   {path}")
        if skipped:
            print(skipped)
    elif args.command == "plot":
        out, png, stat = args.dir, args.png, args.stat
        if args.config is not None:
            config = _config(args, args.dir)
            out, png, stat = config.out_dir, config.png, config.stat
        paths, message = study.plot_stage(out, png, stat)
        for path in paths:
            print(f"  figure  {path}")
        print(f"  report  {study.report_stage(out, stat)}")  # its figure links follow
        if message:
            print(message)
    elif args.command == "report":
        print(f"  report  {study.report_stage(args.dir, args.stat)}")
    elif args.command == "export":
        for path in study.export_stage(args.dir, args.sites, args.layers, args.neurons, args.name, args.csv):
            print(f"  table   {path}")
    return 0


def _stored_settings(out: Path, model: str | None, resume: bool) -> dict[str, object]:
    """`extract --resume` (or without --model) continues with what DIR's store recorded."""
    if model and not resume:
        return {}
    from modalscope.store import STORE, ActivationStore

    path = out / STORE
    if not path.exists():
        raise ValueError(f"{path}: nothing to resume; give --model and data to start a study")
    attrs = ActivationStore.open(path).attrs
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
