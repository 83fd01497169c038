"""Every setting of a study declared once: one `Setting` per StudyConfig field, in `table.py`.

Why: a setting used to be declared in about ten places (the dataclass, each command's flag, its
default, its help, the list of flags per command, the study file's key, the validation), and
they drifted apart: a bound checked one way in one place and another way elsewhere, a command
that wrote a value into DIR/study.toml that `run --config` then refused. Now the row of a
setting says its study-file section and key, its kind (how a flag's text and a file's value
are read), its check, its help and the commands that take it, and the rest is derived:

    cli/options.py  `add_settings(parser, command)`: the flags, their types, groups and help
    study_file.py   the keys, their sections, type checks, the starter file's comments
    config.py       `StudyConfig.check()` runs the rows' checks; `validate()` adds the rules
                    between settings (a recorded --stat, a --contrast of recorded streams, ...)

The default stays with the StudyConfig field (the Python API's own signature); a row reads it
(`Setting.default`). Adding a setting: a StudyConfig field and a row of `table.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

# How a value is read: the study file's type check (its message names the expected type) and
# the flag's parser (cli/options.py `FLAG_TYPES`).
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
class Setting:
    """One setting: the StudyConfig field, its study-file key, its flag and who takes it."""

    field: str  # the StudyConfig field
    section: str  # the study file's [section]
    kind: str  # one of KINDS
    help: str  # the flag's help without its "(default: ...)"; the study file's comment too
    commands: tuple[str, ...] = ()  # the commands whose parser takes the flag
    key: str = ""  # the study file's key (default: the field)
    flag: str = ""  # the CLI option (default: --key with dashes); "" with no commands: none
    choices: tuple[str, ...] = ()  # the values it takes (flag, file and check)
    check: Callable[[Any], None] | None = None  # raises a one-line ValueError for a bad value
    shown_default: str = ""  # how --help shows the default (default: the field's default)
    note: str = ""  # the study file's comment when it differs from `help` (an inverted flag)
    metavar: str | None = None
    example: object = None  # shown commented out by `modalscope init` when the default is None
    action: str = ""  # store_true / store_false for a bool flag
    # per command, argparse keywords that differ ("help" is then the whole text, with its default;
    # "required": True means required unless --config gives it)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The study file's key."""
        return self.key or self.field

    @property
    def attr(self) -> str:
        """The StudyConfig field (study_file.py's word for it)."""
        return self.field

    @property
    def option(self) -> str:
        """The CLI option that messages name."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def comment(self) -> str:
        """The study file's comment above the key."""
        return self.note or self.help

    @property
    def default(self) -> object:
        """The StudyConfig field's default (the dataclass owns it)."""
        from dataclasses import fields

        from modalscope.config import StudyConfig

        found = next(f for f in fields(StudyConfig) if f.name == self.field)
        return None if found.default is MISSING else found.default

    def checked(self, value: object) -> None:
        """The row's check of one value (None, the unset optional setting, passes)."""
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.option} {value}: choose {either(self.choices)}")
        if self.check is not None:
            self.check(value)


def either(choices: tuple[str, ...]) -> str:
    """'a, b or c': how every message lists the values a setting takes."""
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


def comma_list(value: object) -> tuple[str, ...]:
    """A list setting from Python or the command line: a comma string ("residual,mlp") or any
    sequence of strings, as a tuple (a bare string is never read as its characters)."""
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    return tuple(value)


from modalscope.settings.table import SECTIONS, SETTINGS  # noqa: E402  (the rows use the helpers above)

BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}


def taken_by(command: str) -> tuple[Setting, ...]:
    """The settings `command` takes as flags, in the table's order (its --help's order)."""
    return tuple(s for s in SETTINGS if command in s.commands)


def fields_of(command: str) -> tuple[str, ...]:
    """The StudyConfig fields `command` sets from its flags."""
    return tuple(s.field for s in taken_by(command))


def in_section(section: str) -> tuple[str, ...]:
    """The StudyConfig fields of one study-file section, e.g. "data" (what a rerun that names no
    data keeps from DIR/study.toml)."""
    return tuple(s.field for s in SETTINGS if s.section == section)


__all__ = ["BY_FIELD", "KINDS", "SECTIONS", "SETTINGS", "Setting", "comma_list", "either", "fields_of",
           "in_section", "taken_by"]
