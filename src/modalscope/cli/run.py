"""`main`: parse, dispatch, and turn every expected failure into one line; the printed summary."""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
import time
from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.ranks import Ranks
from modalscope.data.pairs import DataError
from modalscope.store import StoreMismatch
from modalscope.cli.parser import build_parser


# Errors of writing outputs that the user can fix (space, permissions, quota, file size).
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.ENOENT}


# The commands that check the whole study before they run; the others check the settings they take.
WHOLE_STUDY = ("run", "extract")


def _config(args: argparse.Namespace, out_dir: Path | None, **extra: object) -> StudyConfig:
    """The study of the command's flags, or with --config of the file with the flags the user
    typed on top (a flag's default is None: only a typed flag beats the file); `extra` beats
    both. Checked before the command reads or writes anything: `run` and `extract` the whole
    study, a stage run alone (analyze, plot, report, plan, ...) each setting it takes, with the
    same one-line message `run` gives, so nothing it writes into DIR/study.toml is refused later."""
    from modalscope.settings import fields_of

    taken = fields_of(args.command)
    overrides: dict[str, object] = {k: getattr(args, k) for k in taken if getattr(args, k, None) is not None}
    if out_dir is not None:
        overrides["out_dir"] = out_dir
    overrides.update(extra)
    if args.command in WHOLE_STUDY:
        check = StudyConfig.validate
    else:
        def check(config: StudyConfig) -> StudyConfig:
            return config.check(*taken)
    if getattr(args, "config", None) is not None:
        from modalscope.study_file import load

        return load(args.config, check=check, **overrides)
    config = StudyConfig(**overrides)
    check(config)
    return config


def _report(result, started: float, quiet: bool = False) -> None:
    """What a whole study wrote (with --quiet only how many tables and figures: the report links
    them all), its notes, and last the headline sentence of each site (the report's "At a
    glance"; summary.json's `headline`)."""
    if not Ranks.from_env().leader:
        return  # under torchrun, rank 0 speaks for the study
    from modalscope.study import study_headlines

    print(f"study written to {result.out_dir} in {time.perf_counter() - started:.1f} s"
          + (f": {len(result.tables)} tables, {len(result.figures)} figures" if quiet else ""))
    for path in [] if quiet else result.tables:
        print(f"  table   {path}")
    for path in [] if quiet else result.figures:
        print(f"  figure  {path}")
    if result.report is not None:
        print(f"  report  {result.report}")
    for message in result.messages:
        print(message)
    print(headline_block(result.out_dir, study_headlines(result.out_dir)))


def headline_block(out_dir: Path, sentences: list[str]) -> str:
    """'At a glance' and one sentence per site; a study of a random-weights model (the demo's, or
    one `modalscope shrink` built) says so. With the random twin (--control random-twin) each
    sentence ends with whether its effects exceed the twin's, and a last line says where the twin is."""
    from modalscope.report.facts import random_weights_title
    from modalscope.twin import twin_dir

    note = random_weights_title(out_dir)
    title = f"At a glance ({note}):" if note else "At a glance:"
    lines = [title, *(f"  {sentence}" for sentence in sentences)]
    if any("random twin" in sentence for sentence in sentences):
        lines.append(f"  (random twin: this model re-initialised, the same inputs; its study folder "
                     f"{twin_dir(out_dir)})")
    return "\n".join(lines)


