"""Names that become file names, and files that must stay inside the study folder.

Why: site, reduction and stream names are read back from DIR/tables/*.parquet and summary.json,
and `plot` turns them into file names (`figures/figure1_{site}.html`). A crafted folder whose
tables name a site `../../../../tmp/pwn` made `plot` write outside DIR. So every name that
becomes part of a path is checked twice: it must be a plain name (SAFE_NAME: letters, digits,
underscores) and one the store recorded (its sites, reductions, streams; without a store, one
modalscope knows); and every writer under DIR refuses a path that resolves outside DIR (a
folder such as figures/ replaced by a symlink to elsewhere included).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_names(names: Iterable[object], kind: str, recorded: Iterable[str], where: Path | str,
                out_dir: Path | str) -> None:
    """One line (ValueError) for the first of `names` that is not a plain name among `recorded`
    (`kind`: 'site', 'reduction', 'stream'); `where`: the file the name was read from."""
    allowed = [str(r) for r in recorded]
    for name in dict.fromkeys(names):
        if is_safe_name(name) and name in allowed:
            continue
        shown = repr(name) if isinstance(name, str) else repr(str(name))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ValueError(f"{where}: {kind} {shown} is not one {out_dir} recorded ({', '.join(allowed)}); "
                         f"this file was not written by modalscope for this study: rerun `modalscope analyze "
                         f"{out_dir}` (nothing was written)")


def resolved_inside(path: Path | str, root: Path | str) -> bool:
    """Whether `path` (following every symlink of its existing part) lies inside `root`."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_inside(path: Path | str, root: Path | str) -> Path:
    """`path`, or a one-line ValueError when it would be written outside the study folder `root`."""
    if not resolved_inside(path, root):
        raise ValueError(f"{path}: resolves to {os.path.realpath(path)}, outside the study folder {root}; "
                         "refusing to write there (is a folder inside it a symlink to elsewhere?)")
    return Path(path)
