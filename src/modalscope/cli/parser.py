"""Every command's parser (`build_parser`): which options each command takes."""

from __future__ import annotations

import argparse
from pathlib import Path

from modalscope.config import ALL_STATS
from modalscope.models.adapter import SITES
from modalscope.cli.options import DESCRIPTION, FORCE_HELP, MODEL_HELP, _Parser, _index_list, _batch_size, _folder_type, _sites, SEED_HELP, SITES_HELP, TOKENS_HELP, CONTRAST_HELP, _model_options, _data_options, _recording_options, _analysis_options, _output_options, _folder
from modalscope.cli.options import _control_option


def _command(sub, name: str, text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")


def _demo_command(sub) -> None:
    """demo: the options of the embedded study (its model and data are built in)."""
    p = _command(sub, "demo", "whole study on the embedded VLM trained on drawn shapes (or the tiny random LLaVA)")
    p.add_argument("--out", type=_folder_type("--out"), required=True, metavar="DIR",
                   help="study folder; the assets are built in DIR/assets (required)")
    p.add_argument("--model", choices=["trained", "tiny"], default="trained",
                   help="trained: a small VLM trained here on drawn shapes by LLaVA's recipe (frozen "
                        "SmolLM2-135M-Instruct; its LM is dequantized once, ~30 s); tiny: a random-weight "
                        "tiny LLaVA on the basic shapes set (seconds; says nothing about trained models); the trained "
                        "model is studied beside its random twin (--control none skips it) "
                        "(default: trained)")
    p.add_argument("--num-pairs", type=int, metavar="N", help="pairs to use (default: all 240)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="pairs per forward (default: 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--sites", type=_sites, default=SITES, metavar="LIST", help=SITES_HELP)
    p.add_argument("--tokens", choices=["content", "all"], default="content", help=TOKENS_HELP)
    _control_option(p)
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
                   help="where to write it (a folder: FOLDER/study.toml); an existing file is never overwritten "
                        "(default: ./study.toml)")

    p = _command(sub, "run", "whole study: manifest, extract, analyze, plot, report")
    _folder(p, config_given, option=True)
    _model_options(p, MODEL_HELP + " (required, unless --config gives [model] model)", not config_given)
    _data_options(p)
    _recording_options(p)
    _control_option(p)
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
    p.add_argument("--layers", type=int, default=4, metavar="N",
                   help="decoder layers of the checkpoint: 3 or more give a layer trend (default: 4)")

    p = _command(sub, "extract", "record activations into DIR/activations.zarr (continues a stopped run)")
    _folder(p, config_given, option=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the stopped extraction in DIR with the settings it recorded (model, "
                        "revision, dtype, sites, tokens, reductions, conditions, batch size) (default: off)")
    _model_options(p, MODEL_HELP + " (default: the model DIR recorded, when it holds a study)", False)
    _data_options(p)
    _recording_options(p)
    _control_option(p)
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
