"""A small synthetic image-caption dataset in the MSCOCO captions format.

Why this exists: modalscope compares how a vision-language model's neurons
respond to the text half and the image half of a caption pair. That comparison
is only meaningful when both halves carry the same content, and it must run
offline and reproducibly (tests, CI, the embedded default of the tool). Real
MSCOCO cannot be shipped or downloaded there, so this module draws a stand-in:
simple coloured shapes on plain backgrounds, each image with three captions
that are *true* of it (shape kind, colour, count and, for a single shape, its
position are computed from what was actually drawn).

The output uses the real COCO captions schema (``info``, ``licenses``,
``images``, ``annotations``) so the same loader reads it and real MSCOCO. Each
image entry carries one extra key, ``scene``, describing what was drawn::

    {"background": "white",
     "shapes": [{"kind": "circle", "color": "red",
                 "bbox": [x0, y0, x1, y1], "center": [cx, cy]}, ...],
     "position": "in the top left corner"}   # null when there are 2-4 shapes

``center`` is a point inside the filled shape (the centroid for triangles), and
``bbox`` is inclusive pixel bounds; shapes never overlap and stay at least
``MARGIN`` pixels away from the image border, so the corners show background.

Beside ``annotations/``, ``instances_demo.json`` holds each image's concept labels (the colour,
shape and number word its captions state; ``scene_concepts``) in the COCO instances format, so
``--instances`` reads them as it reads COCO's object categories (concepts.py).

Building is deterministic (a seeded ``random.Random``, no global state) and
safe against interruption: images are written first and the JSON last, via a
temporary file and ``os.replace``; an existing annotations file is returned
as-is.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (245, 215, 40),
    "orange": (245, 135, 30),
    "purple": (135, 60, 175),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
POSITIONS: dict[tuple[int, int], str] = {  # (row, col) of the 3x3 grid
    (0, 0): "in the top left corner", (0, 1): "at the top", (0, 2): "in the top right corner",
    (1, 0): "on the left", (1, 1): "at the center", (1, 2): "on the right",
    (2, 0): "in the bottom left corner", (2, 1): "at the bottom", (2, 2): "in the bottom right corner",
}
INSTANCES_NAME = "instances_demo.json"  # the concept labels, beside annotations/ (COCO instances format)
MARGIN = 8  # min distance (px) of any shape from the border and from each other
MIN_CONTRAST = 160.0  # min RGB distance between shape and background colours
ANNOTATIONS_NAME = "captions_demo.json"

SINGLE_TEMPLATES: tuple[str, ...] = (
    "{A_color} {shape} {pos} on {a_bg} background.",
    "A picture of {a_color} {shape} {pos}.",
    "One {color} {shape} {pos} of the image.",
    "An image showing a single {color} {shape} {pos}, on {a_bg} background.",
    "There is {a_color} {shape} {pos} of this {bg} picture.",
)
MULTI_TEMPLATES: tuple[str, ...] = (
    "{Num} {color} {shapes} on {a_bg} background.",
    "A picture of {num} {color} {shapes}.",
    "There are {num} {color} {shapes} in this image.",
    "An image with {num} {color} {shapes} against {a_bg} background.",
    "{Num} {shapes}, all of them {color}, on {a_bg} background.",
)


def _article(word: str) -> str:
    """``word`` preceded by 'a' or 'an'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def grid_cell(center: tuple[float, float], size: int) -> tuple[int, int]:
    """(row, col) of the 3x3 grid cell containing ``center`` in a ``size`` image."""
    cx, cy = center
    return (min(2, int(3 * cy / size)), min(2, int(3 * cx / size)))


def _color_distance(a: str, b: str) -> float:
    return math.dist(PALETTE[a], PALETTE[b])


def _pick_colors(rng: random.Random) -> tuple[str, str]:
    """(shape colour, background colour) that are clearly distinct."""
    names = list(PALETTE)
    while True:
        color, bg = rng.choice(names), rng.choice(names)
        if _color_distance(color, bg) >= MIN_CONTRAST:
            return color, bg


