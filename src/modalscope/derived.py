"""What the store does not keep twice: values another array already holds, left as holes.

Why: at 7B widths a (stream, reduction) array is ~4.8 GB per 5,000 pairs in float16, and two
kinds of them repeat another array row for row:

- **matched_max of the shortest stream.** matched_max is the expected max over k tokens
  (`k` = the fewest content tokens of any stream recorded for the pair, extract.matched_k).
  For the stream that has exactly k tokens that expectation is its max, bit for bit (all
  the weight falls on the largest token). With the default conditions the caption is
  nearly always the shortest stream, so `text/matched_max` is `text/max`.
- **The image tokens of the joint forward.** Under causal attention a token sees only what
  precedes it. When the image-and-caption prompt and the image-only prompt share every
  token up to and including the image, the image tokens of the two forwards are the same
  computation and `image_text_image/*` equals `image/*` up to float rounding (a different
  sequence length or padding changes the kernels' summation order, nothing else).

The writer leaves such rows NaN (a chunk that is all NaN is not written: zarr skips empty
chunks, so they cost no bytes and no files) and `ActivationStore.read_layer` fills them from
their source, so every reader of the store sees the full arrays. The first rule needs no
record (the token counts are stored); the second is checked per row at run time against
the image-only forward (`joint_matches`, every batch, not only the first), and a row where it
does not hold is stored as recorded; `derived/image_text_image` [input] says which rows
were left out. Readers of the raw zarr arrays (xarray) see the holes as NaN: the group
attribute `derived` says what fills them.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_dtypes
import numpy as np

STAT_RULES = {"matched_max": "max"}  # a row of matched_max whose stream has exactly k tokens is its max
STREAM_RULES = {"image_text_image": "image"}  # a flagged row of the joint image tokens is the image forward's
FLAGS = "derived"  # group of [input] bool arrays, one per stream of STREAM_RULES
# Rows agree when every |difference| is within this share of the layer's largest |value| (per
# site and reduction): just above float16's resolution (2^-10), far above float32 rounding. The
# check sees the values as stored, so a coarser dtype widens it to its own resolution (`tolerance`).
RTOL = 1e-3
# Not compared: a share of tokens above 0 flips by 1/T when rounding moves one token across 0
# (seen: 1/576 on the tiny LLaVA). max and mean are always recorded and decide the check.
UNCHECKED = ("frac_active",)

Records = dict[str, dict[str, dict[str, np.ndarray]]]  # {stream: {site: {stat: [batch, layer, neuron]}}}


def rules() -> dict[str, dict[str, str]]:
    """The group attribute `derived`: what fills the holes (stores made before it have none)."""
    return {"stat": dict(STAT_RULES), "stream": dict(STREAM_RULES)}


def shortest(n_tokens: Mapping[str, np.ndarray], stream: str) -> np.ndarray:
    """[batch] bool: the rows where `stream` has the fewest tokens of the pair's streams (its
    matched_max is its max). The minimum is over every recorded stream, as matched_k's is."""
    counts = np.stack([np.asarray(n, dtype=np.int64) for n in n_tokens.values()])
    return np.asarray(n_tokens[stream], dtype=np.int64) == counts.min(axis=0)


def joint_matches(records: Records, source: str = "image", stream: str = "image_text_image",
                  rtol: float = RTOL) -> np.ndarray:
    """[batch] bool: the rows where every site, reduction and layer of `stream` agrees with
    `source` within `rtol` of the layer's largest |value| (NaN where the other is NaN too);
    reductions in UNCHECKED are not compared."""
    agree = None
    for site, by_stat in records[stream].items():
        for stat, values in by_stat.items():
            if stat in UNCHECKED:
                continue
            other = records[source][site][stat]
            scale = np.nanmax(np.abs(other), axis=(0, 2), keepdims=True, initial=0.0)  # [1, layer, 1]
            close = (np.abs(values - other) <= tolerance(rtol, values.dtype) * scale) | (np.isnan(values) & np.isnan(other))
            rows = close.all(axis=(1, 2))
            agree = rows if agree is None else agree & rows
    return agree if agree is not None else np.zeros(0, dtype=bool)


def tolerance(rtol: float, dtype: np.dtype) -> float:
    """`rtol`, or the stored dtype's resolution (its eps: one step at the top of the layer's range)
    where that is coarser. Why: the check sees values as stored, and two forwards that agree to
    float32 rounding still round to neighbouring values of a 16-bit dtype now and then (bfloat16:
    one step is up to 2^-7 of a value; of a row's 1.4 million values at 7B widths, 2e-8 apart, an
    estimated handful land on either side of a rounding boundary), which is not a different
    computation."""
    return max(rtol, float(ml_dtypes.finfo(dtype).eps))


def punch(records: Records, n_tokens: Mapping[str, np.ndarray]) -> tuple[Records, dict[str, np.ndarray]]:
    """The records as the store keeps them: derivable rows NaN; and the flags of STREAM_RULES.
    Arrays are copied before a hole is made (the caller's records are not changed); an array
    that is all holes is a read-only NaN view of no memory (`is_holes`)."""
    flags = {stream: joint_matches(records, source, stream)
             for stream, source in STREAM_RULES.items() if stream in records and source in records}
    out: Records = {}
    for stream, by_site in records.items():
        out[stream] = {}
        for site, by_stat in by_site.items():
            out[stream][site] = {}
            for stat, values in by_stat.items():
                rows = _rows(stream, stat, n_tokens, flags, len(values))
                if rows.all():
                    values = np.broadcast_to(np.array(np.nan, values.dtype), values.shape)  # no copy
                elif rows.any():
                    values = values.copy()
                    values[rows] = np.nan
                out[stream][site][stat] = values
    return out, flags


def is_holes(values: np.ndarray) -> bool:
    """Whether `values` is punch's all-holes view (every stride 0), recognised without a scan."""
    return values.size > 0 and not any(values.strides) and bool(np.isnan(values.flat[0]))


def _rows(stream: str, stat: str, n_tokens: Mapping[str, np.ndarray], flags: Mapping[str, np.ndarray],
          batch: int) -> np.ndarray:
    rows = np.zeros(batch, dtype=bool)
    if stream in flags:
        rows |= flags[stream]
    if stat in STAT_RULES:
        rows |= shortest(n_tokens, stream)
    return rows
