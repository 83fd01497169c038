"""Stage 1, the pairs: image-caption pairs shuffled once with the seed into DIR/manifest.parquet.

Why first and cheap: a study keeps its manifest (row i is input i of the store), so a rerun that
asks for other pairs (another --seed, --num-pairs or data source) is refused from the manifest
before any model loads; pairs that cannot be used in either condition go to DIR/skipped.parquet.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from modalscope.config import StudyConfig
from modalscope.data.manifest import MANIFEST, SKIPPED, load_manifest, manifest_frame, save_manifest, save_skipped, shuffled
from modalscope.data.pairs import DataError, Pair, load_coco, load_jsonl
from modalscope.data.validate import Prepare, select_usable
from modalscope.store import STORE


def read_pairs(config: StudyConfig) -> list[Pair]:
    """The pairs of the study's data file (COCO or JSONL); a file that cannot be read as a
    whole is a one-line DataError. Cheap next to loading a model, so it comes first."""
    if config.jsonl is not None:
        pairs = load_jsonl(config.jsonl)
    elif config.captions is not None:
        pairs = load_coco(config.captions, config.images, config.instances)
    else:
        raise DataError(f"{config.out_dir}: no manifest yet; give --captions/--images or --jsonl")
    if not pairs:
        raise DataError(f"{_source(config)}: holds no image-caption pairs")
    return pairs


def check_manifest_request(config: StudyConfig) -> pd.DataFrame | None:
    """DIR's manifest (None when there is none yet), refusing in one line a run that asks for
    other pairs (another --seed, --num-pairs or data source) than the ones it was made with.
    Cheap, so extraction calls it before the model loads (issue 22.4)."""
    path = config.out_dir / MANIFEST
    if not path.exists():
        return None
    frame, meta = load_manifest(config.out_dir)
    wanted = {"seed": config.seed, "num_pairs": config.num_pairs, "source": _source(config)}
    if wanted["source"] is not None:
        for key, value in wanted.items():
            if meta.get(key) != value:
                raise DataError(
                    f"{path}: made with {key}={meta.get(key)!r}, this run asks for "
                    f"{value!r}; a study keeps its manifest, so use a new --out"
                )
    return frame


def prepare_manifest(config: StudyConfig, prepare: Prepare | None = None,
                     pairs: list[Pair] | None = None) -> pd.DataFrame:
    """Reuse DIR/manifest.parquet if it exists (refusing a conflicting request), else make it
    from `pairs` (default: `read_pairs(config)`).

    `prepare(caption, image)`: the model's check that a pair's inputs can be made (the
    extraction passes its PromptBuilder's); without it only the data are checked."""
    wanted = {"seed": config.seed, "num_pairs": config.num_pairs, "source": _source(config)}
    path = config.out_dir / MANIFEST
    if path.exists():
        return check_manifest_request(config)
    if (config.out_dir / STORE).exists():  # its rows belong to a manifest that is gone
        raise DataError(f"{config.out_dir}: holds {STORE} but no {MANIFEST}, so its rows cannot be "
                        "matched to pairs; use a new --out (nothing was written)")
    pairs = read_pairs(config) if pairs is None else pairs
    # Walk the shuffled pairs, checking each in full, until --num-pairs usable ones are found;
    # the skipped ones go to DIR/skipped.parquet, written before the manifest that commits it.
    usable, skipped = select_usable(shuffled(pairs, config.seed), config.num_pairs,
                                    progress=config.progress, prepare=prepare)
    save_skipped(skipped, config.out_dir)
    if len(usable) < 2:
        example = f" (e.g. pair {skipped[0][0].pair_id}: {_missing_hint(config, *skipped[0])})" if skipped else ""
        raise DataError(
            f"{wanted['source']}: {len(usable)} usable image-caption pair(s), a study needs 2; "
            f"{len(skipped)} skipped{example}; see {config.out_dir / SKIPPED}"
        )
    frame = manifest_frame(usable)
    save_manifest(frame, config.out_dir, wanted)
    return frame


def _missing_hint(config: StudyConfig, pair: Pair, reason: str) -> str:
    """A skip reason; a missing image file names the path tried and where it was resolved from."""
    if reason != "image file not found":
        return reason
    if config.jsonl is not None:
        return (f"{reason}: {pair.image_path} (JSONL image paths are relative to the JSONL file's folder, "
                f"{Path(config.jsonl).resolve().parent})")
    return f"{reason}: {pair.image_path} (check --images)"


def _source(config: StudyConfig) -> str | None:
    source = config.jsonl or config.captions
    return str(Path(source).resolve()) if source is not None else None


def prepare_manifest_ranked(config: StudyConfig, prepare: Prepare | None = None,
                            pairs: list[Pair] | None = None) -> pd.DataFrame:
    """`prepare_manifest`, made by rank 0 first under torchrun, then read by the others."""
    from modalscope.record.distributed import Ranks

    ranks = Ranks.from_env()
    ranks.start()
    if ranks.leader:
        manifest = prepare_manifest(config, prepare, pairs)
    ranks.barrier()
    if not ranks.leader:
        manifest = prepare_manifest(config)
    return manifest

