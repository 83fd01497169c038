"""A study folder that cannot be corrupted silently, and stays inside its walls (issue 23).

1. One writer per folder: a second writer is refused in one line naming the holder's pid and
   host; a holder killed with SIGKILL does not block the next command (points 1).
4. A crafted folder (site names `../../..` in the tables and summary.json, figures/ a symlink to
   elsewhere) never makes `plot` write outside it: the file system is walked before and after.
7. Every option is bounded before anything is written, in one line naming the flag.
8/9. One line instead of a traceback: a symlink loop as an image (that pair is skipped), a named
   pipe, truncated or pickled weights, --out naming a file (before the model loads), --out "",
   a COCO file that is not UTF-8 (line and column), Ctrl-C before anything was recorded.
5. analyze, report, plot, export and neuron refuse a manifest that is not the store's.

Every CLI call runs in this process (cli_run.modalscope); only the lock holder is another one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_run import modalscope
from modalscope.lock import LOCK_NAME, StudyLocked, study_lock
from modalscope.data.manifest import MANIFEST

FAST = ("--permutations", "200", "--bootstrap", "200")


def _one_line_error(done, *starts: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("modalscope: error: "), done.stderr
    line = done.stderr.removeprefix("modalscope: error: ").rstrip("\n")
    assert any(line.startswith(s) for s in starts), line
    return line


# 1. The lock -------------------------------------------------------------------------------------
# lock.py loaded alone (it imports nothing of modalscope): the holder starts in a blink.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[2])
lock = sys.modules["lock"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
with lock.study_lock(sys.argv[1], "modalscope run --out held"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock (it says `held` once it does)."""
    import modalscope.lock

    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), modalscope.lock.__file__],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(copy):
    report = (copy / "report.html").read_bytes()
    holder = _hold(copy)
    try:
        who = f"pid {holder.pid} on {socket.gethostname()} (modalscope run --out held)"
        with pytest.raises(StudyLocked, match="^" + re.escape(f"{copy}: in use by {who}, since ")):  # the lock alone
            with study_lock(copy, "second"):
                pass
        for args in (("report", copy), ("analyze", copy, *FAST), ("plot", copy, "--no-png"),
                     ("run", "--config", copy / "study.toml", "--out", copy)):
            line = _one_line_error(modalscope(*args), f"{copy}: in use by {who}")
            assert "wait for it to finish" in line
        assert (copy / "report.html").read_bytes() == report  # nothing rewritten meanwhile
    finally:
        holder.send_signal(signal.SIGKILL)  # as kill -9: no cleanup runs in the holder
        holder.wait(timeout=30)
        holder.stdout.close()
    assert (copy / LOCK_NAME).exists()  # the killed holder's file is still there...
    done = modalscope("report", copy)  # ...and blocks nothing: the kernel released its flock
    assert done.returncode == 0, done.stderr
    assert not (copy / LOCK_NAME).exists()  # a released lock leaves no file
    with study_lock(copy, "outer"), study_lock(copy, "inner"):  # re-entrant in one process (run_study)
        assert (copy / LOCK_NAME).read_text().startswith(f"pid={os.getpid()}\n")


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new" / "study"
    done = modalscope("analyze", out)
    assert done.returncode == 2 and not (tmp_path / "new").exists()  # the lock's folder is removed again


