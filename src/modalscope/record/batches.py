"""The planned batches, prepared for the model by DataLoader workers: images decoded and
checked against the manifest, captions tokenised, pixels made.

Why in workers: image decoding and the processor's resizing then overlap the forwards. Why the
checks here: a picture that changed since the manifest was made, or an input without content
tokens, must stop the run in one line naming the pair, before anything of it is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from modalscope.data.images import file_sha256, load_rgb
from modalscope.data.manifest import MANIFEST
from modalscope.data.pairs import DataError
from modalscope.models.adapter import first_line
from modalscope.record.inputs import ModelBatch, PromptBuilder


class PairBatches(Dataset):
    """The planned batches, prepared (decoded, tokenised, pixels) for the model.

    Run by DataLoader workers so image decoding overlaps the forwards. A bad input comes back
    as {"error": message} and is raised in the main process, so the user still sees one line
    (a DataLoader would wrap a worker's exception in its traceback).
    """

    def __init__(self, manifest: pd.DataFrame, builder: PromptBuilder, batches: Sequence[np.ndarray],
                 image_text: bool):
        self.manifest, self.builder = manifest, builder
        self.batches = list(batches)
        self.image_text = image_text

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        rows = self.manifest.iloc[self.batches[index]]
        try:
            captions = rows["caption"].tolist()
            images = [open_image(row) for row in rows.itertuples()]
            item = self._prepare(images, captions)
            _check_content(item["text"], rows, "text")
        except DataError as err:
            return {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - a tokenizer/processor failure: name its pair
            return {"error": self._culprit(rows, images, err)}
        return item

    def _prepare(self, images: list[Image.Image], captions: list[str]) -> dict:
        item = {"text": self.builder.text_batch(captions), "image": self.builder.image_batch(images),
                "n": len(captions)}
        if self.image_text:
            item["joint"] = self.builder.image_text_batch(images, captions)
        return item

    def _culprit(self, rows: pd.DataFrame, images: list[Image.Image], err: Exception) -> str:
        """One line naming the first pair of the batch whose inputs fail alone. The manifest's
        pairs passed the same preparation when it was made, so this is a change of model or
        processor since: the line says to start a new study folder."""
        for row, image in zip(rows.itertuples(), images):
            try:
                self._prepare([image], [row.caption])
            except Exception as alone:  # noqa: BLE001
                err = alone
                break
        else:
            row = rows.iloc[0]
        return (f"{row.image_path}: pair {row.pair_id}: cannot prepare the model inputs "
                f"({type(err).__name__}: {first_line(err)}); it passed this check when DIR/{MANIFEST} was "
                "made, so the model or processor changed: start a new --out")


def open_image(row) -> Image.Image:
    """The pair's image, refused when its file is not the one the manifest recorded (`image_sha256`:
    a resume or rerun must not record another picture under the pair; manifests without it are not checked)."""
    try:
        image = load_rgb(row.image_path)
        recorded = getattr(row, "image_sha256", None)
        now = file_sha256(row.image_path) if isinstance(recorded, str) else None
    except (OSError, ValueError) as err:
        raise DataError(f"{row.image_path}: pair {row.pair_id}: cannot read image ({err})") from None
    if now is not None and now != recorded:
        raise DataError(f"{row.image_path}: pair {row.pair_id}: the image changed since DIR/{MANIFEST} was made "
                        f"(sha256 {recorded[:12]}... then, {now[:12]}... now); restore that file, or start a new --out: "
                        "the finished windows are kept, this pair's was not recorded")
    return image


def _check_content(batch: ModelBatch, rows: pd.DataFrame, condition: str) -> None:
    empty = (batch.n_content == 0).nonzero().flatten().tolist()
    if empty:
        row = rows.iloc[empty[0]]
        raise DataError(
            f"pair {row.pair_id}: the {condition} input has no content tokens "
            f"(caption {row.caption!r}); fix or drop this pair"
        )
