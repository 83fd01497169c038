"""Image-caption pairs from an MSCOCO captions file or a JSONL file.

Why: a study is defined by its pairs. COCO gives several captions per image; we keep one,
chosen deterministically (the annotation with the lowest id) and recorded by its
annotation id, so a pair always means the same image and the same sentence.

Two kinds of bad input, two outcomes. A file that cannot be read as a whole (not JSON, not
UTF-8, a COCO file without `images`, a JSONL line that is not a pair record) raises a
one-line `DataError` naming the file and the line or entry. A pair that is readable but
unusable (empty caption, annotation of an image `images` does not list, an image id listed
twice with different files, a pair id used twice for different pairs) is still returned,
with `problem` saying why; the manifest walk skips it and lists it in DIR/skipped.parquet.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, the pair and the problem."""


@dataclass(frozen=True)
class Pair:
    pair_id: str
    image_path: str  # absolute path ("" when the data names no file)
    caption: str
    caption_id: int | None = None  # COCO annotation id of the chosen caption
    problem: str | None = None  # why the pair cannot be used, known from the data file alone
    concepts: tuple[str, ...] | None = None  # concept labels (--instances, JSONL `concepts`); None: unlabelled
    image_sha256: str | None = None  # of the image file's bytes, set when the pair is checked (validate.py)
    extra: tuple[tuple[str, str], ...] = ()  # a JSONL line's other fields (name, text): manifest columns


# JSONL keys read as the pair itself, and the manifest's own columns: never an extra column.
RESERVED = frozenset({"image", "caption", "id", "concepts", "input_index", "pair_id", "image_path", "caption_id",
                      "image_sha256", "extra"})


def _extra(record: dict) -> tuple[tuple[str, str], ...]:
    """A JSONL line's other fields as (name, text): strings as they are, anything else as JSON;
    text Parquet cannot hold (a lone surrogate) is escaped."""
    return tuple((key, (value if isinstance(value, str) else json.dumps(value)).encode(
        "utf-8", "backslashreplace").decode("utf-8")) for key, value in record.items()
        if key.strip() and key not in RESERVED and value is not None)


def caption_problem(caption: Any) -> str | None:
    """Why a caption cannot be a text input, or None. Unicode of any script is fine."""
    if not isinstance(caption, str):
        return f"caption is not text ({_json_type(caption)})"
    if caption == "":
        return "caption is empty"
    if not caption.strip():
        return "caption is whitespace only"
    if not any(unicodedata.category(ch)[0] in "LMNPS" for ch in caption):
        return "caption has no visible characters"
    lone = next((i for i, ch in enumerate(caption) if unicodedata.category(ch) == "Cs"), None)
    if lone is not None:  # JSON allows "\ud800"; no tokenizer (or Parquet) can encode it
        return (f"caption is not valid Unicode: a lone surrogate U+{ord(caption[lone]):04X} at character "
                f"{lone} (a broken \\u escape in the data file)")
    return None


