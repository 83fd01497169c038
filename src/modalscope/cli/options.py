"""The command line's option types, help texts and option groups, shared by every command's parser."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from modalscope.settings import BY_FIELD, SETTINGS, Setting, comma_list, taken_by
from modalscope.settings.table import MODEL_HELP  # noqa: F401  (parser.py's, and older imports)


DESCRIPTION = """\
Does each neuron of a vision-language model respond more to text or to images?
For every image-caption pair, modalscope runs the caption alone and the image alone
through the model, records every neuron of every decoder layer reduced over the tokens
(max, mean, the length-matched max, the share of tokens active, a quantile), and tests
per neuron whether Δ = text - image differs from 0, with the controls a reviewer asks for.

Start with `modalscope demo --out demo-out` (a small VLM trained here on drawn shapes,
beside its random twin; synthetic data, offline; open demo-out/report.html). For a real
study, `modalscope init` writes a commented study.toml (LLaVA-1.5-7B on COCO val2017);
edit it, then `modalscope run --config study.toml`.
Every run writes DIR/study.toml, its complete settings: `modalscope run --config
DIR/study.toml --out NEW` repeats it. Flags given on the command line beat the file.
"""


# The StudyConfig fields some command takes as a flag (each flag's dest is its field; settings/table.py).
FLAG_FIELDS = tuple(s.field for s in SETTINGS if s.commands)


FORCE_HELP = ("start even when the free disk under DIR looks too small for the store's estimate "
              "(`modalscope plan` prints it) (default: off)")


CONFIG_HELP = ("study file (TOML; `modalscope init` writes a starter, every run writes DIR/study.toml): "
               "every option under [data], [model], [conditions], [reductions], [statistics], [output] "
               "(and [ablation]: `ablate` after the analysis), "
               "keys named like the flags (num_pairs, permutations, ...); a flag given here beats the file "
               "(default: none, the flags alone)")


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


_sites = comma_list  # a comma list flag: "residual,mlp" -> ("residual", "mlp"), as StudyConfig reads a string


# The option groups of --help, by the study file's section of their settings.
GROUPS = {"model": "model", "data": "data (first run in DIR only; later runs reuse DIR/manifest.parquet)",
          "conditions": "recording", "reductions": "recording", "statistics": "statistics", "output": "outputs"}

# How a flag's text is read, by the setting's kind (settings.KINDS).
FLAG_TYPES = {"str": None, "path": Path, "int": int, "int_or_auto": _batch_size, "float": float, "list": _sites}

# The help of the seed (the field's, also `shrink --seed`'s own is another).
SEED_HELP = BY_FIELD["seed"].help + " (default: 0)"


def _shown(setting: Setting) -> str:
    """The default as --help shows it."""
    if setting.shown_default:
        return setting.shown_default
    default = setting.default
    if isinstance(default, tuple):
        return ",".join(default)
    return "none" if default is None else str(default)


def add_settings(p: argparse.ArgumentParser, command: str, config_given: bool = False) -> None:
    """The flags of the settings `command` takes (settings/table.py), in the table's order and
    grouped by section. Every default is None (store_true/false too): a flag the user did not
    type is None, so the StudyConfig default or the study file's value stands (cli/run.py)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in taken_by(command):
        title = GROUPS[setting.section]
        group = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        kwargs: dict[str, object] = {"dest": setting.field, "default": None,
                                     "help": f"{setting.help} (default: {_shown(setting)})"}
        if setting.action:
            kwargs["action"] = setting.action
        else:
            kwargs["type"] = FLAG_TYPES[setting.kind]
            if setting.choices:
                kwargs["choices"] = list(setting.choices)
            if setting.metavar:
                kwargs["metavar"] = setting.metavar
        kwargs.update(setting.variants.get(command, {}))
        if kwargs.get("required"):  # required unless --config may give it
            kwargs["required"] = not config_given
        if kwargs.get("type") is None:
            kwargs.pop("type", None)
        group.add_argument(setting.option, **kwargs)


def _folder(p: argparse.ArgumentParser, config_given: bool, option: bool) -> None:
    """The study folder: --out DIR (run, extract) or the positional DIR (analyze, plot, report,
    export, neuron); with --config, [output] out may give it."""
    text = "study folder DIR (required, unless --config gives [output] out)"
    if option:
        p.add_argument("--out", type=_folder_type("--out"), required=not config_given, metavar="DIR", help=text)
    else:
        p.add_argument("dir", type=_folder_type("DIR"), nargs="?" if config_given else None, metavar="DIR",
                       help=text)
    config_option(p)


def config_option(p: argparse.ArgumentParser) -> None:
    """--config STUDY.TOML: the study file's settings under the flags typed (cli/run.py `_config`)."""
    p.add_argument("--config", type=Path, metavar="STUDY.TOML", help=CONFIG_HELP)
