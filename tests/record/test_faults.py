"""Faults during extraction: non-finite activations, out of memory, a full or read-only disk,
Ctrl-C. Each stops with one line that says what to do, keeps every finished window, and a
rerun continues to the result of a clean run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from modalscope import StudyConfig
from modalscope.cli import main
from modalscope.record import forwards
from modalscope.record.extract import NONFINITE, ExtractionError
from modalscope.store import ActivationStore
from modalscope.study import extract_stage, prepare_manifest

N = 8


def _config(out, jsonl, model, **extra):
    settings = dict(batch_size=2, sort_window=1, device="cpu", png=False, progress=False,
                    stats=("max", "mean"), conditions=("text", "image"))
    return StudyConfig(out_dir=out, model=str(model), jsonl=jsonl, **{**settings, **extra})


def _cli(out, jsonl, model, *extra):
    return ["extract", "--out", str(out), "--model", str(model), "--jsonl", str(jsonl), "--batch-size", "2",
            "--sort-window", "1", "--device", "cpu", "--quiet", "--stats", "max,mean",
            "--conditions", "text,image", *extra]


def _arrays(out):
    group = zarr.open_group(str(out / "activations.zarr"), mode="r")
    names = [f"{site}/{c}/{s}" for site in group.attrs["sites"] for c in group.attrs["conditions"]
             for s in group.attrs["stats"]] + [f"tokens/{c}" for c in group.attrs["conditions"]]
    return group, {name: group[name][:] for name in names}


def test_fp16_overflow_stops_naming_pairs_and_dtype(tmp_path, make_jsonl, tiny_model_dir):
    from transformers import LlavaForConditionalGeneration

    model_dir = tmp_path / "overflowing"
    shutil.copytree(tiny_model_dir, model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    with torch.no_grad():  # layer 1's MLP now reaches ~1e6: finite in float32, inf in float16
        model.model.language_model.layers[1].mlp.up_proj.weight.mul_(3e4)
    model.save_pretrained(model_dir)
    config = _config(tmp_path / "fp16", make_jsonl(N), model_dir, dtype="float16")
    manifest = prepare_manifest(config)
    with pytest.raises(ExtractionError) as err:
        extract_stage(config, manifest)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("non-finite activations (NaN/inf) for 2 pair(s) of this batch (first: pair "
                              f"{manifest['pair_id'].iloc[0]}, text input, residual layer 1)")
    assert "--dtype float16; fp16 overflows above 65504: rerun with --dtype bfloat16 or float32" in message
    listed = pd.read_parquet(tmp_path / "fp16" / NONFINITE)
    assert set(listed["pair_id"]) == set(manifest["pair_id"].iloc[:2])
    assert set(listed["stream"]) == {"text", "image"} and listed["first_layer"].min() == 1
    assert ActivationStore.open(tmp_path / "fp16/activations.zarr").n_done == 0  # nothing NaN was stored

    fine = _config(tmp_path / "fp32", config.jsonl, model_dir, dtype="float32")
    extract_stage(fine, prepare_manifest(fine))  # the same weights in float32 stay finite
    assert np.isfinite(_arrays(tmp_path / "fp32")[1]["mlp/text/max"]).all()


def _oom_above(monkeypatch, limit):
    """The forward runs out of memory for batches larger than `limit` (what CUDA raises)."""
    real = forwards.reduce_forward

    def reduce_forward(loaded, recorder, batch, streams, k=None):
        if batch.content.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(loaded, recorder, batch, streams, k)

    monkeypatch.setattr(forwards, "reduce_forward", reduce_forward)


def test_out_of_memory_names_the_batch_size_to_try(tmp_path, make_jsonl, tiny_model_dir, monkeypatch):
    _oom_above(monkeypatch, 2)
    config = _config(tmp_path / "oom", make_jsonl(N), tiny_model_dir, batch_size=4)
    with pytest.raises(ExtractionError) as err:
        extract_stage(config, prepare_manifest(config))
    assert str(err.value).startswith("out of memory on cpu at --batch-size 4 (window from pair ")
    assert str(err.value).endswith("rerun the same command with --batch-size 2 or --batch-size auto: "
                                   "the 0 finished pairs are kept")


def test_batch_size_auto_halves_until_it_fits(tmp_path, make_jsonl, tiny_model_dir, monkeypatch):
    jsonl = make_jsonl(N)
    reference = _config(tmp_path / "four", jsonl, tiny_model_dir, batch_size=4, sort_window=2)
    extract_stage(reference, prepare_manifest(reference))
    _oom_above(monkeypatch, 4)
    config = _config(tmp_path / "auto", jsonl, tiny_model_dir, batch_size="auto", sort_window=2)
    extract_stage(config, prepare_manifest(config))  # 16 -> 8 -> 4 on CPU
    group, arrays = _arrays(tmp_path / "auto")
    assert group.attrs["n_done"] == N and group.attrs["batch_size"] == 4
    _, expected = _arrays(tmp_path / "four")
    for name, values in expected.items():  # the same windows as a run at 4: bit-identical
        np.testing.assert_array_equal(arrays[name], values, err_msg=name)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_or_read_only_keeps_the_store_consistent(tmp_path, make_jsonl, tiny_model_dir, monkeypatch,
                                                           capsys, code):
    jsonl = make_jsonl(N)
    assert main(_cli(tmp_path / "clean", jsonl, tiny_model_dir)) == 0
    real = ActivationStore.append
    calls = []

    def append(self, records, n_tokens, pair_ids=None, flags=None):  # the third window fails half-way through
        calls.append(1)
        if len(calls) == 3:
            self.array("mlp", "text", "max").append(records["text"]["mlp"]["max"], axis=0)
            raise OSError(code, os.strerror(code), str(self.path / "mlp/text/mean/c/4/0/0"))
        return real(self, records, n_tokens, pair_ids, flags)

    monkeypatch.setattr(ActivationStore, "append", append)
    out = tmp_path / "full"
    assert main(_cli(out, jsonl, tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"modalscope: error: {out}/activations.zarr/mlp/text/mean/c/4/0/0: {os.strerror(code)}; "
                   "finished work is kept: fix this and rerun the same command to continue")
    store = ActivationStore.open(out / "activations.zarr")  # trims the half-written window
    assert store.n_done == 4 and store.array("mlp", "text", "max").shape[0] == 4

    monkeypatch.setattr(ActivationStore, "append", real)
    assert main(_cli(out, jsonl, tiny_model_dir)) == 0
    _, done = _arrays(out)
    _, clean = _arrays(tmp_path / "clean")
    for name, values in clean.items():
        np.testing.assert_array_equal(done[name], values, err_msg=name)


def _n_done(store) -> int:
    try:
        return int(json.loads((store / "zarr.json").read_text())["attributes"]["n_done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_ctrl_c_keeps_progress_and_says_how_to_resume(tmp_path, make_jsonl, tiny_model_dir):
    jsonl = make_jsonl(N)
    out = tmp_path / "interrupted"
    # An xdist worker ignores SIGINT and a child inherits SIG_IGN (Python then keeps ignoring it):
    # give the child the default disposition a shell gives a command, so Ctrl-C reaches it.
    proc = subprocess.Popen([sys.executable, "-m", "modalscope", *_cli(out, jsonl, tiny_model_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while _n_done(out / "activations.zarr") < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "extraction did not progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"modalscope: interrupted; finished pairs are kept: rerun "
                                            f"`modalscope extract --out {out} --resume` (or the same command) to continue")
    kept = _n_done(out / "activations.zarr")
    assert 2 <= kept < N
    done = subprocess.run([sys.executable, "-m", "modalscope", "extract", "--out", str(out), "--resume", "--quiet",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _n_done(out / "activations.zarr") == N
