"""Whether a run may add to an existing store: the provenance both must share.

Why: a resumed or repeated run appends to the store in DIR, so every row must have been
recorded the same way (model, weights, dtype, template, token scope, sites, reductions,
streams, store dtype, manifest). The store keeps that provenance in its group attributes;
a run that differs in any of it is refused in one line naming the first difference, before
anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Attributes a resumed run must share with the store, with the user-facing name of each.
MUST_MATCH = {
    "model": "model",
    "weights": "weights (revision or fingerprint)",
    "dtype": "dtype",
    "quantization": "quantization",
    "chat_template": "chat template",
    "tokens": "token scope",
    "sites": "sites",
    "stats": "statistics",
    "conditions": "conditions",
    "quantile": "quantile",
    "store_dtype": "store dtype",
    "manifest_hash": "manifest",
}


class StoreMismatch(ValueError):
    """The store in DIR was made by a different study."""


def check_matches(path: Path, mine: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    """One-line refusal naming the first difference between the store at `path` (its
    attributes: `mine`) and a new run's `attrs`."""
    check_weights(path, mine, attrs)
    for key, label in MUST_MATCH.items():
        if key in attrs and mine.get(key) != attrs[key]:
            raise StoreMismatch(
                f"{path}: holds a study with a different {label} "
                f"({_short(mine.get(key))} vs {_short(attrs[key])}); "
                "use a new output directory"
            )


def check_weights(path: Path, mine: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    """The weight files' content (`weights_files`, {file: sha256}: models/loading.weights_content)
    against what the store recorded, naming the first file that differs, appeared or is gone.
    A store made before it has only `weights` (names and sizes): not checked here."""
    then, now = mine.get("weights_files"), attrs.get("weights_files")
    if not then or now is None:
        return
    model = attrs.get("model", mine.get("model", "--model"))
    for name in sorted({*then, *now}):
        if then.get(name) == now.get(name):
            continue
        what = (f"is gone (sha256 {then[name][:12]}... when recorded)" if name not in now else
                "is new (recorded without it)" if name not in then else
                f"has other content (sha256 {then[name][:12]}... when recorded, {now[name][:12]}... now)")
        raise StoreMismatch(
            f"{path}: the model's weights changed since this study was recorded: {Path(model) / name} "
            f"{what}; restore the weights it was recorded with, or use a new output directory")


def _short(value: Any) -> str:
    """A one-line, bounded rendering (chat templates hold newlines)."""
    text = " ".join(str(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
