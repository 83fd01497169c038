"""Golden outputs of a study: every column, store array and summary value, compared with a tolerance
that holds on any CPU.

What the golden check is for: any change of an output is visible, and an intended one is re-recorded
on purpose (outputs are a contract: add, don't rename; new columns and keys are allowed). What it
must not do is fail on another machine: the vision tower's and the decoder's float kernels (oneDNN,
MKL, ATen's vectorised loops) pick other instructions on AVX2, AVX-512 and AMX, so the image
streams differ in the last bits from CPU to CPU, and every statistic computed from them with them.
So the golden file keeps values, not hashes, and compares them like this:

* exact: shapes, dtypes, integers, booleans, strings, ids, the positions of NaN and of +-inf;
* floats: |have - want| <= rtol * scale, where scale is the output's largest finite |value|
  (an activation's error is set by the size of the values it was summed from, not by its own
  size, so a neuron near 0 gets the layer's scale, not its own): per layer for a store array, per
  column for a table, over its siblings for a summary scalar. rtol is RTOL_STORE = 1e-5 for the
  store's float32 activations and RTOL = 1e-4 for the float64 statistics computed from them;
* outputs that are discontinuous functions of the activations (DISCONTINUOUS below: the share
  of active tokens, ranks, permutation counts, BH q) may have a small share of their elements
  beyond that tolerance, never a scalar.

The tolerances are measured (repeat it with tests/golden/README.md): forcing other kernel paths
on one AVX2 machine (`ATEN_CPU_CAPABILITY=default`; `MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41`;
both with `MKL_ENABLE_INSTRUCTIONS=SSE4_2`) changed 232-259 of the small study's 687 bit-exact
hashes. Measured against each output's scale, the store's float32 activations moved by at most
2.0e-6 (17 float32 ulps of the layer's largest value; the ulp is 1.19e-7 relative) and the
statistics by at most 8.1e-6 (Table 3's p: a t statistic divides by a standard deviation of 16
pairs, amplifying the activations' noise). The tolerances sit 5x and 12x above that, and 10x-100x
below one unit in the last place of float16 (9.8e-4 relative), the store's default dtype: the
smallest change an intended edit of the method or the store makes. A share of active tokens moved
by one token (1/576) in 0.035% of its values, one near-tied rank or permutation count in 1 of 960
neurons, and the BH q of up to 13.75% of a column's neurons with it. Integers derived from floats
by a threshold (counts of q < 0.05, argmax pair ids) are compared exactly: on the studies pinned
here none moved under the forced kernel paths; if one ever does, the failure names it.

The golden file is `values.npz` beside this module: one entry per output name, numeric values as
they were, strings and object columns as a sha256 digest (they are exact anyway).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

GOLDEN = Path(__file__).with_name("values.npz")
TABLES = ("manifest.parquet", "skipped.parquet", "truncated.parquet")
# Of the output's scale; see the docstring. Store arrays are float32 activations; statistics are
# float64 arithmetic on them, where a division by a standard deviation of 16 pairs amplifies the
# activations' kernel noise (measured: 2.0e-6 in the store, 8.1e-6 in Table 3's p).
RTOL_STORE, RTOL = 1e-5, 1e-4

# Outputs that are discontinuous functions of the activations: a value within kernel noise of a
# threshold or of another value flips, so a few elements may move by a whole step. Each rule:
# (pattern on the output name, relative tolerance, share of the output's elements allowed beyond
# it, why). The first matching rule applies; unmatched outputs get RTOL for every element.
# Scalars (one element) never get an allowance: floor(share * 1) = 0.
DISCONTINUOUS: tuple[tuple[str, float, float, str], ...] = (
    (r"frac_active", 3e-3, 0.01,
     "the share of tokens above 0: a token within kernel noise of 0 moves it by 1/T (1/576 = 1.7e-3)"),
    (r"q_value|q_hier|xmodal_q", RTOL, 0.25,
     "BH q: one p that moved changes the q of every neuron whose running minimum passes through it"),
    (r"p_perm|p_layers|xmodal_(r|p|ci_low|ci_high)(_|$)", RTOL, 0.01,
     "ranks and permutation counts: near-tied values (a max at a token shared by all prompts) reorder"),
)


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _sentence_difference(have: str, want: str) -> str | None:
    """A sentence of summary.json (the headline) prints numbers at 3 significant digits: its words
    must be equal, and each number within one unit of its last printed digit or RTOL of the
    sentence's largest number (its siblings' scale, as for scalars)."""
    if NUMBER.sub("#", have) != NUMBER.sub("#", want):
        return "changed"
    got, expected = NUMBER.findall(have), NUMBER.findall(want)
    scale = max(abs(float(x)) for x in expected)
    for a, b in zip(got, expected):
        mantissa = b.lower().split("e")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        unit = 10.0 ** (int(b.lower().split("e")[1]) - decimals if "e" in b.lower() else -decimals)
        if abs(float(a) - float(b)) > max(unit, RTOL * scale) * (1 + 1e-9):
            return f"changed: {a} for {b}"
    return None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:20]


def _column(values: pd.Series) -> np.ndarray:
    if "path" in str(values.name):  # where the test's temporary folder was is not an output
        values = values.map(lambda v: Path(v).name if isinstance(v, str) else v)
    array = values.to_numpy()
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array)
    return np.asarray(_digest(b"\x00".join(repr(v).encode() for v in array.tolist())))


def _flatten(prefix: str, value: object, out: dict[str, np.ndarray]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # records: each by its place
        for i, item in enumerate(value):
            _flatten(f"{prefix}[{i}]", item, out)
    elif isinstance(value, str) and NUMBER.search(value):  # a sentence: its numbers are compared as numbers
        out[prefix] = np.asarray(value)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        out[prefix] = np.asarray(_digest(json.dumps(value).encode()))
    elif isinstance(value, (int, float)):
        out[prefix] = np.asarray(value)
    elif isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        out[prefix] = np.asarray(value) if value else np.asarray(_digest(b"[]"))
    else:
        out[prefix] = np.asarray(_digest(json.dumps(value).encode()))


def snapshot(study: Path) -> dict[str, np.ndarray]:
    """{output name: values}: every table column, summary.json value and store array of a study."""
    import zarr

    out: dict[str, np.ndarray] = {}
    parquets = [study / name for name in TABLES] + sorted((study / "tables").glob("*.parquet"))
    for path in parquets:
        if path.exists():
            frame = pd.read_parquet(path)
            rel = path.relative_to(study).as_posix()
            out[f"{rel}#rows"] = np.asarray(len(frame))
            for name in frame.columns:
                out[f"{rel}:{name}"] = _column(frame[name])
    _flatten("summary", json.loads((study / "tables/summary.json").read_text()), out)
    from modalscope.store import ActivationStore

    store = ActivationStore.read(study / "activations.zarr")
    group, n_done = store.group, store.n_done
    for name, member in sorted(group.members(max_depth=None), key=lambda item: item[0]):
        if isinstance(member, zarr.Array):
            parts = name.split("/")
            if len(parts) == 3 and parts[0] in store.sites:  # values as every reader sees them (holes filled)
                data = np.stack([store.read_layer(*parts, layer) for layer in range(store.n_layers)], axis=1)
            else:
                data = np.asarray(member[:n_done])
            out[f"store:{name}"] = data if data.dtype.kind in "biuf" else np.asarray(
                _digest(b"\x00".join(repr(v).encode() for v in data.ravel().tolist())))
    return out


def _magnitude(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), np.abs(values.astype(np.float64)), 0.0)


def _scales(name: str, want: np.ndarray, golden: dict[str, np.ndarray]) -> np.ndarray:
    """The scale each value's error is measured against: per layer for store arrays
    ([input, layer, neuron]); for a summary scalar the largest of its siblings' (a CI bound near 0
    is computed from values the size of the slope, not from its own size); else the whole
    output's largest finite |value|."""
    if name.startswith("store:") and want.ndim == 3:
        return _magnitude(want).max(axis=(0, 2), keepdims=True)
    if name.startswith("summary.") and want.ndim == 0:
        parent = name.rsplit(".", 1)[0] + "."
        return np.asarray(max(float(_magnitude(v).max(initial=0.0)) for key, v in golden.items()
                              if key.startswith(parent) and "." not in key[len(parent):]
                              and v.dtype.kind == "f" and v.ndim == 0))
    return np.asarray(_magnitude(want).max(initial=0.0))


