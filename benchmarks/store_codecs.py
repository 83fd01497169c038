"""Which compressor the activation store uses, by measurement: bytes on disk and write speed.

Why: at LLaVA-1.5-7B widths a pair's reductions are ~1.5 MB per layer (5 reductions x 5
streams x 15,104 neurons x 4 bytes) and a GPU records ~45 pairs/s, so the store must
compress ~2 GB/s on few host cores or the GPU waits. Activations are float noise in their
mantissas; what compresses is the exponent and sign bytes, which a byte shuffle groups.

Writes windows of [inputs, 1 layer, 11,008 neurons] (heavy-tailed values like an MLP's, float32
and float16) into a zarr v3 array with each codec, one thread, and prints per codec the
compression ratio and the host-core seconds per pair per 32 layers at 7B widths (the
extraction's write budget). `--smoke`: a small window, for the test suite.

    .venv/bin/python benchmarks/store_codecs.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, ZstdCodec

WIDTH = 11_008
RAW_PER_PAIR = 5 * 5 * (4096 + 11008) * 32  # values per pair at 7B widths, 32 layers

CODECS = {
    "zstd-0 (zarr default)": [ZstdCodec(level=0)],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)],
    "blosc-zstd1-shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle)],
    "blosc-lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)],
    "none": [],
}


def activations(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 1.0, size=WIDTH)  # neurons differ in scale
    values = rng.standard_t(4, size=(n, 1, WIDTH)) * scale
    return values.astype(dtype)


def measure(name: str, data: np.ndarray, repeats: int) -> tuple[float, float]:
    import numcodecs

    numcodecs.blosc.set_nthreads(1)
    times, ratio = [], float("nan")
    for _ in range(repeats):
        root = Path(tempfile.mkdtemp())
        try:
            array = zarr.create_array(str(root / "a.zarr"), shape=data.shape, chunks=(16, 1, WIDTH),
                                      dtype=data.dtype, compressors=CODECS[name] or None,
                                      serializer=BytesCodec(), zarr_format=3)
            clock = time.process_time()
            array[:] = data
            times.append(time.process_time() - clock)
            disk = sum(p.stat().st_size for p in (root / "a.zarr").rglob("c/**/*") if p.is_file())
            ratio = disk / data.nbytes
        finally:
            shutil.rmtree(root)
    return statistics.median(times), ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    inputs, repeats = (32, 1) if args.smoke else (args.inputs, args.repeats)
    zarr.config.set({"threading.max_workers": 1})
    print(f"{'codec':24} {'dtype':8} {'size/raw':>9} {'CPU-s/pair@7B':>14}")
    for dtype in ("float32", "float16"):
        data = activations(inputs, dtype)
        for name in CODECS:
            seconds, ratio = measure(name, data, repeats)
            per_pair = seconds / (inputs * WIDTH) * RAW_PER_PAIR
            print(f"{name:24} {dtype:8} {ratio:9.3f} {per_pair:14.3f}")


if __name__ == "__main__":
    main()
