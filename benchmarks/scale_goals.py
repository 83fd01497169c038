"""The real-scale budget goals (issue 14), measured at LLaVA-1.5-7B widths and extrapolated.

Why this shape: a 7B checkpoint cannot be downloaded here and a CPU cannot run 32 of its
layers over thousands of pairs, but every cost the goals name is linear in layers (the store,
its writes, the recording, the analysis) and, per layer, fixed by the widths. So the model is a
from-config LLaVA with the 7B decoder's widths (hidden 4,096, MLP 11,008, 32 heads) and 2
decoder layers, random weights, a small CLIP tower with the real 576 image tokens; each figure
is measured on it and scaled to 32 layers and 5,000 pairs. CPU seconds (`time.process_time`,
all threads of this process), not wall time: they do not move when the machine is shared.

- store on disk: the default study's bytes per pair and layer, as written (float16, lz4 +
  bit shuffle, derived arrays left out), x 32 x 5,000; files: `budget.estimate` (the file
  count is exact, checked against real stores by tests/test_budget.py);
- write: the CPU time of `ActivationStore.append` of the recorded windows, their 2 layers
  tiled to 32, into a fresh 32-layer store (compression + zarr), per pair: measured at 32
  layers, not x 16, because each append's fixed cost per array is paid once per window whatever
  the depth (the 2-layer figure x 16 is printed beside it);
- extraction: process CPU per pair of the default against the lean study (--stats max,mean);
- analysis: process CPU of the analyze stage (Table 3 with its controls, the cross-modal
  statistic, the top pairs) on the default store, per pair and layer, x 32 x 5,000, plus the
  layer alignment at its pair cap (layer_alignment.MAX_PAIRS, so it does not grow with more
  pairs), measured on one layer of each site, x 32, plus what does not grow with pairs (the
  intercept of two store sizes, process start-up included, counted as if it were per layer);
  peak memory: the analysis of synthetic
  stores of two sizes at these widths, in fresh processes. Each CPU figure is the median of 3
  runs (one run moves by about 10% on a shared 2-core machine).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

SEVEN_B_LAYERS, PAIRS = 32, 5000
GOALS = {  # name: (goal, unit, lower is better)
    "store_gb": (40.0, "GB"),
    "files": (20_000, "files"),
    "write_cpu_s_per_pair": (0.02, "CPU-s/pair"),
    "extraction_default_over_lean": (1.6, "x"),
    "analysis_cpu_h": (0.3, "CPU-h"),
    "analysis_peak_ratio": (1.2, "x"),
}


def seven_b_sizes():
    from modalscope.models.tiny import MID, LlavaSizes

    return LlavaSizes(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                      num_key_value_heads=32, vision_hidden_size=MID.vision_hidden_size,
                      vision_intermediate_size=MID.vision_intermediate_size, vision_layers=MID.vision_layers,
                      vision_heads=MID.vision_heads, initializer_range=0.02)


def build(root: Path, n_images: int) -> tuple[Path, Path, Path]:
    from modalscope.data.synthetic import build_synthetic_coco
    from modalscope.models.tiny import build_tiny_llava

    captions = build_synthetic_coco(root / "coco", n_images=n_images)
    corpus = [a["caption"] for a in json.loads(captions.read_text())["annotations"]]
    model = build_tiny_llava(root / "llava-7b-width", corpus, sizes=seven_b_sizes())
    return model, captions, root / "coco" / "images"


def config(root: Path, assets, name: str, n_pairs: int, **extra):
    from modalscope import StudyConfig

    model, captions, images = assets
    return StudyConfig(out_dir=root / name, model=str(model), captions=captions, images=images, num_pairs=n_pairs,
                       batch_size=4, device="cpu", png=False, progress=False, long_tables="never", **extra)


def cpu_seconds(function, *args, **kwargs) -> tuple[float, object]:
    start = time.process_time()
    out = function(*args, **kwargs)
    return time.process_time() - start, out


def extraction(study) -> tuple[float, object]:
    """CPU seconds of the extract stage alone (the manifest is prepared first, untimed)."""
    from modalscope.study import extract_stage, prepare_manifest

    manifest = prepare_manifest(study)
    return cpu_seconds(extract_stage, study, manifest, True)


def default_window(batch: int = 16) -> int:
    """Inputs per shard of a default 7B study (batch 16, the default sort window)."""
    from modalscope.record.plan import default_sort_window

    return batch * default_sort_window(batch, SEVEN_B_LAYERS * 15104 * 5 * 4)


def write_cost(store_path: Path, scratch: Path, repeats: int = 3, layers: int | None = None) -> tuple[float, float]:
    """CPU seconds per pair of appending windows of the default layout (batch 16, the default
    window) into a fresh store: what the writer thread does during extraction (holes, then
    zarr: compression and I/O); and, apart, of the float16 cast that extraction does before it
    hands a window over (`as_stored`; on a GPU it could run on the device). The recorded pairs
    are tiled to fill a window, so compression sees 16 distinct pairs per batch. `layers`: the
    recorded layers tiled to that many, into a store of that many (the append a 32-layer model
    makes: its fixed costs per array and append are paid once, not once per 2 layers)."""
    import numpy as np

    from modalscope import derived
    from modalscope.store import ActivationStore

    source = ActivationStore.read(store_path)
    window = default_window()
    reps = -(-window // source.n_done)
    records = {c: {s: {st: np.concatenate([source.read_layer(s, c, st, layer)[:, None] for layer in range(source.n_layers)],
                                          axis=1).astype("float32")
                       for st in source.stats} for s in source.sites} for c in source.conditions}
    depth = -(-(layers or source.n_layers) // source.n_layers)
    records = {c: {s: {st: np.tile(v, (reps, depth, 1))[:window, :layers or source.n_layers] for st, v in d.items()}
                   for s, d in r.items()} for c, r in records.items()}
    counts = source.token_counts()
    n_tokens = {c: np.tile(counts[c], reps)[:window] for c in source.conditions}
    shutil.rmtree(scratch, ignore_errors=True)
    target = ActivationStore.create(scratch, layers or source.n_layers, {s: source.width(s) for s in source.sites}, 16, {},
                                    stats=source.stats, conditions=source.conditions, window=window,
                                    dtype=source.attrs.get("store_dtype", "float32"))
    from modalscope.record.extract import as_stored, narrow_arrays

    narrow = narrow_arrays(target)
    as_stored(records, narrow)  # once untimed: torch's first call starts its thread pool
    clock = time.process_time()
    for _ in range(repeats):
        halves = as_stored(records, narrow)  # extraction casts before handing a window over
    cast = (time.process_time() - clock) / repeats
    records = halves
    spent = 0.0
    for _ in range(repeats):
        clock = time.process_time()
        punched, flags = derived.punch(records, n_tokens)
        target.append(punched, n_tokens, None, flags)
        spent += time.process_time() - clock
    return spent / (repeats * window), cast / window


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def alignment_cpu(store_path: Path) -> tuple[float, dict]:
    """CPU seconds of run_alignment on one layer per site at the pair cap, on a synthetic
    float16 store of these widths (the real store has too few pairs to show the n^2 terms)."""
    import numpy as np

    from modalscope.layer_alignment import MAX_PAIRS, run_alignment
    from modalscope.stats.protocol import AnalysisSettings
    from modalscope.store import ActivationStore

    source = ActivationStore.read(store_path)
    widths = {s: source.width(s) for s in source.sites}
    path = store_path.parent / "alignment-synthetic.zarr"
    shutil.rmtree(path, ignore_errors=True)
    store = ActivationStore.create(path, 1, widths, 256, {}, stats=("max", "mean"), dtype="float16")
    rng = np.random.default_rng(0)
    for _ in range(0, MAX_PAIRS, 256):
        shared = {s: rng.normal(size=(256, 1, w)).astype("float32") for s, w in widths.items()}
        records = {c: {s: {st: shared[s] + rng.normal(size=shared[s].shape).astype("float32")
                           for st in ("max", "mean")} for s in widths} for c in ("text", "image")}
        store.append(records, {"text": [5] * 256, "image": [576] * 256})
    spent = statistics.median(cpu_seconds(run_alignment, ActivationStore.read(path), AnalysisSettings(seed=0))[0]
                              for _ in range(3))  # the median of 3
    return spent, widths


PEAK = """
import resource, sys, time
from modalscope.analysis import AnalysisSettings, run_analysis
from modalscope.cards.table import write_top_pairs
from modalscope.store import ActivationStore
store = ActivationStore.read(sys.argv[1])
clock = time.process_time()
run_analysis(store, AnalysisSettings(seed=0))
write_top_pairs(store, __import__("pathlib").Path(sys.argv[1] + ".top.parquet"), "max", ("text", "image"))
peak = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")), None) \
    if sys.platform == "linux" else None  # this process's own: ru_maxrss keeps a large parent's peak across exec
