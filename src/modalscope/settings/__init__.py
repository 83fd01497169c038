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

from modalscope.settings.setting import KINDS, Setting, comma_list, either
from modalscope.settings.table import SECTIONS, SETTINGS

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
