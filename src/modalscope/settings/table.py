"""The table of settings: one row per StudyConfig field (see settings/__init__.py for what is
derived from it). Rows are in the order of each command's --help; within a section, in the order
of the study file's keys. A flag's help ends with "(default: ...)", made from `shown_default` or
the field's default."""

from __future__ import annotations

from modalscope.record.reductions import ALL_STATS
from modalscope.settings import checks
from modalscope.settings.setting import Setting as S
from modalscope.store_dtypes import STORE_DTYPES

# The study file's sections, in the file's order (their keys follow the table's order).
SECTIONS = ("data", "model", "conditions", "reductions", "statistics", "output", "ablation")

RECORDS = ("run", "extract")  # the commands that record: the model, data and recording settings
STUDY = ("run", "extract", "plan")  # and `plan`, which sizes the store from the model's config
MODEL_HELP = "hub id or local folder of a supported model (README: Supported models), e.g. llava-hf/llava-1.5-7b-hf"
PAIRS = "pairs per forward (default: 16)"

SETTINGS: tuple[S, ...] = (
    # model ---------------------------------------------------------------------------------
    S("model", "model", "str", MODEL_HELP, STUDY, variants={
        "run": {"help": MODEL_HELP + " (required, unless --config gives [model] model)", "required": True},
        "extract": {"help": MODEL_HELP + " (default: the model DIR recorded, when it holds a study)"},
        "plan": {"help": MODEL_HELP + " (required, unless --config gives [model] model; only its config is read)",
                 "required": True}}),
    S("revision", "model", "str", "hub revision (branch, tag or commit) of --model to load", STUDY,
      shown_default="main, the latest", example="main"),
    S("base_model", "model", "str", "the language model the VLM was trained from (e.g. lmsys/vicuna-7b-v1.5 for "
      "LLaVA-1.5-7B): also run the text inputs through it, with the same token ids (stream text_base; contrast "
      "text - text_base)", STUDY, metavar="MODEL", example="lmsys/vicuna-7b-v1.5"),
    S("base_revision", "model", "str", "hub revision of --base-model", RECORDS, shown_default="main, the latest",
      example="main"),
    S("device", "model", "str", "cpu, cuda, cuda:1, ...; auto: cuda if available", (*RECORDS, "demo"),
      variants={"demo": {"help": "cpu, cuda or auto (default: cpu)"}}),
    S("dtype", "model", "str", "model weights dtype; reductions accumulate in float32 regardless", RECORDS,
      choices=("float32", "float16", "bfloat16")),
    S("device_map", "model", "str", "auto: spread the layers over all visible GPUs, for models bigger than one GPU",
      RECORDS, choices=("auto",), shown_default="one device", example="auto"),
    S("quantization", "model", "str", "load weights in 8 or 4 bits (needs `pip install 'modalscope[quant]'` and a "
      "GPU)", RECORDS, choices=("8bit", "4bit"), example="8bit"),
    S("batch_size", "model", "int_or_auto", "pairs per forward; auto: start at 64 on a GPU and halve on "
      "out-of-memory", (*STUDY, "demo"), check=checks.batch_size, metavar="N",
      variants={"demo": {"help": PAIRS, "type": int}, "plan": {"help": PAIRS}}),
    S("sort_window", "model", "int", "batch pairs by caption length within windows of N batches, to cut padding; "
      "records keep manifest order", STUDY, check=checks.sort_window, metavar="N",
      shown_default="up to 8 within 1 GiB of host memory; 1: off", example=8),
    S("workers", "model", "int", "processes decoding images and preparing batches", RECORDS, check=checks.workers,
      metavar="N", shown_default="0 on CPU, 4 on GPU", example=4),
    # data ----------------------------------------------------------------------------------
    S("captions", "data", "path", "COCO captions JSON, e.g. captions_val2017.json (its `images` list names the "
      "image files)", RECORDS, example="coco/annotations/captions_val2017.json"),
    S("images", "data", "path", "COCO image folder, e.g. val2017/", RECORDS, example="coco/val2017"),
    S("jsonl", "data", "path", 'instead of COCO: JSONL of {"image": path, "caption": text, "id": ...}, one per '
      "line; relative image paths are read from the JSONL file's folder", RECORDS, example="pairs.jsonl"),
    S("instances", "data", "path", "COCO instances JSON, e.g. instances_val2017.json: each image's object "
      "categories become its pair's concept labels (tables/concepts.parquet)", RECORDS,
      example="coco/annotations/instances_val2017.json"),
    S("num_pairs", "data", "int", "use the first N usable pairs of the shuffled list (unusable ones are listed in "
      "DIR/skipped.parquet)", (*STUDY, "demo"), check=checks.num_pairs, metavar="N",
      shown_default="all usable pairs", example=1000,
      variants={"plan": {"help": "pairs of the study (required, unless --config gives [data] num_pairs)",
                         "required": True},
                "demo": {"help": "pairs to use (default: all 240)"}}),
    S("seed", "data", "int", "seed of the study's six independent random streams (seeds.py): the shuffle of the "
      "pairs, the sign flips, the bootstrap, the layer alignment's bootstrap and its shuffled pairings, and the "
      "cross-modal null's random pairings", (*RECORDS, "demo"), check=checks.seed),
    # recording -----------------------------------------------------------------------------
    S("sites", "conditions", "list", "comma list of residual (decoder layer output) and mlp (down_proj input)",
      (*STUDY, "demo"), check=checks.sites, metavar="LIST"),
    S("tokens", "conditions", "str", "reduce over the caption/image tokens only (content) or every token but BOS "
      "(all)", (*STUDY, "demo"), choices=("content", "all")),
    S("stats", "reductions", "list", "reductions over tokens to record (max and mean always): matched_max "
      "(length-matched max), frac_active, quantile", STUDY, check=checks.stats, metavar="LIST"),
    S("quantile", "reductions", "float", "the quantile of the `quantile` reduction, between 0 and 1 (both "
      "excluded: 0 is the min, 1 the max)", STUDY, check=checks.quantile),
    S("store_dtype", "reductions", "str", "dtype of the stored reductions (computed in float32): float16 and "
      "bfloat16 halve the store (bfloat16: float32's range, 8x float16's rounding); a value beyond float16's range "
      "keeps that array float32 when found in the first window", STUDY, choices=tuple(STORE_DTYPES)),
    S("conditions", "conditions", "list", "forwards per pair: text (caption alone) and image (image alone) "
      "always; image_text (both in one turn)", STUDY, check=checks.conditions, metavar="LIST"),
    S("control", "conditions", "str", "random-twin: also run the same inputs (pairs, batches, token scopes) "
      "through a re-initialised copy of the model (same config, the model's own initialisation, seeded from "
      "--seed) into DIR/control/random-twin, and show its results beside every layer trend, cross-modal share, "
      "alignment curve and concept count; a rerun keeps a finished twin; none: no control", (*RECORDS, "demo"),
      choices=("none", "random-twin"), shown_default="none", example="random-twin"),
    # statistics ----------------------------------------------------------------------------
    S("contrast", "statistics", "str", "Δ = A - B between recorded streams: text, image, image_text, "
      "image_text_caption, image_text_image, text_base", ("run", "extract", "analyze", "demo"), metavar="A-B",
      shown_default="text-image, the report's",
      variants={"extract": {"help": "Δ = A - B between recorded streams: text, image, image_text, "
                            "image_text_caption, image_text_image, text_base; its streams must be recorded "
                            "(default: text-image, the report's)"}}),
    S("fdr", "statistics", "str", "false discovery rate control over a site's neurons: Benjamini-Hochberg (bh) "
      "or Benjamini-Yekutieli (by, any dependence)", ("run", "analyze", "demo"), choices=("bh", "by")),
    S("primary", "statistics", "str", "the primary family of tests, corrected on its own (Table 3 q_hier = its "
      "q_value); every other site x reduction x contrast x test by Benjamini-Bogomolov (q_hier)",
      ("run", "analyze", "demo"), metavar="SITE:REDUCTION",
      shown_default="mlp:matched_max, else the recorded site / max", example="mlp:matched_max"),
    S("n_perm", "statistics", "int", "sign-flip permutations for the null, at least 200", ("run", "analyze", "demo"),
      key="permutations", check=checks.resamples("--permutations"), metavar="N"),
    S("n_boot", "statistics", "int", "bootstrap resamples of inputs for the trend's CI, at least 200",
      ("run", "analyze", "demo"), key="bootstrap", check=checks.resamples("--bootstrap"), metavar="N"),
    S("outlier_factor", "statistics", "float", "flag massive neurons: max |activation| at least F times the layer "
      "median and more than 5 robust SDs of log max |activation| above the layer's median; Table 3 `outlier`",
      ("run", "analyze", "demo"), check=checks.outlier_factor, metavar="F", shown_default="10"),
    S("alignment_stat", "statistics", "str", "reduction whose per-pair population vectors the layer alignment "
      "(CKA, mutual k-NN, retrieval; tables/alignment.parquet) compares between the contrasted conditions",
      ("run", "analyze", "demo"), choices=ALL_STATS),
    # output --------------------------------------------------------------------------------
    # the study folder: `--out DIR` or the positional DIR (cli/options.py `_folder`), not a plain flag
    S("out_dir", "output", "path", "the study folder", key="out", flag="--out"),
    S("long_tables", "output", "str", "write Tables 1-2 (one row per input x layer x neuron): auto (when <= 50M "
      "rows), always or never; a rerun that leaves them out removes old ones", ("run", "analyze", "demo"),
      choices=("auto", "always", "never")),
    S("csv", "output", "bool", "also write CSV copies of the tables; a rerun without it removes old copies",
      ("run", "analyze", "demo"), action="store_true", shown_default="off"),
    S("png", "output", "bool", "skip PNG and SVG copies of the figures, and remove those of an earlier plot in "
      "DIR/figures", ("run", "plot", "demo"), flag="--no-png", action="store_false",
      shown_default="write them when Chrome/Chromium is found",
      note="PNG and SVG copies of the figures (they need Chrome/Chromium)"),
    S("stat", "output", "str", "reduction the headline figures (figure1/2_{site}.html) lead with; the others get "
      "figure*_{site}_{stat}.html", ("run", "plot", "report", "demo"), choices=ALL_STATS,
      variants={"report": {"help": "reduction the report leads with (default: the study's --stat, else max)"}}),
    S("progress", "output", "bool", "no progress bars, and a whole study lists the report, not each table and "
      "figure", ("run", "extract", "demo"), flag="--quiet", action="store_false", shown_default="show them",
      note="progress bars"),
    # ablation: `modalscope ablate` after the analysis (issue 26); keys named like its options, whose
    # help, default and check ablation/cli.py takes from these rows (`ablate` keeps its own parser:
    # its options are not StudyConfig fields, and its defaults are the rows' own, not None)
    S("ablation", "ablation", "bool", "ablate the selected neurons after the analysis, against random sets "
      "(tables/ablation.parquet); default: true when this section sets any key, else false", key="enabled"),
    S("ablation_k", "ablation", "int", "neurons per set: the top k that pass q < 0.05", key="k",
      check=checks.ablation_count("k", 1, 1_000_000), metavar="K"),
    S("ablation_sets", "ablation", "list", "text, image, xmodal (Table 3's top k of each site), "
      "concept:NAME or concepts (the top k imagery neurons of a concept, or of each; needs concept labels) and "
      "files of (site, layer, neuron[, set]) rows, Parquet or CSV", key="sets", check=checks.ablation_sets,
      metavar="LIST"),
    S("ablation_method", "ablation", "list", "mean (set to the neuron's mean over the held-out half of the study's "
      "inputs) and/or zero", key="method", check=checks.ablation_list("method"), metavar="METHOD"),
    S("ablation_random", "ablation", "int", "random sets per set, matched in site, layers and size; p's floor is "
      "1/(random+1)", key="random", check=checks.ablation_count("random", 1, 100_000), metavar="R"),
    S("ablation_pairs", "ablation", "int", "pairs to score, from the half of the manifest the means do not use",
      key="pairs", check=checks.ablation_count("pairs", 2, 10_000_000, " (pairs to score)"), example=200,
      shown_default="all of it", metavar="N"),
    S("ablation_bands", "ablation", "int", "also make the sets within N bands of consecutive layers (1: the whole "
      "model)", key="bands", check=checks.ablation_count("bands", 1, 1_000), metavar="N"),
    S("ablation_readouts", "ablation", "list", "image (log p(caption | image)), text (log p(caption) in the "
      "text-only input), image_concept and text_concept (the same, of the concept words in the caption only), "
      "caption_words (a caption generated greedily from the image alone: the accuracy of its colour, shape, count "
      "and size words against the pairs' drawn-world concept labels)", key="readouts",
      check=checks.ablation_list("readouts"), example=["image", "text"],
      shown_default="image,text, and caption_words when the pairs have drawn-world labels; text alone for a model "
                    "without vision", metavar="LIST"),
)
