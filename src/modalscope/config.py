"""One study's settings, validated once at the edge (CLI or notebook), trusted inside."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from modalscope.models.adapter import SITES
from modalscope.record.reductions import ALL_STATS, ALWAYS, DEFAULT_STATS, ReductionSpec  # noqa: F401
from modalscope.settings import in_section
# The bounds live with the checks of the settings; named here too for older imports.
from modalscope.settings.checks import (  # noqa: F401
    MAX_BATCH, MAX_RESAMPLES, MAX_SEED, MAX_SORT_WINDOW, MAX_WINDOW_ROWS, MAX_WORKERS)
from modalscope.streams import CONDITIONS, DEFAULT_CONDITIONS, UNIMODAL, streams  # noqa: F401

LongTables = Literal["auto", "always", "never"]


@dataclass
class StudyConfig:
    """Everything that defines a study. Paths may be str or Path; a list setting (sites, stats,
    conditions, ablation_*) a list, a tuple or a comma string ("residual,mlp"). Each field is a
    row of settings/table.py: its flag, study-file key, check and help."""

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
        from modalscope.settings import SETTINGS, comma_list

        for setting in SETTINGS:  # a path from a str, a list from a comma string or any sequence
            value = getattr(self, setting.field)
            if value is None:
                continue
            if setting.kind == "path":
                setattr(self, setting.field, Path(value))
            elif setting.kind == "list":
                setattr(self, setting.field, comma_list(value))
        self.stats = tuple(dict.fromkeys((*ALWAYS, *self.stats)))
        self.conditions = tuple(dict.fromkeys((*UNIMODAL, *self.conditions)))
        if self.control == "none":  # the study file's and the flag's word for no control
            self.control = None

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

    def check(self, *fields: str) -> "StudyConfig":
        """Each setting's own check (settings/table.py), of `fields` or of every setting: a one-line
        ValueError for the first bad value. A command that runs one stage checks the settings it
        takes (settings.fields_of) before it reads or writes anything."""
        from modalscope.settings import BY_FIELD, SETTINGS

        for setting in (BY_FIELD[name] for name in fields) if fields else SETTINGS:
            setting.checked(getattr(self, setting.field))
        return self

    def validate(self) -> "StudyConfig":
        """Raise a one-line ValueError for the first bad setting: each setting's own check, then
        the rules between settings and the data paths."""
        self.check()
        if self.stat not in self.stats:
            raise ValueError(f"--stat {self.stat}: choose one of the recorded {', '.join(self.stats)}")
        if self.alignment_stat not in self.stats:
            raise ValueError(f"--alignment-stat {self.alignment_stat}: choose one of the recorded {', '.join(self.stats)}")
        first, second = self.contrast_pair
        if first not in self.streams or second not in self.streams or first == second:
            raise ValueError(
                f"--contrast {self.contrast}: give A-B with A, B among {', '.join(self.streams)}"
            )
        self.check_primary()
        self.check_batching()
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
        """The [ablation] settings within bounds; those that depend on the model or the tables (a
        readout the model lacks, a set file) are checked when the ablation starts."""
        self.check(*in_section("ablation"))

    def check_statistics(self) -> None:
        """--permutations, --bootstrap, --outlier-factor and --seed within bounds."""
        self.check("n_perm", "n_boot", "outlier_factor", "seed")

    def check_batching(self) -> None:
        """--batch-size and --sort-window within bounds, and a window within the store's chunk rows
        (they set the store's chunks, so a bad value would be written into DIR for good)."""
        self.check("batch_size", "sort_window")
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
