"""One study's settings, validated once at the edge (CLI or notebook), trusted inside."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from modalscope import store_dtypes
from modalscope.models.adapter import SITES
from modalscope.record.reductions import ALL_STATS, ALWAYS, DEFAULT_STATS, ReductionSpec
from modalscope.streams import CONDITIONS, DEFAULT_CONDITIONS, UNIMODAL, streams

LongTables = Literal["auto", "always", "never"]

# Bounds of the options (checked before anything is written; each message names its flag).
MAX_BATCH = 65_536  # pairs per forward
MAX_SORT_WINDOW = 4_096  # batches per length-sorted window
MAX_WINDOW_ROWS = 1 << 20  # pairs per window: the store's chunk rows
MAX_WORKERS = 256  # processes preparing batches
MAX_RESAMPLES = 100_000  # --permutations, --bootstrap
MAX_SEED = 2**63 - 1  # numpy's SeedSequence takes any int >= 0; stores keep int64


@dataclass
class StudyConfig:
    """Everything that defines a study. Paths may be str or Path."""

    out_dir: Path
    model: str = "llava-hf/llava-1.5-7b-hf"
    captions: Path | None = None  # COCO captions JSON (with `images`)
    images: Path | None = None  # COCO image folder
    jsonl: Path | None = None  # or: JSONL of {"image", "caption", "id"}
    instances: Path | None = None  # COCO instances JSON: each image's object categories as its concepts (concepts.py)
    revision: str | None = None
    base_model: str | None = None  # the language model the VLM was trained from (stream text_base)
    base_revision: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None  # "auto": accelerate places layers over all devices
    quantization: str | None = None  # "8bit" | "4bit" (bitsandbytes)
    batch_size: int | Literal["auto"] = 16  # "auto": halve on out-of-memory
    sort_window: int | None = None  # batches per length-sorted window; None: up to 8 within 1 GiB
    workers: int | None = None  # DataLoader processes preparing batches; None: 0 on CPU, 4 on GPU
    num_pairs: int | None = None
    seed: int = 0
    sites: tuple[str, ...] = SITES
    tokens: Literal["content", "all"] = "content"
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    control: str | None = None  # "random-twin": the same inputs through a re-initialised copy too (twin.py)
    contrast: str = "text-image"
    stats: tuple[str, ...] = DEFAULT_STATS
    stat: str = "max"  # the reduction the headline figures lead with
    quantile: float = 0.9
    store_dtype: str = "float16"  # of the stored reductions (store_dtypes.STORE_DTYPES); computed in float32
    fdr: Literal["bh", "by"] = "bh"
    primary: str | None = None  # the primary FDR family "SITE:REDUCTION" (analysis.py fdr_plan); None: mlp:matched_max
    n_perm: int = 1000
    n_boot: int = 1000
    outlier_factor: float = 10.0  # stats/massive.py: F of the massive-neuron rule
    alignment_stat: str = "mean"  # the reduction the layer alignment compares (layer_alignment.py)
    long_tables: LongTables = "auto"
    csv: bool = False
    png: bool = True
    progress: bool = True
    # [ablation] of the study file: `modalscope ablate` after the analysis (ablation/stage.py); the
    # fields mirror its options (--k, --sets, --method, --random, --pairs, --bands, --readouts)
    ablation: bool = False
    ablation_k: int = 10
    ablation_sets: tuple[str, ...] = ("text", "image", "xmodal")
    ablation_method: tuple[str, ...] = ("mean",)
    ablation_random: int = 100
    ablation_pairs: int | None = None  # None: every pair of the scoring half
    ablation_bands: int = 1
    ablation_readouts: tuple[str, ...] | None = None  # None: ablate's default for the model and labels

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("captions", "images", "jsonl", "instances"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.sites = tuple(self.sites)
        self.stats = tuple(dict.fromkeys((*ALWAYS, *self.stats)))
        self.conditions = tuple(dict.fromkeys((*UNIMODAL, *self.conditions)))
        if self.control == "none":  # the study file's and the flag's word for no control
            self.control = None
        for name in ("ablation_sets", "ablation_method", "ablation_readouts"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))

    @property
    def streams(self) -> tuple[str, ...]:
        """What the store records per pair: text, image, with image_text its streams, and with
        a base model its text stream."""
        return streams(self.conditions, bool(self.base_model))

    @property
    def reductions(self) -> ReductionSpec:
        """The reductions recorded per input and their parameters (record/reductions/)."""
        return ReductionSpec(self.stats, self.quantile)

    @property
    def contrast_pair(self) -> tuple[str, str]:
        first, _, second = self.contrast.partition("-")
        return first, second

    def check_primary(self) -> None:
        """--primary SITE:REDUCTION[:A-B[:TEST]]: a recorded site and reduction (the contrast, when
        given, the study's own or text-text_base; the test delta or xmodal)."""
        if self.primary is None:
            return
        parts = str(self.primary).split(":")
        site, stat = (parts + ["", ""])[:2]
        if not 2 <= len(parts) <= 4 or site not in self.sites or stat not in self.stats:
            raise ValueError(f"--primary {self.primary}: give SITE:REDUCTION with a recorded site "
                             f"({', '.join(self.sites)}) and reduction ({', '.join(self.stats)}), e.g. mlp:matched_max")
        if len(parts) == 4 and parts[3] not in ("delta", "xmodal"):
            raise ValueError(f"--primary {self.primary}: the test (4th part) is delta or xmodal")

    def validate(self) -> "StudyConfig":
        """Raise a one-line ValueError for the first bad setting."""
        unknown = [s for s in self.sites if s not in SITES]
        if unknown or not self.sites:
            raise ValueError(f"--sites {','.join(self.sites)}: choose from {', '.join(SITES)}")
        unknown = [s for s in self.stats if s not in ALL_STATS]
        if unknown:
            raise ValueError(f"--stats {','.join(unknown)}: choose from {', '.join(ALL_STATS)}")
        if self.stat not in self.stats:
            raise ValueError(f"--stat {self.stat}: choose one of the recorded {', '.join(self.stats)}")
        if self.alignment_stat not in self.stats:
            raise ValueError(f"--alignment-stat {self.alignment_stat}: choose one of the recorded {', '.join(self.stats)}")
        if self.control not in (None, "random-twin"):
            raise ValueError(f"--control {self.control}: choose none or random-twin")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"--conditions {','.join(bad)}: choose from {', '.join(CONDITIONS)}")
        first, second = self.contrast_pair
        if first not in self.streams or second not in self.streams or first == second:
            raise ValueError(
                f"--contrast {self.contrast}: give A-B with A, B among {', '.join(self.streams)}"
            )
        store_dtypes.choose(self.store_dtype)
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"--quantile {self.quantile}: must be between 0 and 1")
        if self.fdr not in ("bh", "by"):
            raise ValueError(f"--fdr {self.fdr!r}: choose bh or by")
        self.check_primary()
        self.check_statistics()
        if self.tokens not in ("content", "all"):
            raise ValueError(f"--tokens {self.tokens!r}: choose content or all")
        self.check_batching()
        self.check_ablation()
        if self.workers is not None and not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"--workers {self.workers}: must be from 0 (prepare batches in the main process) "
                             f"to {MAX_WORKERS}")
        if self.num_pairs is not None and self.num_pairs < 2:
            raise ValueError(f"--num-pairs {self.num_pairs}: a t-test needs at least 2 pairs")
        if self.long_tables not in ("auto", "always", "never"):
            raise ValueError(f"--long-tables {self.long_tables!r}: choose auto, always or never")
        if self.jsonl is not None and self.captions is not None:
            raise ValueError("give either --captions/--images (COCO) or --jsonl, not both")
        if self.captions is not None and self.images is None:
            raise ValueError("--captions needs --images (the COCO image folder)")
        if self.instances is not None and self.captions is None:
            raise ValueError("--instances needs --captions/--images (COCO; a JSONL line carries its own `concepts`)")
        for name in ("captions", "images", "jsonl", "instances"):
            value = getattr(self, name)
            if value is not None and not value.exists():
                raise ValueError(f"--{name} {value}: no such file or folder")
        return self

    def check_ablation(self) -> None:
        """The [ablation] settings within bounds (ablation/cli.py's); those that depend on the model or
        the tables (a readout the model lacks, a set file) are checked when the ablation starts."""
        from modalscope.study_file import ABLATION_CHOICES, value_toml

        def whole(value: object, low: int, high: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

        for name, value, low, high in (("k", self.ablation_k, 1, 1_000_000),
                                       ("random", self.ablation_random, 1, 100_000),
                                       ("bands", self.ablation_bands, 1, 1_000)):
            if not whole(value, low, high):
                raise ValueError(f"[ablation] {name} = {value}: give {low:,} to {high:,}")
        if self.ablation_pairs is not None and not whole(self.ablation_pairs, 2, 10_000_000):
            raise ValueError(f"[ablation] pairs = {self.ablation_pairs}: give 2 to 10,000,000 (pairs to score)")
        for name, values in (("method", self.ablation_method), ("readouts", self.ablation_readouts)):
            bad = [v for v in values or () if v not in ABLATION_CHOICES[name]]
            if bad or (values is not None and not values):
                raise ValueError(f"[ablation] {name} = {value_toml(list(values))}: choose from "
                                 f"{', '.join(ABLATION_CHOICES[name])}")
        if not self.ablation_sets:
            raise ValueError("[ablation] sets = []: give text, image, xmodal, concepts, concept:NAME or a table file")

    def check_statistics(self) -> None:
        """--permutations, --bootstrap, --outlier-factor and --seed within bounds (`analyze` alone
        checks these before reading the store)."""
        for flag, value in (("--permutations", self.n_perm), ("--bootstrap", self.n_boot)):
            if value < 200:
                raise ValueError(f"{flag} {value}: needs at least 200 resamples")
            if value > MAX_RESAMPLES:
                raise ValueError(f"{flag} {value}: at most {MAX_RESAMPLES:,} resamples (p and CIs resolve 1e-5)")
        if not math.isfinite(self.outlier_factor) or self.outlier_factor <= 1:
            raise ValueError(f"--outlier-factor {self.outlier_factor}: must be a finite number above 1 (a neuron is "
                             "flagged when its max |activation| is at least this times its layer's median "
                             "and 5 robust SDs above the layer; stats/massive.py)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed {self.seed}: must be a whole number from 0 to {MAX_SEED}")

    def check_batching(self) -> None:
        """--batch-size and --sort-window within bounds (they set the store's chunks, so a bad value
        would be written into DIR for good); `plan` checks them too."""
        if self.batch_size != "auto" and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                          or not 1 <= self.batch_size <= MAX_BATCH):
            raise ValueError(f"--batch-size {self.batch_size}: must be a whole number from 1 to {MAX_BATCH:,}, or auto")
        if self.sort_window is not None and not 1 <= self.sort_window <= MAX_SORT_WINDOW:
            raise ValueError(f"--sort-window {self.sort_window}: must be from 1 (1: manifest order) to "
                             f"{MAX_SORT_WINDOW:,} batches")
        batch = 64 if self.batch_size == "auto" else self.batch_size  # auto starts at 64 (on a GPU)
        if self.sort_window is not None and batch * self.sort_window > MAX_WINDOW_ROWS:
            raise ValueError(f"--sort-window {self.sort_window}: with --batch-size {self.batch_size} a window holds "
                             f"{batch * self.sort_window:,} pairs, at most {MAX_WINDOW_ROWS:,}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: object) -> "StudyConfig":
        """The validated study of a study file (`modalscope init` writes one; every run writes
        DIR/study.toml); `overrides` (field=value) beat the file. See study_file.py."""
        from modalscope.study_file import load

        return load(path, **overrides)

    def to_toml(self, path: str | Path) -> Path:
        """Write every setting to a study file that `from_toml` reads back equal (atomically)."""
        from modalscope.study_file import write

        return write(self, path)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