def load_coco(captions_json: Path, images_dir: Path, instances: Path | None = None) -> list[Pair]:
    """One pair per image that has at least one caption, in image-id order. With `instances`
    (a COCO instances file, e.g. instances_val2017.json) each pair carries the names of the
    object categories present in its image as its concepts (concepts.py)."""
    captions_json = Path(captions_json)
    labels = load_instances(instances) if instances is not None else None
    data = _read_json(captions_json)
    if not isinstance(data, dict):
        raise DataError(f"{captions_json}: holds a JSON {_json_type(data)}, not a COCO captions object")
    if "annotations" not in data and isinstance(data.get("images"), list) and any(
            isinstance(image, dict) and "sentences" in image for image in data["images"][:1]):
        raise DataError(f"{captions_json}: a Karpathy split file (images with 'sentences'), not a COCO captions "
                        "file; give --captions the COCO annotations file (e.g. annotations/captions_val2017.json), "
                        'or write the pairs as JSONL ({"image": ..., "caption": ...} per line) for --jsonl')
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(f"{captions_json}: missing '{key}' (not a COCO captions file)")
        if not isinstance(data[key], list):
            raise DataError(f"{captions_json}: '{key}' is a {_json_type(data[key])}, not a list")
    files: dict[int, list[str]] = {}
    for i, image in enumerate(data["images"]):
        where = f"{captions_json}: images[{i}]"
        image_id = _int_field(image, "id", where)
        name = _field(image, "file_name", where)
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: 'file_name' is {name!r}, not a file name")
        files.setdefault(image_id, [])
        if name not in files[image_id]:
            files[image_id].append(name)
    chosen: dict[int, tuple[int, int, Any]] = {}  # image id -> (annotation id, index, caption)
    for i, ann in enumerate(data["annotations"]):
        where = f"{captions_json}: annotations[{i}]"
        image_id, ann_id = _int_field(ann, "image_id", where), _int_field(ann, "id", where)
        caption = _field(ann, "caption", where)
        if image_id not in chosen or (ann_id, i) < chosen[image_id][:2]:
            chosen[image_id] = (ann_id, i, caption)
    pairs = []
    for image_id in sorted(chosen):
        ann_id, _, caption = chosen[image_id]
        names = files.get(image_id)
        path, problem = "", None
        if names is None:
            problem = f"annotation {ann_id} points to image id {image_id}, which 'images' does not list"
        else:
            path, problem = _image_path(Path(images_dir) / names[0])
            if problem is None and len(names) > 1:
                problem = (f"image id {image_id} is listed in 'images' with {len(names)} different "
                           f"files ({', '.join(names)})")
        pairs.append(
            Pair(
                pair_id=str(image_id),
                image_path=path,
                caption=caption.strip() if isinstance(caption, str) else "",
                caption_id=ann_id,
                problem=problem or caption_problem(caption),
                concepts=labels.get(image_id, () if labels.listed is None else None) if labels is not None else None,
            )
        )
    return pairs


class InstanceLabels(dict):
    """{image id: sorted category names present}; `listed`: the image ids the file's `images`
    lists (None without one), so an image it does not list is unlabelled, not concept-free."""

    listed: set[int] | None = None


