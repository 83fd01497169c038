"""One study's settings, validated once at the edge (CLI or notebook), trusted inside."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from modalscope import store_dtypes
from modalscope.models.adapter import SITES
from modalscope.record.reductions import ALL_STATS, ALWAYS, DEFAULT_STATS, ReductionSpec
from modalscope.streams import CONDITIONS, DEFAULT_CONDITIONS, UNIMODAL, streams

LongTables = Literal["auto", "always", "never"]


@dataclass
class StudyConfig:
    """Everything that defines a study. Paths may be str or Path."""

    out_dir: Path
    model: str = "llava-hf/llava-1.5-7b-hf"
    captions: Path | None = None  # COCO captions JSON (with `images`)
    images: Path | None = None  # COCO image folder
    jsonl: Path | None = None  # or: JSONL of {"image", "caption", "id"}
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
    contrast: str = "text-image"
    stats: tuple[str, ...] = DEFAULT_STATS
    stat: str = "max"  # the reduction the headline figures lead with
    quantile: float = 0.9
    store_dtype: str = "float16"  # of the stored reductions (store_dtypes.STORE_DTYPES); computed in float32
    fdr: Literal["bh", "by"] = "bh"
    n_perm: int = 1000
    n_boot: int = 1000
    outlier_factor: float = 100.0
    alignment_stat: str = "mean"  # the reduction the layer alignment compares (layer_alignment.py)
    long_tables: LongTables = "auto"
    csv: bool = False
    png: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("captions", "images", "jsonl"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.sites = tuple(self.sites)
        self.stats = tuple(dict.fromkeys((*ALWAYS, *self.stats)))
        self.conditions = tuple(dict.fromkeys((*UNIMODAL, *self.conditions)))

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
        for flag, value in (("--permutations", self.n_perm), ("--bootstrap", self.n_boot)):
            if value < 200:
                raise ValueError(f"{flag} {value}: needs at least 200 resamples")
        if self.tokens not in ("content", "all"):
            raise ValueError(f"--tokens {self.tokens!r}: choose content or all")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"--batch-size {self.batch_size}: must be a positive integer or auto")
        if self.sort_window is not None and self.sort_window < 1:
            raise ValueError(f"--sort-window {self.sort_window}: must be at least 1 (1: manifest order)")
        if self.num_pairs is not None and self.num_pairs < 2:
            raise ValueError(f"--num-pairs {self.num_pairs}: a t-test needs at least 2 pairs")
        if self.long_tables not in ("auto", "always", "never"):
            raise ValueError(f"--long-tables {self.long_tables!r}: choose auto, always or never")
        if self.jsonl is not None and self.captions is not None:
            raise ValueError("give either --captions/--images (COCO) or --jsonl, not both")
        if self.captions is not None and self.images is None:
            raise ValueError("--captions needs --images (the COCO image folder)")
        for name in ("captions", "images", "jsonl"):
            value = getattr(self, name)
            if value is not None and not value.exists():
                raise ValueError(f"--{name} {value}: no such file or folder")
        return self

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
