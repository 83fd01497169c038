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
import textwrap
import tomllib
from dataclasses import fields
from pathlib import Path
from collections.abc import Callable
from typing import Any

from modalscope.config import StudyConfig
from modalscope.files import atomic
from modalscope.settings import BY_FIELD, KINDS, SECTIONS, SETTINGS, Setting, either
from modalscope.settings.checks import ABLATION_CHOICES  # noqa: F401  (its old home)

# The keys are the rows of the table of settings (settings/table.py): a key's section, name,
# kind, comment and StudyConfig field are declared there once, beside its flag and its check.
Key = Setting
KEYS: tuple[Setting, ...] = SETTINGS
BY_ATTR: dict[str, Setting] = BY_FIELD
_IN_SECTION: dict[str, dict[str, Setting]] = {s: {k.name: k for k in KEYS if k.section == s} for s in SECTIONS}

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


def load(path: str | Path, check: Callable[[StudyConfig], object] = StudyConfig.validate,
         **overrides: Any) -> StudyConfig:
    """The validated StudyConfig of the file, with `overrides` (StudyConfig fields, e.g. the
    command line's flags) taking precedence; a bad value names the file and line it came from.
    `check` validates it: the whole study by default; a command that runs one stage passes the
    checks of the settings it uses (cli/run.py `_config`)."""
    path = Path(path)
    settings = read(path)
    from_file = {attr for attr in settings if attr not in overrides}
    settings.update(overrides)
    if settings.get("out_dir") is None:
        raise StudyFileError(f"{path}: no [output] out; give the study folder there or with --out DIR")
    config = StudyConfig(**settings)
    try:
        check(config)
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
        raise _error(path, text, key.section, key.name, f"{where}: choose {either(key.choices)}")
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
            unset = defaults[key.attr] is None and key.shown_default and key.attr not in STARTER
            comment = f"{key.comment} (default: {key.shown_default})" if unset else key.comment  # the example is not it
            lines += [f"# {line}" for line in textwrap.wrap(comment, 96)]
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
