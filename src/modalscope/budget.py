"""What a study will cost before it runs: store size, file count, free disk, time.

Why: at LLaVA-1.5-7B widths every pair adds ~1.5 MB per layer to the store (5 reductions x
5 streams x 15,104 neurons x 4 bytes); 5,000 pairs x 32 layers is ~240 GB raw. A disk that
fills hours into a run loses the GPU time, so `modalscope run` and `extract` print this
estimate before the first forward and refuse, in one line, a study the free disk cannot hold;
`modalscope plan` prints it from the model's config alone (no weights).

The estimate is an upper bound: raw bytes (activations compress little: ~0.94 of raw with the
store's lz4 + bit shuffle, benchmarks/store_codecs.py); files are counted exactly from the
store layout (store.py: one shard per extraction window, holding every layer).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from modalscope.config import StudyConfig

GB = 1e9
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
    value_bytes: int = 4  # float32; 2 with --store-dtype float16

    @property
    def values_per_pair(self) -> int:
        return self.n_layers * sum(self.widths.values()) * len(self.streams) * len(self.stats)

    @property
    def store_bytes(self) -> int:
        return self.n_pairs * self.values_per_pair * self.value_bytes

    @property
    def files(self) -> int:
        """Files of the store: a shard per window of every array (all layers), each array's and
        group's zarr.json, and the [input] arrays (pair ids, token counts) in 1,024-input chunks."""
        arrays = len(self.widths) * len(self.streams) * len(self.stats)
        windows = math.ceil(self.n_pairs / self.window)
        groups = 1 + len(self.widths) * (1 + len(self.streams)) + 1  # root, sites, site/stream, tokens
        small = (1 + len(self.streams)) * (math.ceil(self.n_pairs / TOKENS_CHUNK) + 1)
        return arrays * (windows + 1) + groups + small

    def gb_per_1000_pairs(self) -> float:
        return 1000 * self.values_per_pair * self.value_bytes / GB

    def lines(self) -> list[str]:
        return [
            f"store: at most {self.store_bytes / GB:,.1f} GB in {self.files:,} files "
            f"({self.n_pairs:,} pairs x {self.n_layers} layers x {sum(self.widths.values()):,} neurons "
            f"x {len(self.streams)} streams x {len(self.stats)} reductions, "
            f"{'float16' if self.value_bytes == 2 else 'float32'})",
            f"  {self.gb_per_1000_pairs():,.1f} GB per 1,000 pairs; fewer with --stats max,mean, "
            "--conditions text,image, --sites mlp" + (" or --store-dtype float16" if self.value_bytes == 4 else ""),
        ]


def estimate(config: StudyConfig, model_config, n_pairs: int, batch_size: int, sort_window: int) -> Budget:
    """The budget of `config` on a model whose config (transformers PretrainedConfig) is given."""
    from modalscope.models import adapter_for

    adapter = adapter_for(model_config.model_type)
    text = getattr(model_config, adapter.text_config, model_config)
    widths = {site: int(getattr(text, adapter.site(site).width)) for site in config.sites}
    return Budget(n_pairs, int(text.num_hidden_layers), widths, tuple(config.streams), tuple(config.stats),
                  batch_size * sort_window, 2 if config.store_dtype == "float16" else 4)


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
    return (f"{out_dir}: the store needs about {need / GB:,.1f} GB (with a {MARGIN - 1:.0%} margin) and "
            f"{free / GB:,.1f} GB are free; shrink it with --stats max,mean, --conditions text,image, "
            "--sites mlp, --store-dtype float16 or fewer --num-pairs, or pass --force")


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
    if config.out_dir is not None and str(config.out_dir) not in ("", "."):
        problem = disk_problem(budget, config.out_dir)
        lines.append(problem or f"{config.out_dir}: enough free disk for it")
    return lines
