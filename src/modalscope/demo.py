"""The embedded default study: a tiny LLaVA and a synthetic COCO set, built once, offline.

Why: `make demo` must show the whole method on any laptop with no model hub. The assets
are built into DIR/assets the first time and reused; the study then loads them through
the same `from_pretrained` and COCO-loader calls a real study uses.

The demo model has random weights, so its numbers say nothing about any trained model. Its
folder carries a note saying so (`RANDOM_WEIGHTS`, beside config.json: not part of the weights'
fingerprint), and the report and `modalscope run` read it to say so in their titles.
"""

from __future__ import annotations

import json
from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.data.synthetic import build_synthetic_coco


RANDOM_WEIGHTS = "modalscope-random-weights.json"
RANDOM_WEIGHTS_TITLE = "demo model with random weights: its numbers say nothing about any trained model"


def mark_random_weights(model_dir: Path, built_by: str = "modalscope demo", note: str = RANDOM_WEIGHTS_TITLE) -> Path:
    """Write the note that `model_dir` holds random weights (idempotent); `note` is what the
    report's title and the printed summary say of the model."""
    path = Path(model_dir) / RANDOM_WEIGHTS
    text = json.dumps({"random_weights": True, "built_by": built_by, "note": note}) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def has_random_weights(model: str | Path | None) -> bool:
    """Whether `model` is a local folder that the demo marked as random weights."""
    return model is not None and (Path(str(model)) / RANDOM_WEIGHTS).is_file()


def random_weights_note(model: str | Path | None) -> str | None:
    """What the note of a random-weight folder says of it (demo or `modalscope shrink`), else None."""
    if not has_random_weights(model):
        return None
    try:
        return str(json.loads((Path(str(model)) / RANDOM_WEIGHTS).read_text(encoding="utf-8"))["note"])
    except (OSError, ValueError, KeyError, TypeError):
        return RANDOM_WEIGHTS_TITLE


def build_demo_assets(out_dir: Path, n_images: int = 240) -> tuple[Path, Path, Path]:
    """(model dir, captions JSON, image folder) under DIR/assets, built if missing."""
    from modalscope.models.tiny import build_tiny_llava

    assets = Path(out_dir) / "assets"
    captions = build_synthetic_coco(assets / "coco", n_images=n_images)
    corpus = [a["caption"] for a in json.loads(captions.read_text())["annotations"]]
    model_dir = build_tiny_llava(assets / "tiny-llava", corpus)
    mark_random_weights(model_dir)
    return model_dir, captions, assets / "coco" / "images"


def demo_config(out_dir: Path, **overrides: object) -> StudyConfig:
    model_dir, captions, images = build_demo_assets(Path(out_dir))
    from modalscope.data.synthetic import INSTANCES_NAME

    # the drawn world's colour, shape and count labels: the concepts of the demo (stats/concepts.py)
    instances = Path(out_dir) / "assets" / "coco" / INSTANCES_NAME
    settings: dict = {"model": str(model_dir), "captions": captions, "images": images,
                      "device": "cpu", "batch_size": 16, "instances": instances if instances.exists() else None}
    settings.update(overrides)
    return StudyConfig(out_dir=Path(out_dir), **settings)
