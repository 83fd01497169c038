"""Which pairs a study can use: a walk over the shuffled pairs, checking each in full.

Why here, before the manifest: the design is paired, so a pair whose image or caption cannot
be used must be left out of *both* conditions. Checking before any forward keeps the
extraction loop simple (every manifest row is usable) and makes the choice deterministic:
the walk follows the seeded order and stops at the `num_pairs`-th usable pair, so the same
data, seed and `num_pairs` always give the same manifest and the same skip list, and a
larger `num_pairs` extends both.

A pair is usable when the data file raised no problem for it (see data/pairs.py), its
caption has visible text, its image decodes in full with `load_rgb` — the very function
the extraction uses — and, when the study passes its model's `prepare` check, the model's
inputs for the pair can be made (the caption gives content tokens that decode back to it, the
processor accepts the image). So a pair that would fail mid-extraction is skipped here, in
both conditions, instead of stopping every rerun at the same place. Images are decoded by a
thread pool (Pillow releases the GIL while decoding); `prepare` runs one pair at a time (a
tokenizer's padding state is not thread-safe); results are taken in walk order, so threads
never change the outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

from PIL import Image

from tqdm.auto import tqdm

from modalscope.data.images import ImageProblem, file_sha256, load_rgb
from modalscope.data.pairs import Pair, caption_problem

THREADS = 8
MAX_CHUNK = 256  # pairs checked at once; the walk stops within one chunk of its target


# prepare(caption, image) -> why the model's inputs for the pair cannot be made, or None
Prepare = Callable[[str, Image.Image], "str | None"]


def pair_problem(pair: Pair, prepare: Prepare | None = None, lock: threading.Lock | None = None) -> str | None:
    """Why `pair` cannot be used, or None: data-file problems, caption, the image, then the
    model's inputs (`prepare`, under `lock`)."""
    if pair.problem:
        return pair.problem
    problem = caption_problem(pair.caption)
    if problem:
        return problem
    try:
        image = load_rgb(pair.image_path)
    except ImageProblem as err:
        return str(err)
    if prepare is None:
        return None
    with lock or threading.Lock():
        return prepare(pair.caption, image)


def _checked(pair: Pair, check: Callable[[Pair], str | None]) -> tuple[str | None, str | None]:
    """(why `pair` cannot be used or None, the sha256 of its image file when it can)."""
    problem = check(pair)
    if problem is not None:
        return problem, None
    try:
        return None, file_sha256(pair.image_path)
    except OSError as err:  # gone since it decoded
        return f"image file cannot be read ({err.strerror or err})", None


def select_usable(
    pairs: list[Pair], num_pairs: int | None, threads: int = THREADS, progress: bool = False,
    prepare: Prepare | None = None,
) -> tuple[list[Pair], list[tuple[Pair, str]]]:
    """(usable pairs, [(skipped pair, reason)]) in walk order, up to `num_pairs` usable ones.
    Decoding every image of a large study takes minutes, hence the progress bar."""
    check = partial(pair_problem, prepare=prepare, lock=threading.Lock())
    target = len(pairs) if num_pairs is None else num_pairs
    usable: list[Pair] = []
    skipped: list[tuple[Pair, str]] = []
    position = 0
    bar = tqdm(total=min(target, len(pairs)), unit="pair", desc="check pairs", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=threads) as pool:
        while len(usable) < target and position < len(pairs):
            chunk = pairs[position : position + min(MAX_CHUNK, max(16, target - len(usable)))]
            position += len(chunk)
            for pair, (problem, digest) in zip(chunk, pool.map(partial(_checked, check=check), chunk)):
                if len(usable) == target:
                    break
                if problem is None:
                    usable.append(replace(pair, image_sha256=digest))
                    bar.update(1)
                else:
                    skipped.append((pair, problem))
    return usable, skipped
