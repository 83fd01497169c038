"""Loading the study's models for the recording, each refused in one line when it cannot be used.

Why apart from the recording: a model that cannot serve the study (no vision tower, damaged weight
files, a base model whose neurons do not match the VLM's index by index) must be refused before
anything is written to DIR, and these checks are about the model files, not about DIR.
"""

from __future__ import annotations

from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.store import STORE, ActivationStore


def weights_content_started(config: StudyConfig):
    """The content of a local model folder's weight files (models/loading.weights_content), hashed
    in a thread while the model loads; returns the function that waits for it ({} for a hub model,
    pinned by its commit hash). A resumed store's attributes let unchanged files go unread."""
    import threading

    from modalscope.models.loading import weights_content

    folder = Path(config.model).expanduser() if config.model else None
    if folder is None or not folder.is_dir():
        return dict
    store = config.out_dir / STORE
    recorded = ActivationStore.read(store).attrs if (store / "zarr.json").is_file() else None
    result: dict = {}

    def run() -> None:
        try:
            result["content"] = weights_content(folder, recorded)
        except OSError as err:
            result["error"] = err

    thread = threading.Thread(target=run, name="weights-sha256", daemon=True)  # a failed load does not wait
    thread.start()

    def wait() -> dict:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["content"]

    return wait

def load_vlm(config: StudyConfig, ranks):
    """The vision-language model, refused in one line if it has no vision tower."""
    from modalscope.models.loading import load_model  # torch/transformers only when needed

    with weights_checked("--model", config.model):
        loaded = load_model(config.model, config.revision, config.dtype, ranks.device(config.device),
                            config.device_map, config.quantization)
    if not loaded.adapter.has_vision:
        raise ValueError(f"--model {config.model}: a language model without vision ({loaded.provenance['model_type']}): "
                         "the image conditions cannot run on it; pass it as --base-model of its vision-language model")
    return loaded


def weights_problem(err: BaseException) -> str | None:
    """Why a model's weight files cannot be loaded, in one line, for the errors that are the
    files' fault (truncated or damaged safetensors, a pickle holding more than tensors); None for
    anything else (a bug keeps its traceback)."""
    import pickle

    text = " ".join(str(err).split())
    first = text.split(". ")[0][:200]
    if type(err).__name__ == "SafetensorError":
        return (f"a weight file cannot be read ({first}): it is truncated or damaged; download or copy "
                "it again")
    if isinstance(err, pickle.UnpicklingError):
        return ("its pytorch_model.bin is a pickle holding more than tensors, which modalscope refuses to load "
                "(unpickling it could run code); use a safetensors copy of the weights from a trusted source")
    if isinstance(err, EOFError) or (isinstance(err, RuntimeError) and "PytorchStreamReader" in text):
        return f"a weight file cannot be read ({first}): it is truncated or damaged; download or copy it again"
    return None


class weights_checked:
    """`with weights_checked("--model", name):` turns a damaged or refused weight file into a
    one-line ValueError naming the option and the model."""

    def __init__(self, option: str, model: str | None) -> None:
        self.option, self.model = option, model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> None:
        problem = weights_problem(error) if error is not None and isinstance(error, Exception) else None
        if problem is not None:
            raise ValueError(f"{self.option} {self.model}: {problem}") from None


def load_base(config: StudyConfig, loaded, ranks):
    """The base language model, refused in one line unless its neurons match the VLM's:
    the same number of decoder layers and the same width at every site."""
    from modalscope.models.loading import load_model

    with weights_checked("--base-model", config.base_model):
        base = load_model(config.base_model, config.base_revision, config.dtype, ranks.device(config.device),
                          config.device_map, config.quantization)
    if base.adapter.has_vision:
        raise ValueError(f"--base-model {config.base_model}: a vision-language model; give the language model "
                         f"{config.model} was trained from")
    ours = (loaded.adapter.num_layers(loaded.model), [loaded.adapter.width(loaded.model, s) for s in config.sites])
    theirs = (base.adapter.num_layers(base.model), [base.adapter.width(base.model, s) for s in config.sites])
    if ours != theirs:
        raise ValueError(f"--base-model {config.base_model}: {theirs[0]} layers of widths {theirs[1]} "
                         f"({', '.join(config.sites)}), {config.model} has {ours[0]} of {ours[1]}: "
                         "its neurons cannot be matched index by index")
    return base


def base_check(config: StudyConfig, builder, base):
    """captions -> None, or a one-line ValueError where the base model's tokenizer would read the
    VLM's text inputs (the template, then each caption) differently: the base gets the VLM's
    token ids, which must be the same text to it."""
    from modalscope.record.inputs import BaseTokens

    tokens = BaseTokens(builder, base.processor.tokenizer) if base is not None else None

    def check(captions: list[str]) -> None:
        where = tokens.mismatch(captions) if tokens is not None else None
        if where:
            raise ValueError(f"--base-model {config.base_model}: its tokenizer reads {where} differently from "
                             f"{config.model}'s, so the same token ids would not be the same text")

    return check

