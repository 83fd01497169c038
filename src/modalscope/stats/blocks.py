"""One memory budget for the statistics' blocked loops: temporaries of about BLOCK_ELEMENTS.

Why: the statistics compare every pair with every pair, or every neuron over every pair, so a
whole [rows, columns] temporary would grow with the study; each loop instead computes a block
of rows at a time, sized here (`block_rows`) so that memory stays flat whatever the study's
size. Each row's result is computed whole inside its block, so the blocks change the memory
used, not the numbers (the tests shrink BLOCK_ELEMENTS to cut every loop into blocks of a few
rows and compare). Read at call time as `blocks.BLOCK_ELEMENTS`, never imported by value, so
such a test reaches every loop.
"""

from __future__ import annotations

BLOCK_ELEMENTS = 1 << 20  # [rows, columns] temporaries are kept to about this many elements


def block_rows(n_columns: int, most: int | None = None) -> int:
    """Rows of a [rows, n_columns] temporary: about BLOCK_ELEMENTS in all, at least one, and at
    most `most` when given."""
    rows = max(1, BLOCK_ELEMENTS // max(n_columns, 1))
    return rows if most is None else max(1, min(rows, most))


def per_neuron_elements() -> int:
    """The budget of the per-neuron loops over inputs (stats/controls.py's sign flips and
    bootstrap, the cross-modal ranks and null draws): a quarter of BLOCK_ELEMENTS, since they
    hold several float64 temporaries and sort keys of that size at once (and their speed was
    measured at it). A function, so that a test that shrinks BLOCK_ELEMENTS shrinks it too."""
    return max(1, BLOCK_ELEMENTS // 4)
