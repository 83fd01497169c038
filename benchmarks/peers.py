"""CPU benchmark: modalscope against its peers and the bare forward, with the issue's goals.

Every contender (see contenders.py: bare forward, HF hidden states + hooks, nnsight,
TransformerLens bridge, modalscope's Recorder) runs the same workload: one batch of pairs,
caption-only forward then image-only forward, max and mean over content tokens at both
sites of every decoder layer, on the same mid-size random LLaVA (Llama 1024 / 2752 x 8
layers, CLIP 336 px / patch 14 -> 576 image tokens, a small tower; built once into
benchmarks/.cache).

- Time: all contenders in one process, each on its own copy of the checkpoint, run in turn
  (the order rotates every round), for --repeats rounds; per round each contender's time is
  divided by the bare forward's of the same round, and the median of these per-round ratios
  is reported (CPU timings drift by +-20% between runs; neighbours in time drift together).
- Memory: one fresh process per contender (forked from a server that has imported torch and
  transformers), with glibc's mmap threshold fixed so freed tensors leave the resident set.
  Each runs the workload twice to warm up, resets its resident high-water mark, runs it
  again and reports peak - resident before; a contender's extra is that minus the bare
  forward's.
- Equality: before timing, every contender's reductions are checked against the HF
  baseline's with assert_close; a mismatch stops the benchmark.

    .venv/bin/python benchmarks/peers.py                 # mid-size model, 20 rounds (~5 min)
    .venv/bin/python benchmarks/peers.py --repeats 40 --batch-size 4 --json peers.json
    .venv/bin/python benchmarks/peers.py --smoke         # tiny model, 1 round (for tests)

nnsight and TransformerLens come with `pip install 'modalscope[bench]'`; a contender whose
package is missing is listed as skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every checkpoint here is a local folder

import argparse
import gc
import json
import multiprocessing
import sys
import time
from pathlib import Path
from queue import Empty

import torch

import contenders
import workload

GOALS = {"time": 1.03, "memory_vs_hf": 0.5, "throughput": 1.0}
MEMORY_SLACK_MIB = 1.0  # "no more than nnsight's extra": the run-to-run noise of the peaks


def memory_child(name: str, model_dir: str, pairs: list, threads: int | None, queue) -> None:
    """In a fresh process: peak resident memory of one steady-state run of `name`."""
    try:
        if threads:
            torch.set_num_threads(threads)
        contender = contenders.make(name, Path(model_dir))
        text, image = workload.make_batches(contender.loaded, pairs)
        for _ in range(2):  # warm-up: lazy set-up, weights paged in, allocator settled
            contender.run(text), contender.run(image)
        gc.collect()
        resettable = workload.reset_peak()
        base = workload.rss_mib()
        contender.run(text), contender.run(image)
        queue.put({"name": name, "base_mib": base, "peak_mib": workload.peak_mib(),
                   "resettable": resettable})
    except BaseException as err:  # report, do not hang the parent
        queue.put({"name": name, "error": f"{type(err).__name__}: {err}"})
        raise


def measure_memory(names: list[str], model_dir: Path, pairs: list, threads: int | None = None) -> dict[str, dict]:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # fixed: big buffers are unmapped when freed
    context = multiprocessing.get_context("forkserver")
    optional = [contenders.NEEDS[n] for n in names if n in contenders.NEEDS]
    context.set_forkserver_preload(["torch", "transformers", "modalscope.models.loading",
                                    "modalscope.record.extract", "contenders", "workload", *optional])
    rows = {}
    for name in names:
        queue = context.Queue()
        process = context.Process(target=memory_child, args=(name, str(model_dir), pairs, threads, queue))
        process.start()
        row = None
        while row is None:
            try:
                row = queue.get(timeout=5)
            except Empty:
                if not process.is_alive():
                    raise SystemExit(f"peers: the memory run of {name} died "
                                     f"(exit {process.exitcode})") from None
        process.join()
        if "error" in row:
            raise SystemExit(f"peers: the memory run of {name} failed: {row['error']}")
        row["used_mib"] = row["peak_mib"] - row["base_mib"]
        if not row["resettable"]:
            print(f"memory {name}: cannot reset the resident peak here (no /proc/self/clear_refs); "
                  "the peak includes loading the model", flush=True)
        rows[name] = row
        print(f"memory {name}: +{row['used_mib']:.1f} MiB over {row['base_mib']:.0f} MiB", flush=True)
    bare = rows["bare"]["used_mib"]
    for row in rows.values():
        row["extra_mib"] = row["used_mib"] - bare
    return rows


def measure_time(names: list[str], model_dir: Path, pairs: list, repeats: int):
    """Per-round seconds per contender, {"wall": {name: [s]}, "cpu": ...} (cpu: the process's
    CPU time, all threads), and the reductions of the first (untimed) round."""
    runners = {name: contenders.make(name, model_dir) for name in names}
    text, image = workload.make_batches(runners["bare"].loaded, pairs)
    results = {}
    for name, runner in runners.items():  # warm-up, and what each contender computes
        results[name] = {"text": runner.run(text), "image": runner.run(image)}
    reference = "hf" if "hf" in results else "modalscope"
    for condition in ("text", "image"):
        contenders.check_equal({n: r[condition] for n, r in results.items()}, reference=reference)
    print(f"equal reductions: {', '.join(n for n in names if n != 'bare')} "
          f"(assert_close vs {reference})", flush=True)
    seconds: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in ("wall", "cpu")}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            runners[name].run(text)
            runners[name].run(image)
            seconds["cpu"][name].append(time.process_time() - cpu)
            seconds["wall"][name].append(time.perf_counter() - wall)
        if repeats > 1:
            print(f"round {round_ + 1}/{repeats}: " + ", ".join(
                f"{n} {seconds['wall'][n][-1]:.2f}s" for n in names), flush=True)
    for runner in runners.values():
        runner.close()
    return seconds, results


def summarise(names: list[str], clocks: dict, memory: dict | None, batch_size: int,
              clock: str = "wall") -> dict:
    """Table rows and goal values; ratios are medians of per-round ratios on `clock`."""
    med = workload.median

    def vs(a: list[float], b: list[float]) -> float:
        return med([x / y for x, y in zip(a, b)])

    seconds = clocks[clock]
    rows = {}
    for name in names:
        rows[name] = {
            "s_per_pair": med(seconds[name]) / batch_size,
            "pairs_per_s": batch_size / med(seconds[name]),
            "time_vs_bare": vs(seconds[name], seconds["bare"]),
            "cpu_vs_bare": vs(clocks["cpu"][name], clocks["cpu"]["bare"]),
        }
        if memory:
            rows[name].update({k: memory[name][k] for k in ("peak_mib", "used_mib", "extra_mib")})
    goals = {"time": rows["modalscope"]["time_vs_bare"] if "modalscope" in rows else None}
    peers = [p for p in contenders.PEERS if p in rows]
    if "modalscope" in rows and peers:
        # Throughput ratio against each peer, per round (= peer's time / modalscope's).
        per_peer = {p: vs(seconds[p], seconds["modalscope"]) for p in peers}
        best = min(per_peer, key=per_peer.get)
        goals["throughput"], goals["best_peer"] = per_peer[best], best
    if memory and "modalscope" in rows:
        ms = memory["modalscope"]["extra_mib"]
        if "hf" in memory:
            goals["memory_vs_hf"] = ms / memory["hf"]["extra_mib"]
        if "nnsight" in memory:
            goals["memory_vs_nnsight_mib"] = ms - memory["nnsight"]["extra_mib"]
    return {"rows": rows, "goals": goals}


def table(summary: dict, skipped: dict[str, str], repeats: int, batch_size: int, size: str,
          clock: str = "wall") -> str:
    rows, goals = summary["rows"], summary["goals"]
    hf_extra = rows.get("hf", {}).get("extra_mib")
    lines = [
        f"CPU ({torch.get_num_threads()} threads), {size} LLaVA, batch {batch_size} pairs "
        f"(text + image forward), both sites, max+mean; median of {repeats} alternating rounds; "
        f"goals on {clock} time",
        f"{'contender':<28} {'s/pair':>7} {'pairs/s':>8} {'time/bare':>9} {'cpu/bare':>8} "
        f"{'peak MiB':>9} {'extra MiB':>9} {'extra/HF':>8}",
    ]
    for name, row in rows.items():
        memory = ""
        if "extra_mib" in row:
            share = row["extra_mib"] / hf_extra if hf_extra else float("nan")
            memory = f" {row['used_mib']:>9.1f} {row['extra_mib']:>9.1f} {share:>8.2f}"
        lines.append(f"{contenders.LABELS[name]:<28} {row['s_per_pair']:>7.3f} "
                     f"{row['pairs_per_s']:>8.2f} {row['time_vs_bare']:>9.3f} "
                     f"{row['cpu_vs_bare']:>8.3f}{memory}")
    for name, why in skipped.items():
        lines.append(f"{contenders.LABELS[name]:<28} skipped: {why}")
    lines.append("(s/pair, pairs/s on wall time; time/bare, cpu/bare: median of per-round ratios "
                 "of wall and of process CPU time)")
    if hf_extra is not None or any("extra_mib" in row for row in rows.values()):
        lines.append("(peak MiB: resident peak of a steady-state run over the process's resident "
                     "set before it; extra: minus the bare forward's)")
    lines.append("")
    lines.append(f"{'goal':<52} {'value':>8} {'target':>8}  met")

    def goal(label: str, value, target: str, met) -> None:
        if value is None:
            lines.append(f"{label:<52} {'n/a':>8} {target:>8}  -")
        else:
            lines.append(f"{label:<52} {value:>8.3f} {target:>8}  {'yes' if met else 'NO'}")

    value = goals.get("time")
    goal("modalscope time / bare forward", value, f"<= {GOALS['time']}",
         value is not None and value <= GOALS["time"])
    value = goals.get("memory_vs_hf")
    goal("modalscope extra memory / HF baseline's extra", value, f"<= {GOALS['memory_vs_hf']}",
         value is not None and value <= GOALS["memory_vs_hf"])
    value = goals.get("memory_vs_nnsight_mib")
    goal("modalscope extra memory - nnsight's extra (MiB)", value, "<= 0 *",
         value is not None and value <= MEMORY_SLACK_MIB)
    value = goals.get("throughput")
    goal(f"modalscope throughput / best peer's ({goals.get('best_peer', '-')})", value,
         f">= {GOALS['throughput']}", value is not None and value >= GOALS["throughput"])
    lines.append(f"* met within {MEMORY_SLACK_MIB:.0f} MiB, the run-to-run noise of resident peaks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="alternating timing rounds (default 20)")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per batch (default 2)")
    parser.add_argument("--contenders", nargs="+", choices=contenders.ALL, default=list(contenders.ALL))
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time the goals use: wall, or the process's CPU time (steadier on a "
                             "busy machine)")
    parser.add_argument("--cache", type=Path, default=workload.CACHE,
                        help="where the checkpoint and images are built once (default benchmarks/.cache)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, 1 round: checks that the benchmark runs, measures nothing")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--dump", type=Path, default=None,
                        help="save each contender's reductions to DIR/NAME.pt (the smoke test compares them)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "tiny" if args.smoke else "mid"
    repeats = 1 if args.smoke else args.repeats
    wanted = tuple(dict.fromkeys(["bare", "modalscope", *args.contenders]))  # the two needed ones
    names, skipped = contenders.available(tuple(n for n in contenders.ALL if n in wanted))

    clock = time.perf_counter()
    model_dir, pairs = workload.build_assets(args.cache, size, args.batch_size)
    print(f"checkpoint: {model_dir} ({time.perf_counter() - clock:.1f} s)", flush=True)
    memory = None if args.no_memory else measure_memory(names, model_dir, pairs, args.threads)
    seconds, results = measure_time(names, model_dir, pairs, repeats)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            torch.save(result, args.dump / f"{name}.pt")
    summary = summarise(names, seconds, memory, args.batch_size, args.clock)
    print()
    print(table(summary, skipped, repeats, args.batch_size, size, args.clock))
    if args.json:
        summary.update({"seconds": seconds, "memory": memory, "skipped": skipped,
                        "batch_size": args.batch_size, "repeats": repeats, "model": size,
                        "threads": torch.get_num_threads(), "clock": args.clock})
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
