"""Massive neurons: the rule behind Table 3's `outlier` column (docs/method.md §6).

Sun et al. (2024, *Massive Activations in Large Language Models*) call an activation massive
when its magnitude is above 100 and about 1,000 times the median magnitude of its hidden
state: a handful of fixed dimensions standing orders of magnitude above the rest. The store
does not hold hidden states token by token; it holds, per neuron and input, a reduction over
tokens. So the rule is restated on what a layer has: each neuron's peak (its largest
|max reduction| over inputs and both contrasted conditions, `max_abs_activation`) against the
peaks of the layer's other neurons.

Why not one fixed multiple of the layer median (the rule until now, 100x): a trained model's
layer medians grow with depth (3.6 to 56.6 over 30 layers, measured on a LLaVA with a real
trained LM) while the widest gap between a massive neuron and the rest narrows, so a fixed
multiple misses the deep layers' largest activation (1,206 = 21x its layer median of 56.6).
What is depth-robust is how far a neuron stands out *in units of its own layer's spread*.
Peaks are positive and spread multiplicatively, so the spread is measured on the log scale:

    massive  <=>  log(peak) - median(log peak)  >  max(log F, Z x 1.4826 x MAD(log peak))

over the layer's active neurons (finite peak above 0). Both halves must hold, as in Sun's
two-part rule:

- F (`--outlier-factor`, default 10): the peak is at least F times the layer's median peak.
  It replaces Sun's "~1,000x the median": a peak is an extreme over inputs and tokens, so the
  median peak already sits several times above a hidden state's median magnitude (for
  Gaussian units, an extreme over 3,000 tokens is ~5x the median |value|), and the largest
  stored activation of the trained model sits at 21x. It also guards a layer whose bulk is
  so tight (MAD near 0) that any neuron a little above it would stand Z spreads out.
- Z (MASSIVE_SPREAD = 5): the neuron stands more than 5 robust standard deviations above its
  layer on the log scale, wherever the layer's median and spread have moved with depth. A
  layer whose ordinary peaks are log-normal flags one of its neurons by chance about once in
  3.5 million (Gaussian tail above 5 SD), ~0.1 per 7B study.

Sun's absolute "above 100" is left out: it presumes a trained LLaMA-like residual stream's
units, and a site may be an MLP's activations, or a model with random weights; F and Z have
no unit.

A neuron that is 0 (or NaN) on every input has no scale: it is left out of the median and
the spread and never flagged. A layer without active neurons flags nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["massive_flags", "MASSIVE_FACTOR", "MASSIVE_SPREAD", "MAD_TO_SD"]

MASSIVE_FACTOR = 10.0  # F: a massive neuron's peak is at least F x its layer's median peak
MASSIVE_SPREAD = 5.0  # Z: ... and more than Z robust SDs of log peak above the layer's median
MAD_TO_SD = 1.4826  # MAD x this = SD for Gaussian values


def massive_flags(
    peak: np.ndarray | Sequence[np.ndarray], factor: float = MASSIVE_FACTOR, spread: float = MASSIVE_SPREAD
) -> np.ndarray | list[np.ndarray]:
    """True where a neuron is massive in its layer (module docstring).

    `peak` is [..., N] (max |activation| per neuron, neurons on the last axis, e.g. [L, N]);
    the result has its shape. A sequence of per-layer arrays (widths may differ) gives a list.
    """
    if not isinstance(peak, np.ndarray):
        return [massive_flags(np.asarray(layer), factor, spread) for layer in peak]
    values = np.abs(peak.astype(np.float64))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer without active neurons
        logs = np.where(values > 0, np.log(values), np.nan)  # NaN and 0 leave median and spread
        centre = np.nanmedian(logs, axis=-1, keepdims=True)
        mad = np.nanmedian(np.abs(logs - centre), axis=-1, keepdims=True)
        above = logs - centre
        return (above > np.log(factor)) & (above > spread * MAD_TO_SD * mad)