print(time.process_time() - clock, peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def analysis_runs(root: Path, counts=(256, 1024), width: int = 11008, repeats: int = 3) -> dict[int, tuple[float, float]]:
    """{pairs: (CPU seconds, peak RSS MiB)} of run_analysis (Table 3 with every per-neuron
    statistic and control, the cross-modal statistic) and the top pairs, on synthetic float16
    stores of 2 layers x `width` neurons, each in a fresh process. Two sizes: their difference
    is the cost per pair without the fixed start-up, and their peaks show whether memory grows."""
    import numpy as np

    from modalscope.store import ActivationStore

    peaks = {}
    for n in counts:
        path = root / f"peak-{n}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        store = ActivationStore.create(path, 2, {"mlp": width}, 64, {}, stats=("max", "mean", "matched_max"),
                                       dtype="float16", window=256)
        rng = np.random.default_rng(n)
        for _ in range(0, n, 256):
            records = {c: {"mlp": {st: rng.normal(size=(256, 2, width)).astype("float32")
                                   for st in ("max", "mean", "matched_max")}} for c in ("text", "image")}
            store.append(records, {"text": [5] * 256, "image": [576] * 256})
        runs = []
        for _ in range(repeats):  # the median of fresh processes: one run moves by ~10% on a shared machine
            done = subprocess.run([sys.executable, "-c", PEAK, str(path)], check=True, capture_output=True, text=True)
            cpu, rss = done.stdout.split()[-2:]
            runs.append((float(cpu), int(rss) / 1024))
        peaks[n] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs))
    return peaks