def _overlaps(a: list[int], b: list[int]) -> bool:
    return not (a[2] + MARGIN < b[0] or b[2] + MARGIN < a[0]
                or a[3] + MARGIN < b[1] or b[3] + MARGIN < a[1])


def _single_center(rng: random.Random, half: int, size: int) -> tuple[int, int]:
    """Centre for a lone shape, placed clearly inside one of the 9 grid cells."""
    row, col = rng.randrange(3), rng.randrange(3)
    cell = size / 3
    lo, hi = half + MARGIN, size - 1 - half - MARGIN
    jitter = cell / 4
    cx = round(min(hi, max(lo, (col + 0.5) * cell + rng.uniform(-jitter, jitter))))
    cy = round(min(hi, max(lo, (row + 0.5) * cell + rng.uniform(-jitter, jitter))))
    return cx, cy


def _place(rng: random.Random, count: int, size: int) -> list[list[int]]:
    """Non-overlapping square bboxes ``[x0, y0, x1, y1]`` fully inside the image."""
    if count == 1:
        half = rng.randint(size * 11 // 100, size * 21 // 100)
        cx, cy = _single_center(rng, half, size)
        return [[cx - half, cy - half, cx + half, cy + half]]
    top = size * 14 // 100
    while True:  # shrink the size range until a rejection-sampled layout fits
        boxes: list[list[int]] = []
        for _ in range(200):
            half = rng.randint(size * 8 // 100, top)
            cx = rng.randint(half + MARGIN, size - 1 - half - MARGIN)
            cy = rng.randint(half + MARGIN, size - 1 - half - MARGIN)
            box = [cx - half, cy - half, cx + half, cy + half]
            if not any(_overlaps(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return boxes
        top = max(size * 8 // 100, top - 2)


def _star_points(box: list[int]) -> list[tuple[float, float]]:
    cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else 0.45 * r
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _shape_center(kind: str, box: list[int]) -> list[int]:
    """A point well inside the filled shape (triangle: centroid)."""
    cx = (box[0] + box[2]) // 2
    if kind == "triangle":
        return [cx, round((box[1] + 2 * box[3]) / 3)]
    return [cx, (box[1] + box[3]) // 2]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: list[int], rgb: tuple[int, int, int]) -> None:
    if kind == "circle":
        draw.ellipse(box, fill=rgb)
    elif kind == "square":
        draw.rectangle(box, fill=rgb)
    elif kind == "triangle":
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=rgb)
    elif kind == "star":
        draw.polygon(_star_points(box), fill=rgb)
    else:
        raise ValueError(f"unknown shape kind: {kind!r}")


SIZE_WORDS: tuple[str, ...] = ("small", "large")
# Half-widths (fraction of the image side) of a "small" and a "large" shape, alone and among 2-4.
_SIZE_RANGES = {1: {"small": (0.10, 0.13), "large": (0.20, 0.25)},
                2: {"small": (0.07, 0.09), "large": (0.12, 0.15)}}


def _place_sized(rng: random.Random, count: int, size: int, size_word: str) -> list[list[int]]:
    """`_place` with every shape's half-width drawn from the range of `size_word`."""
    lo, hi = _SIZE_RANGES[1 if count == 1 else 2][size_word]
    if count == 1:
        half = rng.randint(round(size * lo), round(size * hi))
        cx, cy = _single_center(rng, half, size)
        return [[cx - half, cy - half, cx + half, cy + half]]
    while True:
        boxes: list[list[int]] = []
        for _ in range(400):
            half = rng.randint(round(size * lo), round(size * hi))
            cx = rng.randint(half + MARGIN // 2, size - 1 - half - MARGIN // 2)
            cy = rng.randint(half + MARGIN // 2, size - 1 - half - MARGIN // 2)
            box = [cx - half, cy - half, cx + half, cy + half]
            if not any(_overlaps(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == count:
                    return boxes


def make_world_scene(rng: random.Random, size: int) -> dict:
    """The richer drawn world the trained demo VLM learned (issue 25): `make_scene` plus a size
    class ("small"/"large", shared by the scene's 1-4 shapes, of clearly separated extents)."""
    color, bg = _pick_colors(rng)
    kind = rng.choice(KINDS)
    size_word = rng.choice(SIZE_WORDS)
    boxes = _place_sized(rng, rng.randint(1, 4), size, size_word)
    shapes = [{"kind": kind, "color": color, "bbox": box, "center": _shape_center(kind, box)}
              for box in boxes]
    position = POSITIONS[grid_cell(tuple(shapes[0]["center"]), size)] if len(shapes) == 1 else None
    return {"background": bg, "shapes": shapes, "position": position, "size": size_word}


_WORLD_FRAMES: tuple[str, ...] = (
    "{Subject}{where}{ground}.", "A picture of {subject}{where}{ground}.",
    "There {be} {subject}{where}{ground}.", "An image showing {subject}{where}{ground}.",
    "This image shows {subject}{where}{ground}.", "We see {subject}{where}{ground}.",
)


def world_caption(scene: dict, rng: random.Random) -> str:
    """One caption of a world scene from a small grammar: a frame, a subject (number or
    article, an optional size word, the colour, the shape), an optional position (one shape)
    and an optional background phrase. Every wording states colour, shape and count."""
    shapes = scene["shapes"]
    count, kind, color = len(shapes), shapes[0]["kind"], shapes[0]["color"]
    size_word = scene.get("size") if rng.random() < 0.6 else None
    body = " ".join(w for w in (size_word, color, kind + ("s" if count > 1 else "")) if w)
    if count == 1:
        lead = rng.choice(("one", "a single", _article(body.split()[0]).split()[0]))
    else:
        lead = NUMBER_WORDS[count]
    subject = f"{lead} {body}"
    where = f" {scene['position']}" if scene.get("position") and rng.random() < 0.7 else ""
    ground = ""
    if rng.random() < 0.6:
        ground = rng.choice((" on {a} background", " against {a} background")).format(a=_article(scene["background"]))
    frame = rng.choice(_WORLD_FRAMES)
    text = frame.format(Subject=subject[0].upper() + subject[1:], subject=subject,
                        be="is" if count == 1 else "are", where=where, ground=ground)
    return text


def world_captions(scene: dict, rng: random.Random, k: int = 3) -> list[str]:
    """`k` distinct captions of a world scene (`world_caption`), each true of it."""
    out: list[str] = []
    for _ in range(50 * k):
        caption = world_caption(scene, rng)
        if caption not in out:
            out.append(caption)
        if len(out) == k:
            break
    return out


def make_scene(rng: random.Random, size: int) -> dict:
    """Randomly choose what one image shows: background, shapes and position."""
    color, bg = _pick_colors(rng)
    kind = rng.choice(KINDS)
    boxes = _place(rng, rng.randint(1, 4), size)
    shapes = [{"kind": kind, "color": color, "bbox": box, "center": _shape_center(kind, box)}
              for box in boxes]
    position = None
    if len(shapes) == 1:
        position = POSITIONS[grid_cell(tuple(shapes[0]["center"]), size)]
    return {"background": bg, "shapes": shapes, "position": position}


def render_scene(scene: dict, size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    image = Image.new("RGB", (size, size), PALETTE[scene["background"]])
    draw = ImageDraw.Draw(image)
    for shape in scene["shapes"]:
        _draw_shape(draw, shape["kind"], shape["bbox"], PALETTE[shape["color"]])
    return image


def captions_for(scene: dict, rng: random.Random, k: int = 3) -> list[str]:
    """``k`` differently worded captions, each true of ``scene``."""
    shapes = scene["shapes"]
    count, kind, color, bg = len(shapes), shapes[0]["kind"], shapes[0]["color"], scene["background"]
    fields = {
        "color": color, "a_color": _article(color), "A_color": _article(color).capitalize(),
        "bg": bg, "a_bg": _article(bg), "shape": kind, "shapes": kind + "s",
        "num": NUMBER_WORDS[count], "Num": NUMBER_WORDS[count].capitalize(),
        "pos": scene["position"],
    }
    templates = SINGLE_TEMPLATES if count == 1 else MULTI_TEMPLATES
    return [t.format(**fields) for t in rng.sample(templates, k)]


def scene_concepts(scene: dict) -> list[str]:
    """The concepts every caption of `scene` states: its shapes' colour, their kind and their
    number, as the captions word them (colour name, singular shape name, number word)."""
    shapes = scene["shapes"]
    concepts = [shapes[0]["color"], shapes[0]["kind"], NUMBER_WORDS[len(shapes)]]
    return concepts + ([scene["size"]] if scene.get("size") else [])


CONCEPT_GROUPS = (("colour", tuple(PALETTE)), ("shape", KINDS), ("count", tuple(NUMBER_WORDS.values())))
WORLD_CONCEPT_GROUPS = CONCEPT_GROUPS + (("size", SIZE_WORDS),)


def concept_instances(captions_json: Path) -> Path:
    """Write (once) the concept labels of a synthetic set as a COCO instances file,
    `root/instances_demo.json` beside `root/annotations/`: one category per colour, shape and
    number word (supercategory colour, shape, count) and one annotation per image and concept
    (`scene_concepts`), read from the scenes the captions file records. Pass it as
    `--instances` to label the pairs with them (concepts.py). Returns its path."""
    captions_json = Path(captions_json)
    path = captions_json.parent.parent / INSTANCES_NAME
    if path.exists():
        return path
    data = json.loads(captions_json.read_text(encoding="ascii"))
    groups = WORLD_CONCEPT_GROUPS if any("size" in image["scene"] for image in data["images"]) else CONCEPT_GROUPS
    categories = [{"id": i, "name": name, "supercategory": group}
                  for i, (group, name) in enumerate(((g, n) for g, names in groups for n in names), start=1)]
    ids = {c["name"]: c["id"] for c in categories}
    annotations = [{"id": 0, "image_id": image["id"], "category_id": ids[name]}
                   for image in data["images"] for name in scene_concepts(image["scene"])]
    for number, ann in enumerate(annotations, start=1):
        ann["id"] = number
    images = [{"id": image["id"], "file_name": image["file_name"]} for image in data["images"]]
    _write_json_atomic(path, {"info": {"description": "modalscope synthetic shapes: concept labels "
                                       "(colour, shape, count) in the COCO instances format"},
                              "images": images, "annotations": annotations, "categories": categories})
    return path


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=True) + "\n", encoding="ascii")
    os.replace(tmp, path)


def build_synthetic_coco(root: Path, n_images: int = 240, seed: int = 0, image_size: int = 256,
                         world: bool = False) -> Path:
    """Build (once) the synthetic COCO-captions dataset under ``root``.

    ``world=True`` draws the richer world the trained demo VLM learned (`make_world_scene`,
    `world_captions`); its training scenes come from another seed stream
    (`training/shapes_vlm.py`), so a set built here is held out from training.

    Writes ``root/images/000000000001.jpg`` ... and, last,
    ``root/annotations/captions_demo.json``; returns the path of the latter.
    If that file already exists it is returned without redrawing anything.
    """
    root = Path(root)
    ann_path = root / "annotations" / ANNOTATIONS_NAME
    if ann_path.exists():
        concept_instances(ann_path)  # a set built before the concept labels existed gains them
        return ann_path
    if n_images < 1 or image_size < 64:
        raise ValueError("need n_images >= 1 and image_size >= 64")
    (root / "images").mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        scene = (make_world_scene if world else make_scene)(rng, image_size)
        file_name = f"{image_id:012d}.jpg"
        render_scene(scene, image_size).save(root / "images" / file_name, format="JPEG", quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": image_size,
                       "height": image_size, "license": 1, "scene": scene})
        for caption in (world_captions if world else captions_for)(scene, rng):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    payload = {
        "info": {"description": "modalscope synthetic shapes, MSCOCO captions format",
                 "version": "1.0", "contributor": "modalscope", "seed": seed,
                 "n_images": n_images, "image_size": image_size,
                 **({"world": "shapes-world"} if world else {})},
        "licenses": [{"id": 1, "name": "CC0 1.0",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
    }
    (root / INSTANCES_NAME).unlink(missing_ok=True)  # a half-built set's labels may be of other scenes
    _write_json_atomic(ann_path, payload)
    concept_instances(ann_path)
    return ann_path
