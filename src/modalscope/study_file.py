"""The study file: every setting of a study in one TOML file, read, checked and written here.

Why a file: a real study has some thirty settings; typed on a command line they are lost the
day after. A file can be kept beside the data, versioned and shared, and every run writes its
complete resolved settings back as DIR/study.toml, so `modalscope run --config DIR/study.toml
--out NEW` repeats a study exactly. Its sections follow the method ([data], [model],
[conditions], [reductions], [statistics], [output]; [ablation] runs `modalscope ablate` after the
analysis); each key is the CLI option's name with underscores ([ablation]'s: `ablate`'s), so a
flag and its key never need a lookup table in the user's head.

Why checked here, before anything runs: a typo in a file that takes hours to run must cost
one line naming the file, the line and the key (with the closest valid key), not a traceback
or, worse, a silently ignored setting. Values are parsed with the standard library's
`tomllib`; writing needs only flat values (strings, numbers, booleans, lists of strings), so
a small serializer below does it rather than a dependency.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from modalscope.config import StudyConfig
from modalscope.files import atomic
from modalscope.store_dtypes import STORE_DTYPES

# What a key's value must be, and how a message names it.
KINDS = {
    "str": "a string",
    "path": "a string (a path)",
    "int": "a whole number",
    "int_or_auto": 'a whole number or "auto"',
    "float": "a number",
    "bool": "true or false",
    "list": 'a list of strings, e.g. ["a", "b"]',
}


@dataclass(frozen=True)
class Key:
    """One setting: where it lives in the file, which StudyConfig field and CLI flag it is."""

    section: str
    name: str  # the key in the file: the CLI flag with underscores
    kind: str  # one of KINDS
    help: str  # the one-line comment `modalscope init` writes above it
    field: str = ""  # StudyConfig field (default: name)
    flag: str = ""  # CLI option (default: --name with dashes)
    choices: tuple[str, ...] = ()
    example: object = None  # shown commented out by `init` when the default is None

    @property
    def attr(self) -> str:
        return self.field or self.name

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


KEYS: tuple[Key, ...] = (
    Key("data", "captions", "path", "COCO captions JSON (its `images` list names the image files)",
        example="coco/annotations/captions_val2017.json"),
    Key("data", "images", "path", "COCO image folder", example="coco/val2017"),
    Key("data", "jsonl", "path", 'instead of COCO: JSONL of {"image": path, "caption": text, "id": ...} lines',
        example="pairs.jsonl"),
    Key("data", "instances", "path", "COCO instances JSON: each image's object categories become its concept "
        "labels (tables/concepts.parquet)", example="coco/annotations/instances_val2017.json"),
    Key("data", "num_pairs", "int", "use the first N usable pairs of the shuffled list (default: all)",
        example=1000),
    Key("data", "seed", "int", "seed of the one-time shuffle of the pairs"),
    Key("model", "model", "str", "hub id or local folder of a supported model (README: Supported models)"),
    Key("model", "revision", "str", "hub revision (branch, tag or commit) of model (default: the latest)",
        example="main"),
    Key("model", "base_model", "str", "the language model the VLM was trained from: also run the text "
        "inputs through it (stream text_base)", example="lmsys/vicuna-7b-v1.5"),
    Key("model", "base_revision", "str", "hub revision of base_model", example="main"),
    Key("model", "device", "str", "cpu, cuda, cuda:1, ...; auto: cuda if available"),
    Key("model", "dtype", "str", "weights dtype; reductions accumulate in float32 regardless",
        choices=("float32", "float16", "bfloat16")),
    Key("model", "device_map", "str", "auto: spread the layers over all visible GPUs (default: one device)",
        choices=("auto",), example="auto"),
    Key("model", "quantization", "str", "8bit or 4bit weights (pip install 'modalscope[quant]'; default: none)",
        choices=("8bit", "4bit"), example="8bit"),
    Key("model", "batch_size", "int_or_auto", 'pairs per forward; "auto": start at 64 on a GPU, halve on '
        "out-of-memory"),
    Key("model", "sort_window", "int", "batch pairs by caption length in windows of N batches "
        "(default: up to 8 within 1 GiB; 1: off)", example=8),
    Key("model", "workers", "int", "processes preparing batches (default: 0 on CPU, 4 on GPU)", example=4),
    Key("conditions", "conditions", "list", "forwards per pair: text and image always; image_text "
        "(caption and image in one turn)"),
    Key("conditions", "tokens", "str", "reduce over content tokens (caption/image) or all tokens but BOS"),
    Key("conditions", "sites", "list", "residual (decoder layer output) and mlp (down_proj input)"),
    Key("conditions", "control", "str", "random-twin: also run the same inputs through a re-initialised copy of the "
        "model (same config, its own initialisation, seeded) into DIR/control/random-twin, shown beside every result; "
        "none: no control", choices=("none", "random-twin"), example="random-twin"),
    Key("reductions", "stats", "list", "reductions over tokens (max and mean always): matched_max, "
        "frac_active, quantile"),
    Key("reductions", "quantile", "float", "the quantile of the `quantile` reduction"),
    Key("reductions", "store_dtype", "str", "dtype of the stored reductions: float16 halves the store "
        "(range checked before the first write), bfloat16 too with float32's range; computed in float32 either way",
        choices=tuple(STORE_DTYPES)),
    Key("statistics", "contrast", "str", "Δ = A - B between recorded streams (text, image, image_text, "
        "image_text_caption, image_text_image, text_base)"),
    Key("statistics", "fdr", "str", "false discovery rate control: bh (Benjamini-Hochberg) or by "
        "(Benjamini-Yekutieli)"),
    Key("statistics", "primary", "str", "the primary family of tests, SITE:REDUCTION, corrected on its own; "
        "every other family by Benjamini-Bogomolov (Table 3 q_hier); default mlp:matched_max",
        example="mlp:matched_max"),
    Key("statistics", "permutations", "int", "sign-flip permutations for the null (at least 200)",
        field="n_perm"),
    Key("statistics", "bootstrap", "int", "bootstrap resamples of inputs for the trend's CI (at least 200)",
        field="n_boot"),
    Key("statistics", "outlier_factor", "float", "flag massive neurons: max |activation| at least this "
        "times the layer median and 5 robust SDs of log max |activation| above the layer"),
    Key("statistics", "alignment_stat", "str", "the reduction whose per-pair population vectors the layer "
        "alignment (CKA, mutual k-NN, retrieval) compares between the contrasted conditions"),
    Key("output", "out", "path", "the study folder", field="out_dir"),
    Key("output", "stat", "str", "the reduction the headline figures lead with"),
    Key("output", "long_tables", "str", "Tables 1-2 (a row per input x layer x neuron): auto (<= 50M rows), "
        "always or never"),
    Key("output", "csv", "bool", "also write CSV copies of the tables"),
    Key("output", "png", "bool", "PNG and SVG copies of the figures (they need Chrome/Chromium)",
        flag="--no-png"),
    Key("output", "progress", "bool", "progress bars", flag="--quiet"),
    # `modalscope ablate` after the analysis (issue 26): keys named like its options
    Key("ablation", "enabled", "bool", "ablate the selected neurons after the analysis, against random sets "
        "(tables/ablation.parquet); default: true when this section sets any key, else false", field="ablation"),
    Key("ablation", "k", "int", "neurons per set: the top k that pass q < 0.05", field="ablation_k"),
    Key("ablation", "sets", "list", "text, image, xmodal (Table 3's top k of each site), concept:NAME or concepts "
        "(needs concept labels), or files of (site, layer, neuron[, set]) rows", field="ablation_sets"),
    Key("ablation", "method", "list", "mean (the neuron's mean over the half of the inputs not scored) and/or zero",
        field="ablation_method"),
    Key("ablation", "random", "int", "random sets per set, matched in site, layers and size (p's floor 1/(random+1))",
        field="ablation_random"),
    Key("ablation", "pairs", "int", "pairs to score, from the half of the manifest the means do not use "
        "(default: all of it)", field="ablation_pairs", example=200),
    Key("ablation", "bands", "int", "also make the sets within N bands of consecutive layers (1: the whole model)",
        field="ablation_bands"),
    Key("ablation", "readouts", "list", "image, text, image_concept, text_concept, caption_words (default: image, "
        "text, and caption_words with drawn-world labels)", field="ablation_readouts", example=["image", "text"]),
)
# The values the [ablation] lists take (ablation/ checks the rest against the model and tables).
ABLATION_CHOICES = {"method": ("mean", "zero"),
                    "readouts": ("image", "text", "image_concept", "text_concept", "caption_words")}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS))
BY_ATTR: dict[str, Key] = {k.attr: k for k in KEYS}
_IN_SECTION: dict[str, dict[str, Key]] = {s: {k.name: k for k in KEYS if k.section == s} for s in SECTIONS}

# What `modalscope init` sets: a real LLaVA-1.5-7B study on COCO val2017; the rest is commented out.
STARTER: dict[str, object] = {
    "captions": "coco/annotations/captions_val2017.json", "images": "coco/val2017", "num_pairs": 5000,
    "seed": 0, "model": "llava-hf/llava-1.5-7b-hf", "device": "cuda", "dtype": "float16",
    "batch_size": 16, "out_dir": "study",
}


class StudyFileError(ValueError):
    """One line: the file, the line where known, the key and what is wrong."""


# Reading ----------------------------------------------------------------------------------
def read(path: str | Path) -> dict[str, object]:
    """StudyConfig fields from the file, each type-checked; absent keys are absent (defaults)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise StudyFileError(f"--config {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise StudyFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StudyFileError(f"{path}: not valid TOML: {err}") from None
    settings: dict[str, object] = {}
    for section, table in data.items():
        if not isinstance(table, dict):  # a key above the first [section]
            key = _anywhere(section)
            hint = f"; did you mean [{key.section}] {key.name}?" if key else f"; the sections are {_sections()}"
            raise _error(path, text, None, section, f"{section}: a key outside any section{hint}")
        if section not in _IN_SECTION:
            close = difflib.get_close_matches(section, SECTIONS, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; the sections are {_sections()}"
            raise _error(path, text, section, None, f"[{section}]: unknown section{hint}")
        for name, value in table.items():
            key = _IN_SECTION[section].get(name)
            if key is None:
                raise _error(path, text, section, name, f"[{section}] {name}: unknown key{_suggest_key(section, name)}")
            settings[key.attr] = _checked(path, text, key, value)
    if data.get("ablation") and "ablation" not in settings:  # an [ablation] that sets a key asks for it
        settings["ablation"] = True
    return settings


def load(path: str | Path, **overrides: Any) -> StudyConfig:
    """The validated StudyConfig of the file, with `overrides` (StudyConfig fields, e.g. the
    command line's flags) taking precedence; a bad value names the file and line it came from."""
    path = Path(path)
    settings = read(path)
    from_file = {attr for attr in settings if attr not in overrides}
    settings.update(overrides)
    if settings.get("out_dir") is None:
        raise StudyFileError(f"{path}: no [output] out; give the study folder there or with --out DIR")
    config = StudyConfig(**settings)
    try:
        config.validate()
    except ValueError as err:
        raise _value_error(path, str(err), from_file, settings) from None
    return config


def _checked(path: Path, text: str, key: Key, value: object) -> object:
    """The value as its StudyConfig field takes it, or a one-line error naming the expected type."""
    kind = key.kind
    ok = {
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "",
        "int": isinstance(value, int) and not isinstance(value, bool),
        "int_or_auto": value == "auto" or (isinstance(value, int) and not isinstance(value, bool)),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    where = f"[{key.section}] {key.name} = {_value_text(value)}"
    if not ok:
        raise _error(path, text, key.section, key.name, f"{where}: expected {KINDS[kind]}")
    if key.choices and value not in key.choices:
        raise _error(path, text, key.section, key.name, f"{where}: choose {_either(key.choices)}")
    if kind == "float":
        return float(value)
    if kind == "list":
        return tuple(value)
    return value


def _value_error(path: Path, message: str, from_file: set[str], settings: dict) -> StudyFileError | ValueError:
    """StudyConfig.validate()'s message, told about the file's key when the bad value came from
    the file (it names the first flag the file set); a flag's own value keeps the plain message."""
    text = path.read_text(encoding="utf-8")
    named = re.match(r"\[(\w+)\] (\w+)", message)  # a message that names its key: "[ablation] k = 0: ..."
    key = _IN_SECTION.get(named[1], {}).get(named[2]) if named else None
    if key is not None and key.attr in from_file:
        return _error(path, text, key.section, key.name, message)
    by_option = {k.option: k for k in KEYS}
    for option in re.findall(r"--[a-z][a-z-]*", message):
        key = by_option.get(option)
        if key is None or key.attr not in from_file:
            continue
        reason = re.match(rf"{re.escape(option)} [^:]*: (.*)$", message)
        where = f"[{key.section}] {key.name}"
        if reason:  # "--fdr 'xx': choose bh or by" -> [statistics] fdr = "xx": choose bh or by
            return _error(path, text, key.section, key.name,
                          f"{where} = {_value_text(_plain(settings[key.attr]))}: {reason.group(1)}")
        return _error(path, text, key.section, key.name, f"{where}: {message}")
    return ValueError(message)


# Messages ---------------------------------------------------------------------------------
def _error(path: Path, text: str, section: str | None, name: str | None, message: str) -> StudyFileError:
    line = key_line(text, section, name)
    return StudyFileError(f"{path}, line {line}: {message}" if line else f"{path}: {message}")


def key_line(text: str, section: str | None, name: str | None) -> int | None:
    """The 1-based line of `name = ...` inside [section] (top level when section is None), or
    of the [section] header when name is None; None when not found (e.g. an inline table)."""
    current: str | None = None
    header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    for number, line in enumerate(text.splitlines(), 1):
        match = header.match(line)
        if match:
            current = match.group(1).strip().strip('"\'')
            if name is None and current == section:
                return number
            continue
        if name is not None and current == section and re.match(
                rf"""^\s*(?:{re.escape(name)}|"{re.escape(name)}"|'{re.escape(name)}')\s*=""", line):
            return number
    return None


def _suggest_key(section: str, name: str) -> str:
    """'; did you mean num_pairs?' for a typo in its section, '; did you mean [data] seed?' for a
    key of another section, else the section's keys."""
    here = difflib.get_close_matches(name, list(_IN_SECTION[section]), n=1)
    if here:
        return f"; did you mean {here[0]}?"
    elsewhere = _anywhere(name)
    if elsewhere is not None:
        return f"; did you mean [{elsewhere.section}] {elsewhere.name}?"
    return f"; [{section}] takes {', '.join(_IN_SECTION[section])}"


def _anywhere(name: str) -> Key | None:
    """The key `name` is, or is closest to, in any section."""
    names = {k.name: k for k in KEYS}
    close = difflib.get_close_matches(name, list(names), n=1)
    return names[close[0]] if close else None


def suggest_option(given: str, options: list[str]) -> str | None:
    """The valid CLI option closest to a mistyped one (`--num-pair` -> `--num-pairs`), if any."""
    close = difflib.get_close_matches(given.split("=", 1)[0], options, n=1)
    return close[0] if close else None


def _sections() -> str:
    return ", ".join(f"[{s}]" for s in SECTIONS)


def _either(choices: tuple[str, ...]) -> str:
    quoted = [f'"{c}"' for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _value_text(value: object) -> str:
    try:
        return value_toml(value)
    except TypeError:
        return repr(value)


# Writing ----------------------------------------------------------------------------------
def value_toml(value: object) -> str:
    """A TOML literal for the flat values a study uses: str, bool, int, float, list of those."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(c, c if ord(c) >= 0x20 and c != "\x7f" else f"\\u{ord(c):04x}")
                             for c in value) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def dumps(config: StudyConfig) -> str:
    """The complete settings of `config` (defaults included; None means default and is left out)."""
    lines = ["# modalscope study file: every setting of this study.",
             "# `modalscope run --config THIS_FILE --out NEW_DIR` repeats it; a flag beats the file."]
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for key in _IN_SECTION[section].values():
            value = values[key.attr]
            if value is not None:
                lines.append(f"{key.name} = {value_toml(_plain(value))}")
    return "\n".join(lines) + "\n"


def write(config: StudyConfig, path: str | Path) -> Path:
    """`dumps(config)` into `path`, atomically (a crash never leaves half a file)."""
    path = Path(path)
    with atomic(path) as tmp:
        tmp.write_text(dumps(config), encoding="utf-8")
    return path


def starter() -> str:
    """The commented study file `modalscope init` writes: LLaVA-1.5-7B on COCO val2017, every
    other option commented out at its default (or an example where the default is none)."""
    defaults = {f.name: f.default for f in fields(StudyConfig)}
    lines = [
        "# modalscope study: LLaVA-1.5-7B on COCO val2017 (5,000 image-caption pairs).",
        "# Run it: modalscope run --config study.toml   (a flag on the command line beats the file)",
        "# Relative paths are read from the folder modalscope runs in, as on the command line.",
        "# A commented-out line shows an option at its default; remove the # to change it.",
        "# COCO val2017: images.cocodataset.org/zips/val2017.zip and",
        "# images.cocodataset.org/annotations/annotations_trainval2017.zip, unzipped into coco/.",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for key in _IN_SECTION[section].values():
            lines.append(f"# {key.help}")
            if key.attr in STARTER:
                lines.append(f"{key.name} = {value_toml(STARTER[key.attr])}")
            else:
                default = defaults[key.attr]
                shown = key.example if default is None else default
                lines.append(f"# {key.name} = {value_toml(_plain(shown))}")
    return "\n".join(lines) + "\n"


def write_starter(path: str | Path) -> Path:
    """`starter()` into `path` (an existing folder: `path/study.toml`); an existing file is never
    overwritten (one-line error)."""
    path = Path(path)
    if path.is_dir():
        path = path / "study.toml"
    if path.exists():
        raise StudyFileError(f"{path}: already exists; give another PATH (modalscope init PATH) or remove it")
    with atomic(path) as tmp:
        tmp.write_text(starter(), encoding="utf-8")
    return path