def goals_table(figures: dict[str, float]) -> str:
    lines = [f"{'measure (5,000 pairs x 32 layers, 7B widths)':<48} {'figure':>12} {'goal':>10}  met"]
    for name, (goal, unit) in GOALS.items():
        value = figures.get(name, math.nan)
        met = "yes" if value <= goal else "NO"
        lines.append(f"{name:<48} {value:>12,.3f} {goal:>10,} {unit:<10} {met}")
    return "\n".join(lines)


def run(root: Path, n_pairs: int = 16) -> dict[str, float]:
    from transformers import AutoConfig

    from modalscope.budget import estimate

    assets = build(root / "assets", max(n_pairs // 2, 8))  # reused when --out already holds them
    for name in ("default", "lean", "rewrite.zarr"):
        shutil.rmtree(root / name, ignore_errors=True)  # a study left there would be resumed, not timed
    scale = SEVEN_B_LAYERS / 2
    default = config(root, assets, "default", n_pairs)
    lean = config(root, assets, "lean", n_pairs, stats=("max", "mean"))
    figures: dict[str, float] = {}
    rows = []
    cpu_default, store = extraction(default)
    cpu_lean, _ = extraction(lean)
    rows.append(f"extraction: default {cpu_default / n_pairs:.2f}, lean {cpu_lean / n_pairs:.2f} CPU-s per pair "
                f"({n_pairs} pairs, 2 layers)")
    figures["extraction_default_over_lean"] = cpu_default / cpu_lean
    path = default.out_dir / "activations.zarr"
    per_pair_layer = store_bytes(path) / n_pairs / 2
    figures["store_gb"] = per_pair_layer * SEVEN_B_LAYERS * PAIRS / 1e9
    from modalscope.study import analyze_stage, prepare_manifest

    analyze_stage(default, prepare_manifest(default))  # the whole stage runs on the real store (not timed)
    budget = estimate(default, AutoConfig.from_pretrained(assets[0]), PAIRS, 16, default_window() // 16)
    seven_b = replace(budget, n_layers=SEVEN_B_LAYERS)
    figures["files"] = seven_b.files
    rows.append(f"store: {per_pair_layer / 1e3:.1f} kB per pair and layer on disk (random weights compress "
                f"better than real activations); the estimate (raw bytes) is {seven_b.store_bytes / 1e9:.1f} GB")
    figures["store_gb"] = max(figures["store_gb"], seven_b.store_bytes / 1e9)  # the bound, not the luck
    write, cast = write_cost(path, root / "rewrite.zarr")
    deep, deep_cast = write_cost(path, root / "rewrite.zarr", layers=SEVEN_B_LAYERS)
    figures["write_cpu_s_per_pair"] = deep
    rows.append(f"write: {deep:.3f} CPU-s per pair appended to a 32-layer store (the 2 recorded layers tiled, "
                f"{default_window()}-input windows); {write * 1e3:.1f} ms at 2 layers, x16 = {write * scale:.3f} "
                f"(which counts each append's fixed cost 16 times); the float16 cast before it (extraction's, in "
                f"torch): {deep_cast:.3f} CPU-s at 32")
    runs = analysis_runs(root)
    small, large = min(runs), max(runs)
    per_pair = (runs[large][0] - runs[small][0]) / (large - small)  # 2 layers x 11,008 neurons
    per_value = per_pair / (2 * 11008)
    align, widths = alignment_cpu(path)
    statistics_h = per_value * PAIRS * SEVEN_B_LAYERS * 15104 / 3600
    # what does not grow with pairs (the sign-flip transform, FDR, the start-up), counted as if it
    # were all per layer: the intercept of the two runs, x 16 layer pairs, x 15,104 / 11,008 neurons
    fixed = max(runs[small][0] - small * per_pair, 0.0)
    fixed_h = fixed * SEVEN_B_LAYERS / 2 * 15104 / 11008 / 3600
    figures["analysis_cpu_h"] = statistics_h + fixed_h + align * SEVEN_B_LAYERS / 3600
    figures["analysis_peak_ratio"] = runs[large][1] / runs[small][1]
    rows.append(f"analysis: {runs[small][0]:.1f} / {runs[large][0]:.1f} CPU-s at {small} / {large} pairs x 2 layers x "
                f"11,008 neurons: {statistics_h:.3f} CPU-h for the statistics at 5,000 x 32 x 15,104, {fixed_h:.3f} for "
                f"what does not grow with pairs ({fixed:.1f} CPU-s at 2 layers, start-up included); alignment at its "
                f"pair cap {align:.1f} CPU-s per layer of {', '.join(f'{s} {w:,}' for s, w in widths.items())}: "
                f"{align * SEVEN_B_LAYERS / 3600:.2f} CPU-h")
    rows.append(f"analysis peak RSS: {runs[small][1]:.0f} MiB at {small} pairs, {runs[large][1]:.0f} MiB at {large}")
    print("\n".join(rows))
    print()
    print(goals_table(figures))
    return figures


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16, help="pairs per measured study (default 16)")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from workload import working_folder

    with working_folder(args.out, "modalscope-goals-") as root:
        figures = run(root, args.pairs)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
