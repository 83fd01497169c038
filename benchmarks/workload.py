"""What every CPU contender runs on: one checkpoint, one batch of pairs, and how we measure.

Why: the comparison is only fair if the model, the inputs and the measurement are shared.
The checkpoint is a from-config LLaVA with random weights (fixed seed) written once by
`modalscope.models.tiny.build_tiny_llava` (sizes `MID` for the benchmark, `TINY` for the
smoke run) and loaded by every contender via `from_pretrained`. The inputs are pairs of the
synthetic COCO set, turned into a text batch and an image batch by modalscope's
`PromptBuilder` once, before any timing (image decoding is not timed for anyone).

Peak memory is read from /proc/self/status (VmHWM, the resident high-water mark), reset by
writing 5 to /proc/self/clear_refs (Linux >= 4.0), so a process can measure the peak of one
phase; where that is not possible we fall back to `ru_maxrss` (the whole process's peak).
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def build_assets(cache: Path, sizes: str, n_pairs: int) -> tuple[Path, list[tuple[str, Path]]]:
    """(checkpoint folder, [(caption, image path)] * n_pairs), built once under `cache`."""
    from modalscope.data.synthetic import build_synthetic_coco
    from modalscope.models import tiny

    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # the cache never shows up in version control
    annotations = build_synthetic_coco(cache / "coco", n_images=max(n_pairs, 16))
    coco = json.loads(annotations.read_text())
    corpus = [a["caption"] for a in coco["annotations"]]
    preset = {"mid": tiny.MID, "tiny": tiny.TINY}[sizes]
    model_dir = tiny.build_tiny_llava(cache / f"{sizes}-llava", corpus, seed=0, sizes=preset)
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    images = cache / "coco" / "images"
    pairs, seen = [], set()
    for a in coco["annotations"]:  # one caption per image, in file order
        if a["image_id"] not in seen:
            seen.add(a["image_id"])
            pairs.append((a["caption"], images / files[a["image_id"]]))
    return model_dir, pairs[:n_pairs]


def make_batches(loaded, pairs: list[tuple[str, Path]]):
    """(text batch, image batch): ModelBatch objects with content masks, on the model's device."""
    from modalscope.data.images import load_rgb
    from modalscope.record.inputs import PromptBuilder

    builder = PromptBuilder(loaded.processor, loaded.model.config.image_token_id, "content")
    text = builder.text_batch([caption for caption, _ in pairs])
    image = builder.image_batch([load_rgb(str(path)) for _, path in pairs])
    return text.to(loaded.device), image.to(loaded.device)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset this process's resident high-water mark; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return float("nan") if kib is None else kib / 1024


def peak_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the whole process's peak (bytes on macOS)
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib / 1024 if sys.platform == "darwin" else kib
    return kib / 1024


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextmanager
def working_folder(out: Path | None, prefix: str) -> Iterator[Path]:
    """`out`, kept (a rerun can reuse what it holds), or a temporary folder removed afterwards."""
    root = out or Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if out is None:
            shutil.rmtree(root, ignore_errors=True)
