"""Command line: parses arguments, builds a StudyConfig, calls the study functions.

Thin on purpose: everything here is also reachable from Python (`modalscope.run_study`).
User errors (bad data, bad settings, a store from another study) print one line and exit 2;
anything else is a bug and keeps its traceback.

The package: options.py (types, help texts, option groups), parser.py (each command's options),
run.py (`main`, one-line errors, the printed summary), commands.py (one function per command)."""

from modalscope.cli.commands import COMMANDS  # noqa: F401
from modalscope.cli.parser import build_parser  # noqa: F401
from modalscope.cli.run import _config, headline_block, interrupted_message, main, parse_args, written_folder  # noqa: F401
