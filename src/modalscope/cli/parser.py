"""Every command's parser (`build_parser`): which options each command takes."""

from __future__ import annotations

import argparse
from pathlib import Path

from modalscope.cli.options import (DESCRIPTION, FORCE_HELP, _Parser, _folder, _folder_type, _index_list, _sites,
                                    add_settings, config_option)


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
    add_settings(p, "demo")


def _plan_command(sub, config_given: bool) -> None:
    """plan: the model (its config alone), the study's size and what it records."""
    p = _command(sub, "plan", "what a study will cost (store size, files, free disk) from the model's config alone")
    p.add_argument("--out", type=_folder_type("--out"), metavar="DIR",
                   help="study folder whose free disk to check (default: none, or --config's [output] out)")
    config_option(p)
    add_settings(p, "plan", config_given)


def _export_command(sub, config_given: bool) -> None:
    """export: which layers, neurons and sites of Tables 1-2 to write."""
    p = _command(sub, "export", "Tables 1-2 for chosen layers/neurons (for large studies)")
    _folder(p, config_given, option=False)
    p.add_argument("--layers", type=_index_list("--layers", "layer"), metavar="LIST",
                   help="decoder layers, e.g. 0,10-12 (default: all)")
    p.add_argument("--neurons", type=_index_list("--neurons", "neuron"), metavar="LIST",
                   help="neurons of each site, e.g. 128,4000-4010 (default: all)")
    p.add_argument("--sites", type=_sites, metavar="LIST", help="comma list of sites (default: all recorded)")
    p.add_argument("--name", default="_export", help="suffix of the written files (default: _export)")
    p.add_argument("--csv", action="store_true", default=None,
                   help="also write CSV copies (default: off, or --config's [output] csv)")


def _neuron_command(sub, config_given: bool) -> None:
    """neuron: which neuron's card to write, where, and how many pairs per stream."""
    p = _command(sub, "neuron", "one neuron's card (offline HTML): the captions and images that excite it most")
    _folder(p, config_given, option=False)
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
    add_settings(p, "run", config_given)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    _plan_command(sub, config_given)

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
    add_settings(p, "extract", config_given)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)

    for name, text in (("analyze", "statistics and tables from DIR/activations.zarr into DIR/tables"),
                       ("plot", "figures (HTML, PNG, SVG) and DIR/report.html from DIR/tables"),
                       ("report", "DIR/report.html from DIR/tables: the study on one offline page")):
        p = _command(sub, name, text)
        _folder(p, config_given, option=False)
        add_settings(p, name, config_given)

    _export_command(sub, config_given)
    _neuron_command(sub, config_given)
    from modalscope.ablation.cli import add_ablate_command  # its options live beside it

    add_ablate_command(sub, _command, _folder_type)
    return parser
