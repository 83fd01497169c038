"""A setting's row: `Setting` (field, study-file section and key, kind, check, help, the
commands that take it), the kinds of value a flag or a study-file key reads, and the helpers the
rows and their messages share. Below `table.py`, which lists the rows, and the package, which
derives the lookups from them.
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