def load_instances(path: Path) -> InstanceLabels:
    """The category names present in each image of a COCO instances file (`categories`,
    `annotations` with image_id and category_id; `images` optional): an image listed without
    annotations has none (an empty tuple). A file that cannot be read is a one-line DataError."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a JSON {_json_type(data)}, not a COCO instances object")
    for key in ("categories", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no '{key}' list (not a COCO instances file)")
    names: dict[int, str] = {}
    for i, category in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        name = _field(category, "name", where)
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'name' is {name!r}, not a category name")
        names[_int_field(category, "id", where)] = name.strip()
    present: dict[int, set[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        category = _int_field(ann, "category_id", where)
        if category not in names:
            raise DataError(f"{where}: category_id {category} is not in 'categories'")
        present.setdefault(_int_field(ann, "image_id", where), set()).add(names[category])
    labels = InstanceLabels()
    if isinstance(data.get("images"), list):
        labels.listed = {_int_field(image, "id", f"{path}: images[{i}]") for i, image in enumerate(data["images"])}
        labels.update({image_id: () for image_id in labels.listed})
    labels.update({image_id: tuple(sorted(found)) for image_id, found in present.items()})
    return labels


def load_jsonl(path: Path) -> list[Pair]:
    """Lines of {"image": path, "caption": text, "id": ...}; image paths are relative to the file."""
    path = Path(path)
    pairs, lines = [], []
    with _open(path) as raw_lines:
        for number, raw in enumerate(raw_lines, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: not UTF-8 text (byte {err.start}); fix or delete the line") from None
            if not line.strip():
                continue
            record = _json_line(line.rstrip("\r\n"), where, first=not pairs and not lines)
            image, caption = record["image"], record["caption"]
            pair_id = record.get("id")
            concepts = _concepts(record.get("concepts"), where)
            if pair_id is None:
                pair_id = number
            elif isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)):
                raise DataError(f"{where}: 'id' is a {_json_type(pair_id)}; give a string or an integer")
            problem = None if isinstance(image, str) and image else (
                f"'image' is {_json_type(image) if not isinstance(image, str) else 'empty'}, not a file path")
            image_path = ""
            if problem is None:
                image_path, problem = _image_path(path.parent / image)
            pairs.append(
                Pair(
                    pair_id=str(pair_id),
                    image_path=image_path,
                    caption=caption.strip() if isinstance(caption, str) else "",
                    problem=problem or caption_problem(caption),
                    concepts=concepts,
                    extra=_extra(record),
                )
            )
            lines.append(number)
    return _one_pair_per_id(pairs, lines)


def _image_path(path: Path) -> tuple[str, str | None]:
    """The absolute, resolved image path, or (the unresolved absolute path, why not): a symlink
    loop (or a path the OS cannot resolve) makes that one pair unusable, not the whole study."""
    try:
        return str(path.resolve()), None
    except (RuntimeError, OSError) as err:  # Python <= 3.12: RuntimeError('Symlink loop from ...')
        reason = "a symlink loop" if "loop" in str(err).lower() or getattr(err, "errno", None) == 40 \
            else f"cannot be resolved ({' '.join(str(err).split())})"
        return str(path.absolute()), f"image path is {reason}"


def _one_pair_per_id(pairs: list[Pair], lines: list[int]) -> list[Pair]:
    """A repeated id: identical repeats collapse to the first; differing ones are all unusable."""
    by_id: dict[str, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_id.setdefault(pair.pair_id, []).append(index)
    kept = []
    for index, pair in enumerate(pairs):
        same = by_id[pair.pair_id]
        if len(same) == 1:
            kept.append(pair)
            continue
        if len({(pairs[i].image_path, pairs[i].caption) for i in same}) == 1:
            if index == same[0]:
                kept.append(pair)
            continue
        numbers = ", ".join(str(lines[i]) for i in same)
        problem = pair.problem or f"pair id {pair.pair_id!r} is used for different pairs (lines {numbers})"
        kept.append(replace(pair, problem=problem))
    return kept


def _concepts(value: Any, where: str) -> tuple[str, ...] | None:
    """A JSONL line's `concepts` (a list of names) as a sorted tuple; absent or null: unlabelled."""
    if value is None:
        return None
    bad = next((v for v in value if not isinstance(v, str) or not v.strip()), None) if isinstance(value, list) else None
    if not isinstance(value, list) or bad is not None:
        what = f"holds {json.dumps(bad)}" if isinstance(value, list) else f"is {_json_type(value)}"
        raise DataError(f"{where}: 'concepts' {what}; give a list of concept names, "
                        'e.g. ["dog", "red"]; fix or delete the line')
    return tuple(sorted({v.strip() for v in value}))


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # utf-8-sig counts after the BOM
        start = err.start + bom
        line = raw.count(b"\n", 0, start) + 1
        begin = max(raw.rfind(b"\n", 0, start) + 1, bom)
        column = len(raw[begin:start].decode("utf-8", errors="replace")) + 1
        raise DataError(f"{path}: not UTF-8 text (line {line}, column {column}: byte 0x{raw[start]:02x}); "
                        "save it as UTF-8") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from None


def _open(path: Path):
    try:
        return path.open("rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _json_line(line: str, where: str, first: bool = False) -> dict:
    expected = '{"image": ..., "caption": ..., "id": ...}'
    if first and line.lstrip().startswith("["):  # a whole file that is one JSON array is not JSONL
        raise DataError(f"{where}: a JSON array; --jsonl takes one {expected} object per line (JSON Lines), "
                        f"not a JSON array (convert it: jq -c '.[]' {where.rsplit(', line', 1)[0]} > pairs.jsonl); "
                        "a COCO captions file goes to --captions")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON (column {err.colno}: {err.msg}); expected {expected}; "
                        "fix or delete the line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON {_json_type(record)}; expected {expected}; fix or delete the line")
    for key in ("image", "caption"):
        if key not in record:
            raise DataError(f"{where}: no '{key}'; expected {expected}; fix or delete the line")
    return record


def _field(entry: Any, key: str, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: a JSON {_json_type(entry)}, not an object")
    if key not in entry:
        raise DataError(f"{where}: no '{key}'")
    return entry[key]


def _int_field(entry: Any, key: str, where: str) -> int:
    value = _field(entry, key, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise DataError(f"{where}: '{key}' is {value!r}, not an integer")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__
