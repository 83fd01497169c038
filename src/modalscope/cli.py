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
demo-out/report.html), then
`modalscope run --model llava-hf/llava-1.5-7b-hf --captions captions_val2017.json
--images val2017/ --num-pairs 5000 --out study/`.
"""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modalscope", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("run", help="whole study: manifest, extract, analyze, plot, report")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="study folder DIR")
    _study_options(p, model_required=True)

    p = sub.add_parser("extract", help="record activations into DIR/activations.zarr (continues a stopped run)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="study folder DIR")
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped extraction in DIR with the settings it recorded "
                        "(model, revision, dtype, sites, tokens, reductions, conditions, batch size)")
    _study_options(p, model_required=False)

    for name, text in [("analyze", "statistics and tables from DIR/activations.zarr"),
                       ("plot", "figures (HTML, PNG, SVG) and DIR/report.html from DIR/tables")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("dir", type=Path, help="study folder DIR")
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


def _config(args: argparse.Namespace, out_dir: Path, **extra: object) -> StudyConfig:
    fields = {k: getattr(args, k) for k in (
        "model", "revision", "base_model", "base_revision", "device", "dtype", "device_map", "quantization", "batch_size", "sort_window", "workers", "captions", "images", "jsonl",
        "num_pairs", "seed", "sites", "tokens", "stats", "quantile", "conditions", "contrast", "fdr", "n_perm", "n_boot",
        "outlier_factor", "stat", "long_tables", "csv", "png") if hasattr(args, k)}
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    elif args.command == "run":
        _report(study.run_study(_config(args, args.out)), started)
    elif args.command == "extract":
        config = _config(args, args.out, **_stored_settings(args))
        config.validate()
        store = study.extract_stage(config)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"{store.n_done} of {store.attrs['n_inputs']} pairs recorded in {store.path}")
            for note in data_notes(args.out):
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
        paths, message = study.plot_stage(args.dir, args.png, args.stat)
        for path in paths:
            print(f"  figure  {path}")
        print(f"  report  {study.report_stage(args.dir, args.stat)}")  # its figure links follow
        if message:
            print(message)
    elif args.command == "report":
        print(f"  report  {study.report_stage(args.dir, args.stat)}")
    elif args.command == "export":
        for path in study.export_stage(args.dir, args.sites, args.layers, args.neurons, args.name, args.csv):
            print(f"  table   {path}")
    return 0


def _stored_settings(args: argparse.Namespace) -> dict[str, object]:
    """`extract --resume` (or without --model) continues with what DIR's store recorded."""
    if args.model and not args.resume:
        return {}
    from modalscope.store import STORE, ActivationStore

    path = args.out / STORE
    if not path.exists():
        raise ValueError(f"{path}: nothing to resume; give --model and data to start a study")
    attrs = ActivationStore.open(path).attrs
    if not args.resume:
        return {"model": attrs["model"]}
    conditions = tuple(c for c in ("text", "image", "image_text") if c in attrs["conditions"])
    base = attrs.get("base_model") or {}
    return {"model": attrs["model"], "revision": attrs.get("revision"), "dtype": attrs["dtype"],
            "base_model": base.get("model"), "base_revision": base.get("revision"),
            "quantization": attrs.get("quantization"),
            "sites": tuple(attrs["sites"]), "tokens": attrs["tokens"], "stats": tuple(attrs["stats"]),
            "conditions": conditions, "quantile": attrs["quantile"],
            "batch_size": int(attrs["batch_size"]), "sort_window": attrs.get("sort_window")}
