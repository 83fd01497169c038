"""What a study will cost before it runs: store size, file count, free disk, time.

Why: at LLaVA-1.5-7B widths every pair adds ~1.5 MB per layer to the store (5 reductions x
5 streams x 15,104 neurons x 4 bytes); 5,000 pairs x 32 layers is ~240 GB raw. A disk that
fills hours into a run loses the GPU time, so `modalscope run` and `extract` print this
estimate before the first forward and refuse, in one line, a study the free disk cannot hold;
`modalscope plan` prints it from the model's config alone (no weights).

The estimate is an upper bound: raw bytes (activations compress little: ~0.94 of raw with the
store's lz4 + bit shuffle, benchmarks/store_codecs.py); files are counted exactly from the
store layout (store.py: one shard per extraction window, holding every layer). Arrays the
store does not keep twice (derived.py) are not counted: text/matched_max (the caption is the
shortest stream whenever an image has more tokens than a caption: 576 for llava-1.5) and the
joint forward's image tokens (when its prompt shares the image-only prompt's prefix, which the
run checks per row; where it does not, those rows are stored and the store grows by up to
`joint_image_bytes`).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.derived import STAT_RULES, STREAM_RULES
from modalscope import store_dtypes
from modalscope.streams import BASE_STREAM

GB = 1e9


def size_text(n_bytes: float) -> str:
    """'24.2 GB', or in MB/kB below 1 GB (a small store is not '0.0 GB')."""
    for unit, size in (("GB", GB), ("MB", 1e6)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes / 1e3:,.1f} kB"
MARGIN = 1.10  # free disk needed beyond the estimate (tables, figures, filesystem overhead)
TOKENS_CHUNK = 1024  # store.py: the [input] arrays' chunk


@dataclass(frozen=True)
class Budget:
    n_pairs: int
    n_layers: int
    widths: dict[str, int]  # site -> neurons
    streams: tuple[str, ...]
    stats: tuple[str, ...]
    window: int  # inputs per shard (batch size x sort window)
    store_dtype: str = "float32"  # of the stored values (store_dtypes.STORE_DTYPES)

    @property
    def value_bytes(self) -> int:
        return store_dtypes.value_bytes(self.store_dtype)

    @property
    def derived(self) -> tuple[tuple[str, str], ...]:
        """(stream, stat) arrays expected to be all holes (derived.py): the matched_max of text
        and text_base and the joint image stream's arrays."""
        out = [(stream, stat) for stream in ("text", BASE_STREAM) for stat in STAT_RULES
               if stat in self.stats and stream in self.streams]  # text_base has the text's very tokens
        out += [(stream, stat) for stream, source in STREAM_RULES.items() if stream in self.streams
                and source in self.streams for stat in self.stats]
        return tuple(dict.fromkeys(out))

    @property
    def stored(self) -> int:
        """Arrays per site that hold values: streams x reductions less the derived ones."""
        return len(self.streams) * len(self.stats) - len(self.derived)

    @property
    def values_per_pair(self) -> int:
        return self.n_layers * sum(self.widths.values()) * self.stored

    @property
    def joint_image_bytes(self) -> int:
        """What the joint image stream adds if no row of it is derivable."""
        rows = sum(1 for stream, _ in self.derived if stream in STREAM_RULES)
        return self.n_pairs * self.n_layers * sum(self.widths.values()) * rows * self.value_bytes

    @property
    def store_bytes(self) -> int:
        return self.n_pairs * self.values_per_pair * self.value_bytes

    @property
    def files(self) -> int:
        """Files of the store: a shard per window of every array (all layers), each array's and
        group's zarr.json, and the [input] arrays (pair ids, token counts) in 1,024-input chunks."""
        arrays = len(self.widths) * self.stored
        holes = len(self.widths) * len(self.derived)  # their zarr.json only
        windows = math.ceil(self.n_pairs / self.window)
        groups = 1 + len(self.widths) * (1 + len(self.streams)) + 1  # root, sites, site/stream, tokens
        flags = sum(1 for s in STREAM_RULES if s in self.streams)
        groups += 1 if flags else 0
        small = (1 + len(self.streams) + flags) * (math.ceil(self.n_pairs / TOKENS_CHUNK) + 1)
        return arrays * (windows + 1) + holes + groups + small

    def _shrink(self) -> str:
        """The options that would make this store smaller."""
        options = [option for option, applies in (
            ("--stats max,mean", len(self.stats) > 2), ("--conditions text,image", len(self.streams) > 2),
            ("--sites mlp", len(self.widths) > 1 and "mlp" in self.widths), ("--store-dtype float16", self.value_bytes == 4),
        ) if applies]
        return "; fewer with " + ", ".join(options) if options else ""

    def gb_per_1000_pairs(self) -> float:
        return 1000 * self.values_per_pair * self.value_bytes / GB

    def lines(self) -> list[str]:
        derived = f", {len(self.derived)} of them derived, not stored" if self.derived else ""
        lines = [
            f"store: at most {size_text(self.store_bytes)} in {self.files:,} files "
            f"({self.n_pairs:,} pairs x {self.n_layers} layers x {sum(self.widths.values()):,} neurons "
            f"x {self.stored} arrays: {len(self.streams)} streams x {len(self.stats)} reductions{derived}; "
            f"{self.store_dtype})",
            f"  {size_text(self.gb_per_1000_pairs() * GB)} per 1,000 pairs" + self._shrink(),
        ]
        if self.joint_image_bytes:
            lines.append(f"  up to {size_text(self.joint_image_bytes)} more if the joint prompt's image tokens "
                         "do not match the image-only forward's (checked per pair as it runs)")
        return lines