def _given(argv: list[str], config_given: bool) -> set[str]:
    """The dests the user actually typed: the same parse with every default suppressed."""
    parser = build_parser(config_given)
    for p in (parser, *parser.commands.values()):
        for action in p._actions:
            if not isinstance(action, argparse._SubParsersAction):
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, with `given`: with --config, the options the user typed (only
    those beat the file)."""
    config_given = any(a == "--config" or a.startswith("--config=") for a in argv)
    args = build_parser(config_given).parse_args(argv)
    args.given = _given(argv, config_given) if config_given else set()
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed
        return stop.code if isinstance(stop.code, int) else 0
    from modalscope import provenance

    started = time.perf_counter()
    provenance.COMMAND = shlex.join(["modalscope", *argv])  # study.json records it
    try:
        return _dispatch(args, started)
    except (DataError, StoreMismatch, ValueError, FileNotFoundError) as err:
        print(f"modalscope: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only or vanished output folder: the store stays consistent
        if err.errno not in WRITE_ERRORS:
            raise
        folder = getattr(args, "out", None) or getattr(args, "dir", None)
        where = f"{err.filename}: " if err.filename else (f"writing under {folder}: " if folder else "")
        print(f"modalscope: error: {where}{err.strerror or err}; finished work is kept: fix this and "
              f"rerun the same command to continue", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(interrupted_message(args, stop), file=sys.stderr)
        return 130
    finally:
        provenance.COMMAND = None
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def interrupted_message(args: argparse.Namespace, stop: KeyboardInterrupt) -> str:
    """Ctrl-C: what is kept and the command that continues from the stage that stopped
    (`study.Interrupted` names it inside `run`; a stage command is its own stage)."""
    stage = getattr(stop, "stage", None) or {"run": "extract", "demo": "extract"}.get(args.command, args.command)
    out = getattr(stop, "out_dir", None) or getattr(args, "out", None) or getattr(args, "dir", None)
    whole = args.command in ("run", "demo")
    if stage == "extract":
        from modalscope.store import STORE

        if out is None or not (Path(out) / STORE).exists():  # nothing recorded: --resume would find nothing
            return "modalscope: interrupted before any pair was recorded; rerun the same command to start"
        return (f"modalscope: interrupted; finished pairs are kept: rerun `modalscope extract --out {out} --resume` "
                "(or the same command) to continue")
    if out is None or stage in ("init", "export"):
        return "modalscope: interrupted; nothing half-written is left: rerun the same command"
    if stage == "ablate":
        return (f"modalscope: interrupted; the readouts so far are kept in {out}/ablation/progress.npz: "
                "rerun the same command to continue")
    if stage == "analyze":
        then = f" then `modalscope plot {out}`" if whole else ""
        return (f"modalscope: interrupted during the analysis; every recorded pair is kept: rerun "
                f"`modalscope analyze {out}`{then} (or the same command) to write the tables")
    if stage == "plot":
        return (f"modalscope: interrupted while drawing the figures; the tables are kept: rerun "
                f"`modalscope plot {out}` (or the same command) to draw them")
    return (f"modalscope: interrupted while writing the report; the tables and figures are kept: rerun "
            f"`modalscope report {out}` to write it")


def _dispatch(args: argparse.Namespace, started: float) -> int:
    """The command, holding its study folder's lock (lock.py) when it writes into one: a second
    writer is refused in one line naming the process that holds the folder."""
    from modalscope import provenance
    from modalscope.cli.commands import COMMANDS  # commands.py reads run.py's helpers: imported here
    from modalscope.lock import study_lock

    folder = written_folder(args)
    if folder is None:
        COMMANDS[args.command](args, started)
        return 0
    with study_lock(folder, provenance.COMMAND or f"modalscope {args.command}"):
        COMMANDS[args.command](args, started)
    return 0


# Commands that write into their study folder: --out DIR for these, the positional DIR for the rest.
OUT_FOLDER = ("demo", "run", "extract")


def written_folder(args: argparse.Namespace) -> Path | None:
    """The study folder the command writes into (None for init and plan, and for `neuron --out
    FILE`, which only reads it), refused in one line when it names something that is not a folder
    (before any model loads)."""
    if args.command in ("init", "plan") or (args.command == "neuron" and args.out is not None):
        return None
    option = "--out" if args.command in OUT_FOLDER else "DIR"
    folder = getattr(args, "out" if args.command in OUT_FOLDER else "dir", None)
    if folder is None and getattr(args, "config", None) is not None:
        from modalscope.study_file import read

        folder = read(args.config).get("out_dir")
        option = f"{args.config}: [output] out"
    if folder is None:
        return None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: a file, not a folder; give a study folder (it is made if missing)")
    return folder


def _stored_settings(out: Path, model: str | None, resume: bool) -> dict[str, object]:
    """`extract --resume` (or without --model) continues with what DIR's store recorded."""
    if model and not resume:
        return {}
    from modalscope.store import STORE, ActivationStore

    path = out / STORE
    if not path.exists():
        raise ValueError(f"{path}: nothing to resume; give --model and data to start a study")
    attrs = ActivationStore.read(path).attrs
    if not resume:
        return {"model": attrs["model"]}
    conditions = tuple(c for c in ("text", "image", "image_text") if c in attrs["conditions"])
    base = attrs.get("base_model") or {}
    from modalscope.twin import RANDOM_TWIN, twin_dir

    twin = (twin_dir(out) / STORE).exists() or _study_file_control(out) == RANDOM_TWIN  # --resume continues it
    return {"model": attrs["model"], "revision": attrs.get("revision"), "dtype": attrs["dtype"],
            "base_model": base.get("model"), "base_revision": base.get("revision"),
            "quantization": attrs.get("quantization"),
            "sites": tuple(attrs["sites"]), "tokens": attrs["tokens"], "stats": tuple(attrs["stats"]),
            "conditions": conditions, "quantile": attrs["quantile"],
            "batch_size": int(attrs["batch_size"]), "sort_window": attrs.get("sort_window"),
            **({"control": RANDOM_TWIN} if twin else {})}


def _study_file_control(out: Path) -> str | None:
    """The `[conditions] control` of DIR/study.toml (None without one, or when it does not parse)."""
    from modalscope.study_file import StudyFileError, read

    try:
        return read(out / "study.toml").get("control") if (out / "study.toml").is_file() else None
    except StudyFileError:
        return None