# 4. A crafted folder never makes plot write outside it ----------------------------------------------
def _files(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` (not under `skip`), with its size and mtime."""
    seen = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        if skip is not None and Path(folder).is_relative_to(skip):
            continue
        for name in dirs + files:
            path = Path(folder) / name
            if skip is not None and path.is_relative_to(skip):
                continue  # DIR itself (its mtime moves: the lock file comes and goes)
            info = path.lstat()
            seen[str(path)] = (info.st_size, info.st_mtime_ns)
    return seen


def _rename_site(out: Path, old: str, new: str) -> None:
    tables = out / "tables"
    for path in tables.glob("*.parquet"):
        frame = pd.read_parquet(path)
        if "site" in frame.columns:
            frame["site"] = frame["site"].astype(str).replace(old, new)
            frame.to_parquet(path)
    summary = json.loads((tables / "summary.json").read_text())
    (tables / "summary.json").write_text(json.dumps({new if k == old else k: v for k, v in summary.items()}))


@pytest.mark.parametrize("craft", ["relative", "to_tmp", "summary_only", "figures_symlink"])
def test_a_crafted_folder_never_makes_plot_write_outside_it(copy, tmp_path, craft):
    outside = tmp_path / "outside"
    outside.mkdir()
    tag = f"pwn_{uuid.uuid4().hex[:12]}"
    if craft == "relative":  # figures/figure1_{site}.html lands in tmp_path/outside
        _rename_site(copy, "mlp", f"../../../../outside/{tag}")
    elif craft == "to_tmp":  # the case: far enough up to reach /, then /tmp
        _rename_site(copy, "mlp", "../" * 40 + f"tmp/{tag}")
    elif craft == "summary_only":
        summary = json.loads((copy / "tables/summary.json").read_text())
        summary[f"../../../../outside/{tag}"] = summary["mlp"]
        (copy / "tables/summary.json").write_text(json.dumps(summary))
    else:
        shutil.rmtree(copy / "figures")
        (copy / "figures").symlink_to(outside, target_is_directory=True)
    before = _files(tmp_path, skip=copy)
    done = modalscope("plot", copy, "--no-png")
    line = _one_line_error(done, f"{copy / 'tables'}", f"{copy / 'figures'}")
    assert ("is not one" in line and "recorded (residual, mlp)" in line) or "outside the study folder" in line
    assert _files(tmp_path, skip=copy) == before  # nothing made, changed or removed outside DIR
    assert not list(outside.iterdir())
    assert not list(Path("/tmp").glob(f"{tag}*")) and not list(Path(os.path.realpath("/tmp")).glob(f"{tag}*"))


def test_a_crafted_export_name_or_neuron_site_stays_inside(copy, tmp_path):
    line = _one_line_error(modalscope("export", copy, "--layers", "0", "--name", "/../../../outside"), "--name")
    assert "file-name suffix" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]


# 7. Bounds before anything is written -------------------------------------------------------------
BIG = "99999999999999999999"


@pytest.mark.parametrize("args, flag", [
    (("--batch-size", BIG), "--batch-size"),
    (("--batch-size", "0"), "--batch-size"),
    (("--sort-window", BIG), "--sort-window"),
    (("--sort-window", "4096", "--batch-size", "4096"), "--sort-window"),
    (("--workers", BIG), "--workers"),
    (("--workers", "-1"), "--workers"),
    (("--permutations", BIG), "--permutations"),
    (("--bootstrap", BIG), "--bootstrap"),
    (("--outlier-factor", "0"), "--outlier-factor"),
    (("--outlier-factor", "-1"), "--outlier-factor"),
    (("--outlier-factor", "nan"), "--outlier-factor"),
    (("--outlier-factor", "inf"), "--outlier-factor"),
    (("--seed", "-1"), "--seed"),
    (("--seed", BIG), "--seed"),
])
def test_run_options_are_bounded_before_anything_is_written(tmp_path, args, flag):
    out = tmp_path / "study"
    done = modalscope("run", "--model", tmp_path / "no-model", "--out", out, *args)
    _one_line_error(done, f"{flag} ")
    assert not out.exists()


def test_a_study_file_value_out_of_bounds_names_its_key_and_line(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(f'[model]\nmodel = "x"\nbatch_size = {BIG}\n[output]\nout = "{tmp_path / "s"}"\n')
    line = _one_line_error(modalscope("run", "--config", path), f"{path}, line 3: [model] batch_size = {BIG}: ")
    assert "from 1 to 65,536" in line and not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, start", [
    (("plan", "--model", "m", "--num-pairs", "-1"), "--num-pairs -1"),
    (("plan", "--model", "m", "--num-pairs", "0"), "--num-pairs 0"),
    (("plan", "--model", "m", "--num-pairs", "10", "--batch-size", "0"), "--batch-size 0"),
    (("plan", "--model", "m", "--num-pairs", "10", "--sort-window", "0"), "--sort-window 0"),
    (("export", "{dir}", "--layers", f"0-{BIG}"), f"--layers 0-{BIG}: {BIG} is beyond any model"),
    (("export", "{dir}", "--neurons", "0-5000000"), "--neurons 0-5000000: 5000000 is beyond any model"),
    (("neuron", "{dir}", "--site", "mlp", "--layer", "0", "--neuron", "0", "--top", BIG), f"--top {BIG}"),
    (("analyze", "{dir}", "--permutations", BIG), f"--permutations {BIG}"),
    (("analyze", "{dir}", "--outlier-factor", "0"), "--outlier-factor 0"),
    (("run", "--model", "m", "--out", ""), "--out ''"),
    (("analyze", ""), "DIR ''"),
])
def test_other_commands_bound_their_options_in_one_line(copy, args, start):
    before = _files(copy)
    _one_line_error(modalscope(*[a.format(dir=copy) for a in args]), start)
    assert _files(copy) == before


# 8/9. One line instead of a traceback -------------------------------------------------------------
def test_a_symlink_loop_or_a_named_pipe_as_an_image_skips_that_pair_only(tmp_path, coco_files):
    from modalscope.data.images import ImageProblem, load_rgb
    from modalscope.data.pairs import load_coco, load_jsonl

    loop = tmp_path / "loop.png"
    loop.symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(loop)
    real = min(coco_files[1].iterdir())
    lines = [{"image": "loop.png", "caption": "a loop", "id": 1}, {"image": str(real), "caption": "fine", "id": 2}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pairs = load_jsonl(jsonl)
    assert [p.problem for p in pairs] == ["image path is a symlink loop", None]
    coco = {"images": [{"id": 1, "file_name": "loop.png"}, {"id": 2, "file_name": str(real)}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a loop"}, {"id": 2, "image_id": 2, "caption": "ok"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert [p.problem for p in load_coco(tmp_path / "coco.json", tmp_path)] == ["image path is a symlink loop", None]
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    with pytest.raises(ImageProblem, match="^image path is a named pipe, not a regular file$"):
        load_rgb(pipe)  # never opened (that would block): not "empty (0 bytes)"


def test_a_coco_file_that_is_not_utf8_names_line_and_column(tmp_path):
    from modalscope.data.pairs import DataError, load_coco

    path = tmp_path / "captions.json"
    path.write_bytes(b'{"images": [],\n  "annotations": ["caf\xe9"]}')
    with pytest.raises(DataError, match=r"not UTF-8 text \(line 2, column 23: byte 0xe9\)"):
        load_coco(path, tmp_path)


def _weights_copy(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def test_truncated_or_pickled_weights_are_one_line(tiny_model_dir, tmp_path, coco_files):
    captions, images = coco_files
    data = ("--captions", captions, "--images", images, "--num-pairs", "4", "--device", "cpu", "--quiet")
    truncated = _weights_copy(tiny_model_dir, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    line = _one_line_error(modalscope("extract", "--out", tmp_path / "a", "--model", truncated, *data),
                           f"--model {truncated}: a weight file cannot be read")
    assert "truncated or damaged" in line and not (tmp_path / "a").exists()

    import torch
    from safetensors.torch import load_file

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    pickled = _weights_copy(tiny_model_dir, tmp_path / "pickled")
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save({**state, "payload": Payload()}, pickled / "pytorch_model.bin")
    line = _one_line_error(modalscope("extract", "--out", tmp_path / "b", "--model", pickled, *data),
                           f"--model {pickled}: its pytorch_model.bin is a pickle")
    assert not (tmp_path / "b").exists()


def test_out_naming_a_file_is_refused_before_the_model_loads(tmp_path, coco_files, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("modalscope.models.loading.load_model", no_load)
    captions, images = coco_files
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    for command in ("run", "extract"):
        done = modalscope(command, "--out", taken, "--model", "m", "--captions", captions, "--images", images)
        _one_line_error(done, f"--out {taken}: a file, not a folder")
    assert taken.read_text() == "mine"


def test_ctrl_c_before_anything_is_recorded_does_not_recommend_resume(tmp_path, coco_files, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("modalscope.stages.extract.load_vlm", ctrl_c)
    captions, images = coco_files
    done = modalscope("run", "--out", tmp_path / "s", "--model", "m", "--captions", captions, "--images", images)
    assert (done.returncode, done.stderr) == (
        130, "modalscope: interrupted before any pair was recorded; rerun the same command to start\n")


# 5. Every stage checks the manifest against the store ----------------------------------------------
def test_a_swapped_manifest_is_refused_by_every_stage(copy):
    path = copy / MANIFEST
    table = pq.read_table(path)
    swapped = table.take(pa.array(list(range(table.num_rows))[::-1]))  # same length, same pairs, other order
    pq.write_table(swapped.replace_schema_metadata(table.schema.metadata), path)
    before = _files(copy)
    for args in (("analyze", copy, *FAST), ("report", copy), ("plot", copy, "--no-png"),
                 ("export", copy, "--layers", "0"),
                 ("neuron", copy, "--site", "mlp", "--layer", "0", "--neuron", "0")):
        line = _one_line_error(modalscope(*args), f"{path}: not the manifest {copy / 'activations.zarr'} was "
                                                  "recorded with")
        assert "nothing was written" in line
    assert _files(copy) == before


def test_a_disk_full_error_without_a_file_names_the_folder(copy, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as zarr's writers raise it: no file name

    monkeypatch.setattr("modalscope.analysis.run_analysis", full)
    done = modalscope("analyze", copy, *FAST)
    assert (done.returncode, done.stderr) == (2, (
        f"modalscope: error: writing under {copy}: {os.strerror(errno.ENOSPC)}; finished work is kept: fix this "
        "and rerun the same command to continue\n"))


# 6. DIR/study.toml keeps the data and analysis settings, with absolute paths -----------------------
def test_study_file_survives_a_killed_first_extraction_and_a_resume(tiny_model_dir, coco_files, tmp_path,
                                                                     monkeypatch):
    from modalscope import StudyConfig

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    captions, images = coco_files
    monkeypatch.chdir(tiny_model_dir.parent)  # --model given relative, as a user in that folder would
    out = tmp_path / "s"
    with monkeypatch.context() as patch:
        patch.setattr("modalscope.record.extract.extract", ctrl_c)  # killed before the first window
        done = modalscope("run", "--out", out, "--model", tiny_model_dir.name, "--captions", captions, "--images",
                          images, "--num-pairs", "4", "--batch-size", "2", "--device", "cpu", "--quiet",
                          "--permutations", "300", "--bootstrap", "400")
    assert done.returncode == 130
    expected = {"model": str(tiny_model_dir.resolve()), "captions": captions.resolve(), "images": images.resolve(),
                "num_pairs": 4, "n_perm": 300, "n_boot": 400}
    for stage in ("killed run", "extract --resume"):
        config = StudyConfig.from_toml(out / "study.toml")
        assert {k: getattr(config, k) for k in expected} == expected, stage
        if stage == "killed run":
            done = modalscope("extract", "--out", out, "--resume", "--quiet")
            assert done.returncode == 0, done.stderr


# 10. A killed analyze: tables of two analyses are never shown together; its temporaries go --------
def test_tables_of_two_analyses_are_refused_and_a_killed_writers_temporaries_removed(copy, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # stopped after Table 3, layers, ... but before top_pairs, Tables 1-2
        patch.setattr("modalscope.cards.table.write_top_pairs", ctrl_c)
        assert modalscope("analyze", copy, *FAST, "--fdr", "by").returncode == 130
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = copy / "tables" / f".table3_neurons.parquet.{int(dead.stdout)}.tmp"  # as SIGKILL leaves one
    stale.write_bytes(b"half a table")
    for args in (("report", copy), ("plot", copy, "--no-png")):
        line = _one_line_error(modalscope(*args), f"{copy / 'tables'}: table3_neurons.parquet and ")
        assert "come from two different analyses (they differ in fdr)" in line
        assert line.endswith(f"rerun `modalscope analyze {copy}`")
    assert not stale.exists()  # removed once the lock was held: its writer is gone