def estimate(config: StudyConfig, model_config, n_pairs: int, batch_size: int, sort_window: int) -> Budget:
    """The budget of `config` on a model whose config (transformers PretrainedConfig) is given."""
    from modalscope.models import adapter_for

    adapter = adapter_for(model_config.model_type)
    text = getattr(model_config, adapter.text_config, model_config)
    widths = {site: int(getattr(text, adapter.site(site).width)) for site in config.sites}
    return Budget(n_pairs, int(text.num_hidden_layers), widths, tuple(config.streams), tuple(config.stats),
                  batch_size * sort_window, config.store_dtype)


def disk_problem(budget: Budget, out_dir: Path, already: int = 0) -> str | None:
    """One line when the free disk under `out_dir` cannot hold the rest of the store (`already`:
    pairs recorded), with the margin; else None."""
    probe = Path(out_dir).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = (budget.n_pairs - already) * budget.values_per_pair * budget.value_bytes * MARGIN
    if need <= free:
        return None
    return (f"{out_dir}: the store needs about {size_text(need)} (with a {MARGIN - 1:.0%} margin) and "
            f"{size_text(free)} are free; shrink it with --stats max,mean, --conditions text,image, "
            "--sites mlp, --store-dtype float16 or fewer --num-pairs, or pass --force")


def study_disk_problem(config: StudyConfig, budget: Budget, already: int = 0, twin_done: int = 0) -> str | None:
    """disk_problem of the study's stores: its own, and with `--control random-twin` its twin's
    as well (as large again: the same inputs through the re-initialised model, twin.py),
    `already`, `twin_done` the pairs each has recorded."""
    if config.control != "random-twin":
        return disk_problem(budget, config.out_dir, already)
    both = disk_problem(replace(budget, n_pairs=2 * budget.n_pairs), config.out_dir, already + twin_done)
    return both and both.replace("the store needs", "the store and its random twin's need")


def plan_lines(config: StudyConfig, n_pairs: int) -> list[str]:
    """`modalscope plan`: the budget of a study of `n_pairs` on config.model, from its config
    alone (kilobytes from the hub or a folder; no weights), with the free-disk check when the
    study folder is given."""
    from modalscope.models.loading import read_config
    from modalscope.record.plan import default_sort_window

    model_config = read_config(config.model, config.revision)
    batch = 16 if config.batch_size == "auto" else int(config.batch_size)
    draft = estimate(config, model_config, n_pairs, batch, 1)
    window = config.sort_window or default_sort_window(batch, draft.values_per_pair * 4)  # float32 in memory
    budget = estimate(config, model_config, n_pairs, batch, window)
    lines = [f"{config.model}: {budget.n_layers} decoder layers, "
             + ", ".join(f"{site} {width:,} neurons" for site, width in budget.widths.items())]
    lines += budget.lines()
    lines.append(f"  one file per {budget.window} inputs (batch size {batch} x sort window {window}) and array, all layers")
    if config.control == "random-twin":
        lines.append(f"random twin (--control random-twin): a second store as large, in DIR/control/random-twin: "
                     f"{size_text(2 * budget.store_bytes)} in {2 * budget.files:,} files in all")
    if config.out_dir is not None and str(config.out_dir) not in ("", "."):
        problem = study_disk_problem(config, budget)
        lines.append(problem or f"{config.out_dir}: enough free disk for it")
    return lines