def _rule(name: str) -> tuple[float, float]:
    for pattern, rtol, share, _why in DISCONTINUOUS:
        if re.search(pattern, name):
            return rtol, share
    return (RTOL_STORE if name.startswith("store:") else RTOL), 0.0


def difference(name: str, have: np.ndarray, want: np.ndarray, golden: dict[str, np.ndarray]) -> str | None:
    """Why `have` is not `want` within the golden tolerance, or None when it is."""
    if have.dtype.kind in "US" or want.dtype.kind in "US":
        if have.dtype.kind != want.dtype.kind:
            return "changed"
        if name.startswith("summary.") and NUMBER.search(str(want)) and not re.fullmatch("[0-9a-f]{20}", str(want)):
            return _sentence_difference(str(have), str(want))
        return None if str(have) == str(want) else "changed"
    if have.shape != want.shape:
        return f"shape {have.shape} != {want.shape}"
    if have.dtype != want.dtype:
        return f"dtype {have.dtype} != {want.dtype}"
    if want.dtype.kind != "f":
        return None if np.array_equal(have, want) else "changed"
    same_special = (np.array_equal(np.isnan(have), np.isnan(want))
                    and np.array_equal(np.isposinf(have), np.isposinf(want))
                    and np.array_equal(np.isneginf(have), np.isneginf(want)))
    if not same_special:
        return "NaN or inf at other positions"
    rtol, share = _rule(name)
    scale = _scales(name, want, golden)
    error = np.where(np.isfinite(want), np.abs(have.astype(np.float64) - want.astype(np.float64)), 0.0)
    beyond = int(np.count_nonzero(error > rtol * scale))
    if beyond <= int(share * want.size):
        return None
    relative = float(np.max(error / np.where(scale > 0, scale, 1.0)))
    return (f"changed ({beyond} of {want.size} values beyond {rtol:g} of the scale, "
            f"{int(share * want.size)} allowed; up to {relative:.2g})")


