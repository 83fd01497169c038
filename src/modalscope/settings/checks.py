"""The checks of single settings (table.py names one per row): each raises one line naming the
flag (or the [ablation] key), the value and what is accepted. Rules between settings (a --stat
that was recorded, a --contrast of recorded streams) are StudyConfig.validate's."""

from __future__ import annotations

import math

from modalscope.models.adapter import SITES
from modalscope.record.reductions import ALL_STATS, quantile_problem
from modalscope.streams import CONDITIONS

# Bounds of the options (checked before anything is written; each message names its flag).
MAX_BATCH = 65_536  # pairs per forward
MAX_SORT_WINDOW = 4_096  # batches per length-sorted window
MAX_WINDOW_ROWS = 1 << 20  # pairs per window: the store's chunk rows
MAX_WORKERS = 256  # processes preparing batches
MIN_RESAMPLES = 200  # --permutations, --bootstrap
MAX_RESAMPLES = 100_000
MAX_SEED = 2**63 - 1  # numpy's SeedSequence takes any int >= 0; stores keep int64

# The values the [ablation] lists take (ablation/ checks the rest against the model and tables).
ABLATION_CHOICES = {"method": ("mean", "zero"),
                    "readouts": ("image", "text", "image_concept", "text_concept", "caption_words")}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sites(value: tuple[str, ...]) -> None:
    if not value or any(s not in SITES for s in value):
        raise ValueError(f"--sites {','.join(value)}: choose from {', '.join(SITES)}")


def stats(value: tuple[str, ...]) -> None:
    unknown = [s for s in value if s not in ALL_STATS]
    if unknown:
        raise ValueError(f"--stats {','.join(unknown)}: choose from {', '.join(ALL_STATS)}")


def conditions(value: tuple[str, ...]) -> None:
    bad = [c for c in value if c not in CONDITIONS]
    if bad:
        raise ValueError(f"--conditions {','.join(bad)}: choose from {', '.join(CONDITIONS)}")


def quantile(value: float) -> None:
    problem = quantile_problem(value)  # the reductions' own bound: one rule for the flag and the store
    if problem:
        raise ValueError(f"--quantile {value}: {problem}")


def resamples(flag: str):
    def check(value: int) -> None:
        if value < MIN_RESAMPLES:
            raise ValueError(f"{flag} {value}: needs at least {MIN_RESAMPLES} resamples")
        if value > MAX_RESAMPLES:
            raise ValueError(f"{flag} {value}: at most {MAX_RESAMPLES:,} resamples (p and CIs resolve 1e-5)")

    return check


def outlier_factor(value: float) -> None:
    if not math.isfinite(value) or value <= 1:
        raise ValueError(f"--outlier-factor {value}: must be a finite number above 1 (a neuron is flagged when its "
                         "max |activation| is at least this times its layer's median and 5 robust SDs above the "
                         "layer; stats/massive.py)")


def seed(value: int) -> None:
    if not _whole(value) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"--seed {value}: must be a whole number from 0 to {MAX_SEED}")


def batch_size(value: int | str) -> None:
    if value != "auto" and (not _whole(value) or not 1 <= value <= MAX_BATCH):
        raise ValueError(f"--batch-size {value}: must be a whole number from 1 to {MAX_BATCH:,}, or auto")


def sort_window(value: int) -> None:
    if not 1 <= value <= MAX_SORT_WINDOW:
        raise ValueError(f"--sort-window {value}: must be from 1 (1: manifest order) to {MAX_SORT_WINDOW:,} batches")


def workers(value: int) -> None:
    if not 0 <= value <= MAX_WORKERS:
        raise ValueError(f"--workers {value}: must be from 0 (prepare batches in the main process) to {MAX_WORKERS}")


def num_pairs(value: int) -> None:
    if value < 2:
        raise ValueError(f"--num-pairs {value}: a t-test needs at least 2 pairs")


def ablation_count(name: str, low: int, high: int, why: str = ""):
    """[ablation] k, random, bands, pairs: a whole number within bounds."""
    def check(value: int) -> None:
        if not _whole(value) or not low <= value <= high:
            raise ValueError(f"[ablation] {name} = {value}: give {low:,} to {high:,}{why}")

    return check


def ablation_list(name: str):
    """[ablation] method, readouts: values of ABLATION_CHOICES, at least one."""
    def check(values: tuple[str, ...]) -> None:
        bad = [v for v in values if v not in ABLATION_CHOICES[name]]
        if bad or not values:
            from modalscope.study_file import value_toml

            raise ValueError(f"[ablation] {name} = {value_toml(list(values))}: choose from "
                             f"{', '.join(ABLATION_CHOICES[name])}")

    return check


def ablation_sets(values: tuple[str, ...]) -> None:
    if not values:
        raise ValueError("[ablation] sets = []: give text, image, xmodal, concepts, concept:NAME or a table file")
