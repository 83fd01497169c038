"""What the layer-alignment measures share: input checks and row scaling.

The measures (alignment_cka.py, alignment_knn.py, alignment_retrieval.py) compare every pair
with every pair, so n x n arrays are unavoidable; every other temporary is kept to about
blocks.BLOCK_ELEMENTS elements (stats/blocks.py, the one budget of the blocked loops).
"""

from __future__ import annotations

import numpy as np

MIN_PAIRS = 3  # fewer pairs: every measure is NaN (with 2, CKA is 1 and retrieval trivial)


def pair_matrices(X: np.ndarray, Y: np.ndarray, same_width: bool = False) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected text and image matrices [pairs, neurons] with the same pairs, "
                         f"got {x.shape} and {y.shape}")
    if same_width and x.shape[1] != y.shape[1]:
        raise ValueError(f"retrieval compares the same neurons: text has {x.shape[1]}, image {y.shape[1]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("text or image matrix holds NaN or inf: drop those pairs first")
    return x, y


def unit_rows(x: np.ndarray, center: bool) -> np.ndarray:
    """Rows scaled to norm 1 (after centring each column, if `center`); a zero row stays 0,
    so its cosine with everything is 0."""
    u = x - x.mean(axis=0) if center else x.copy()
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    return u / np.where(norm > 0, norm, 1.0)