def _golden() -> dict[str, dict[str, np.ndarray]]:
    if not GOLDEN.exists():
        return {}
    with np.load(GOLDEN, allow_pickle=False) as stored:
        table: dict[str, dict[str, np.ndarray]] = {}
        for key in stored.files:
            which, name = key.split("|", 1)
            table.setdefault(which, {})[name] = stored[key]
    return table


def mismatches(study: Path, which: str) -> list[str]:
    """Names whose values changed beyond the tolerance or that went missing, against the golden file."""
    want = _golden()[which]
    have = snapshot(study)
    found = []
    for name, values in want.items():
        why = "missing" if name not in have else difference(name, have[name], values, want)
        if why:
            found.append(f"{name}: {why}")
    return found


def largest_differences(study: Path, which: str) -> dict[str, float]:
    """|have - want| / scale of every float output (for measuring the tolerance; see README.md)."""
    want, have = _golden()[which], snapshot(study)
    out = {}
    for name, values in want.items():
        if name in have and values.dtype.kind == "f" and have[name].shape == values.shape:
            finite = np.isfinite(values) & np.isfinite(have[name])
            error = np.where(finite, np.abs(have[name].astype(np.float64) - values.astype(np.float64)), 0.0)
            scale = _scales(name, values, want)
            out[name] = float(np.max(error / np.where(scale > 0, scale, 1.0), initial=0.0))
    return out


def record(study: Path, which: str, only_existing: bool = False) -> list[str]:
    """Write (or replace) one study's golden values: only when an output change is intended.
    `only_existing`: re-record the existing names only (an intended change of some values),
    adding none. Returns the names that changed beyond the tolerance (or are new or gone)."""
    table = _golden()
    have = snapshot(study)
    old = table.get(which, {})
    if only_existing:
        table[which] = {name: have.get(name, values) for name, values in old.items()}
    else:
        table[which] = have
    changed = [name for name, values in old.items()
               if name not in table[which] or difference(name, table[which][name], values, old)]
    changed += [name for name in table[which] if name not in old]
    flat = {f"{w}|{name}": values for w, entries in sorted(table.items()) for name, values in sorted(entries.items())}
    np.savez_compressed(GOLDEN, **flat)
    return changed
