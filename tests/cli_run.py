"""`modalscope ARGS` in the test process: the console script's own `main`, its exit status and
what it printed (a subprocess would spend seconds importing torch again for each call)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def modalscope(*args: str) -> Done:
    from modalscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return Done(code, out.getvalue(), err.getvalue())
