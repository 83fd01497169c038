"""How extraction speed and peak host memory scale with the number of pairs.

Builds the embedded demo assets (a tiny LLaVA and a synthetic COCO set) once, then for
each pair count runs the whole study (`modalscope run`: extraction, analysis, tables,
figures) in a fresh process and reports the wall time, the extraction rate (pairs per
second, from `timings.extract_s` in DIR/study.json, which includes loading the model and
building the manifest), the analysis time and the peak RSS
of the process (its own VmHWM on Linux, else `ru_maxrss`; its children's if larger). The last line gives the
ratio of the peak RSS at the largest to the smallest pair count: the analysis streams one
layer and one chunk of inputs at a time, so it should stay close to 1.

    .venv/bin/python benchmarks/scale.py                      # 500 and 2,000 pairs
    .venv/bin/python benchmarks/scale.py --pairs 250 1000 4000 --out bench
    .venv/bin/python benchmarks/scale.py --smoke              # 16 and 32 pairs, quick
    .venv/bin/python benchmarks/scale.py --goals              # the real-scale goals at 7B widths (~15 min)

`--goals` measures the real-scale budget instead (benchmarks/scale_goals.py): store size, files,
write, extraction and analysis cost at LLaVA-1.5-7B widths, extrapolated to 32 layers and
5,000 pairs, each against its goal with met yes/NO.

Runs on CPU (`--device cpu`), without PNG figures or the long tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

MARK = "MODALSCOPE_SCALE_RSS"
# Runs `modalscope.cli.main` and reports its peak RSS (KiB on Linux) on a marked line.
LAUNCHER = f"""
import resource, sys
from modalscope.cli import main
try:
    code = main(sys.argv[1:])
finally:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "linux":  # this process's own peak: ru_maxrss keeps the parent's across exec
        own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("{MARK}", own, kids, flush=True)
sys.exit(code)
"""


def rss_mib(value_kib: int) -> float:
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    return value_kib / (1024 * 1024 if sys.platform == "darwin" else 1024)


def build_assets(root: Path, n_images: int) -> tuple[Path, Path, Path]:
    from modalscope.demo import build_demo_assets

    return build_demo_assets(root, n_images)


def run_once(study: Path, assets: tuple[Path, Path, Path], pairs: int, extra: list[str]) -> dict:
    model, captions, images = assets
    if study.exists():
        shutil.rmtree(study)  # a leftover study would be resumed, not timed
    command = [
        sys.executable, "-c", LAUNCHER, "run", "--out", str(study), "--model", str(model),
        "--captions", str(captions), "--images", str(images), "--num-pairs", str(pairs),
        "--device", "cpu", "--quiet", "--no-png", "--long-tables", "never", *extra,
    ]
    clock = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"scale: the run with {pairs} pairs failed (exit {done.returncode})")
    marked = [line.split() for line in done.stdout.splitlines() if line.startswith(MARK)]
    own, kids = int(marked[-1][1]), int(marked[-1][2])
    timings = json.loads((study / "study.json").read_text())["timings"]
    return {
        "pairs": pairs,
        "wall_s": wall,
        "extract_s": timings["extract_s"],
        "pairs_per_s": pairs / timings["extract_s"] if timings["extract_s"] > 0 else float("nan"),
        "analyze_s": timings.get("analyze_s", float("nan")),
        "peak_rss_mib": rss_mib(max(own, kids)),
    }


def table(rows: list[dict]) -> str:
    lines = [
        f"{'pairs':>7} {'wall s':>8} {'extract s':>10} {'pairs/s':>8} {'analyze s':>10} {'peak RSS MiB':>13}"
    ]
    for row in rows:
        lines.append(
            f"{row['pairs']:>7d} {row['wall_s']:>8.1f} {row['extract_s']:>10.1f} "
            f"{row['pairs_per_s']:>8.1f} {row['analyze_s']:>10.1f} {row['peak_rss_mib']:>13.0f}"
        )
    smallest, largest = min(rows, key=lambda r: r["pairs"]), max(rows, key=lambda r: r["pairs"])
    lines.append(
        f"peak RSS at {largest['pairs']} vs {smallest['pairs']} pairs: "
        f"{largest['peak_rss_mib'] / smallest['peak_rss_mib']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[500, 2000],
                        help="pair counts to run (default 500 2000)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the assets and the studies (default: a temporary one, removed)")
    parser.add_argument("--smoke", action="store_true",
                        help="16 and 32 pairs with 200 permutations and resamples: a quick check")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--goals", action="store_true",
                        help="the real-scale goals at 7B widths instead (benchmarks/scale_goals.py)")
    args = parser.parse_args(argv)
    if args.goals:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import scale_goals

        return scale_goals.main([*(["--out", str(args.out)] if args.out else []),
                                 *(["--json", str(args.json)] if args.json else [])])
    pairs = sorted(set([16, 32] if args.smoke else args.pairs))
    if not pairs or min(pairs) < 2:
        parser.error("--pairs: give pair counts of at least 2")
    extra = ["--permutations", "200", "--bootstrap", "200"] if args.smoke else []

    from workload import working_folder

    with working_folder(args.out, "modalscope-scale-") as root:
        clock = time.perf_counter()
        assets = build_assets(root, max(pairs))  # several captions per image: enough pairs
        print(f"assets: {max(pairs)} images in {time.perf_counter() - clock:.1f} s ({root / 'assets'})",
              flush=True)
        rows = []
        for count in pairs:
            rows.append(run_once(root / f"study-{count}", assets, count, extra))
            row = rows[-1]
            print(f"{count} pairs: {row['wall_s']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB",
                  flush=True)
        print()
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
