"""Analysis memory: modalscope's streaming per-neuron t-tests against scipy on the full Δ array.

A synthetic store of [input, layer, neuron] max activations for the text and image
conditions (one site, float32 as extraction writes them) is analysed in fresh processes:

- `scipy`: the whole Δ = text - image array in memory (float64, filled layer by layer, so
  no float32 copies of both conditions are held at once), then
  `scipy.stats.ttest_1samp(delta, 0, axis=0)`: the obvious way, and the reference t-values.
- `modalscope`: `analysis.analyze_site`, what `modalscope analyze` runs per site: one
  layer and one chunk of inputs at a time, running moments (the t-test), the sign-flip
  permutation test (1,000 permutations), per-input layer means, and the table.
- `modalscope t only`: the same stream feeding only `RunningMoments` and `one_sample_t`.

Each process measures its resident high-water mark over what it held before (imports,
the opened store); the goal is modalscope's / scipy's <= 0.1 with t-values equal to a
relative 1e-9. scipy's need grows with inputs x layers x neurons; the streaming analysis
holds one chunk plus [permutation, neuron] accumulators, so the ratio falls as studies grow
(LLaVA-1.5-7B's MLP, 5,000 pairs: a 14 GB Δ array; scipy does not fit on most machines).

    .venv/bin/python benchmarks/analysis.py                  # 6,000 x 8 x 2,752: a 1.1 GB Δ
    .venv/bin/python benchmarks/analysis.py --inputs 20000   # larger, where memory allows
    .venv/bin/python benchmarks/analysis.py --smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import workload

GOAL = 0.1
RTOL = 1e-9
SITE = "mlp"
METHODS = ("scipy", "modalscope", "modalscope-t")
LABELS = {"scipy": "scipy ttest_1samp, full Δ", "modalscope": "modalscope analyze_site",
          "modalscope-t": "modalscope t only (stream)"}


def build_store(path: Path, inputs: int, layers: int, neurons: int, batch: int, seed: int = 0) -> None:
    """Random max activations (image shifted, so t-values are not all ~0), written in batches
    of `batch` inputs, as extraction appends them."""
    from modalscope.store import ActivationStore

    rng = np.random.default_rng(seed)
    store = ActivationStore.create(path, layers, {SITE: neurons}, batch, {"seed": seed},
                                   stats=("max",), conditions=("text", "image"))
    shift = rng.normal(0, 0.05, size=(1, layers, neurons)).astype(np.float32)
    for start in range(0, inputs, batch):
        rows = min(batch, inputs - start)
        text = rng.standard_normal((rows, layers, neurons), dtype=np.float32)
        image = rng.standard_normal((rows, layers, neurons), dtype=np.float32) + shift
        store.append({"text": {SITE: {"max": text}}, "image": {SITE: {"max": image}}},
                     {"text": [8] * rows, "image": [576] * rows})


def child(method: str, store_path: Path, out: Path, n_perm: int) -> dict:
    """Run one method in this (fresh) process; write its t-values [layer, neuron] to `out`."""
    from scipy import stats as sps

    from modalscope.analysis import AnalysisSettings, analyze_site
    from modalscope.stats.moments import RunningMoments
    from modalscope.stats.one_sample import one_sample_t
    from modalscope.store import ActivationStore

    store = ActivationStore.open(store_path)
    n, layers, width = store.n_done, store.n_layers, store.width(SITE)
    workload.reset_peak()
    base = workload.rss_mib()
    clock = time.perf_counter()
    if method == "scipy":
        delta = np.empty((n, layers, width))  # [input, layer, neuron] float64
        for layer in range(layers):
            delta[:, layer, :] = store.read_layer(SITE, "text", "max", layer)
            delta[:, layer, :] -= store.read_layer(SITE, "image", "max", layer)
        t = sps.ttest_1samp(delta, 0.0, axis=0).statistic
    elif method == "modalscope":
        settings = AnalysisSettings(n_perm=n_perm, n_boot=n_perm, seed=0)
        table = analyze_site(store, SITE, settings).neurons
        t = table["t_value"].to_numpy().reshape(layers, width)  # rows: layer, then neuron
    else:
        t = np.empty((layers, width))
        for layer in range(layers):
            moments = RunningMoments()
            for start, stop in store.input_blocks():
                text = store.read_layer(SITE, "text", "max", layer, start, stop).astype(np.float64)
                moments.add(text - store.read_layer(SITE, "image", "max", layer, start, stop))
            t[layer] = one_sample_t(moments).t_value
    seconds = time.perf_counter() - clock
    np.save(out, t)
    return {"method": method, "base_mib": base, "peak_mib": workload.peak_mib(),
            "used_mib": workload.peak_mib() - base, "seconds": seconds}


def run_child(method: str, store_path: Path, out: Path, n_perm: int) -> dict:
    command = [sys.executable, __file__, "--child", method, "--store", str(store_path),
               "--out", str(out), "--permutations", str(n_perm)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"analysis: the {method} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: dict[str, dict], shape: tuple[int, int, int], max_rel: float) -> str:
    inputs, layers, neurons = shape
    scipy_used = rows["scipy"]["used_mib"]
    lines = [f"analysis of one site: {inputs} inputs x {layers} layers x {neurons} neurons "
             f"(Δ float64 {inputs * layers * neurons * 8 / 2**20:.0f} MiB)",
             f"{'method':<30} {'seconds':>8} {'memory MiB':>11} {'/ scipy':>8}"]
    for method, row in rows.items():
        lines.append(f"{LABELS[method]:<30} {row['seconds']:>8.1f} {row['used_mib']:>11.1f} "
                     f"{row['used_mib'] / scipy_used:>8.3f}")
    lines.append("(memory: resident peak during the analysis over the process's resident set before it)")
    lines.append("")
    ratio = rows["modalscope"]["used_mib"] / scipy_used
    lines.append(f"{'goal':<52} {'value':>8} {'target':>8}  met")
    lines.append(f"{'analysis memory / scipy ttest_1samp (full Δ)':<52} {ratio:>8.3f} "
                 f"{'<= ' + str(GOAL):>8}  {'yes' if ratio <= GOAL else 'NO'}")
    lines.append(f"{'t-values, max relative difference to scipy':<52} {max_rel:>8.1e} "
                 f"{'<= ' + str(RTOL):>8}  {'yes' if max_rel <= RTOL else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=6000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--neurons", type=int, default=2752, help="default: the mid-size model's MLP")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per store chunk")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="64 x 2 x 32, 50 permutations")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.store, args.out, args.permutations)))
        return 0
    if args.smoke:
        args.inputs, args.layers, args.neurons, args.permutations = 64, 2, 32, 50
    shape = (args.inputs, args.layers, args.neurons)
    root = Path(tempfile.mkdtemp(prefix="modalscope-analysis-bench-"))
    try:
        clock = time.perf_counter()
        build_store(root / "store.zarr", *shape, batch=args.batch_size)
        print(f"store: {shape[0]} x {shape[1]} x {shape[2]} in {time.perf_counter() - clock:.1f} s",
              flush=True)
        rows, t = {}, {}
        for method in METHODS:
            rows[method] = run_child(method, root / "store.zarr", root / f"{method}.npy", args.permutations)
            t[method] = np.load(root / f"{method}.npy")
            print(f"{method}: {rows[method]['seconds']:.1f} s, +{rows[method]['used_mib']:.1f} MiB",
                  flush=True)
        max_rel = max(float(np.nanmax(np.abs(t[m] - t["scipy"]) / np.abs(t["scipy"])))
                      for m in METHODS[1:])
        for m in METHODS[1:]:  # NaN where scipy has NaN, and nowhere else
            if not np.array_equal(np.isnan(t[m]), np.isnan(t["scipy"])):
                raise SystemExit(f"analysis: {m} and scipy disagree on which t-values are undefined")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows, shape, max_rel))
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "rows": rows, "max_rel_t": max_rel,
                                         "ratio": rows["modalscope"]["used_mib"] / rows["scipy"]["used_mib"]},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
