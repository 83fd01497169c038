"""Provenance: what a study's outputs say about how they were made.

Why a module of its own: the numbers of a study are only as good as what can be said about
how they were made, long after the run. Two records do that here:

* DIR/study.json, merged stage by stage (`record_stage`): every stage run alone (`extract`,
  `analyze`, `plot`) updates its settings, its wall time and the versions, and adds under
  `stages` its command line, host and the GPU it used (name, count, CUDA runtime, driver), so a
  rerun never leaves study.json describing an older analysis than the tables hold.
* The schema metadata of every Parquet table (`table_provenance`): the study's key settings and
  versions travel with each file, even one copied out of DIR. Nothing in it depends on time or
  place, so a repeated study writes the same bytes.

The command line comes from `cli.main` (`COMMAND`), else from the process. The library versions
the store records (`library_versions`) live here too, so the recording and study.json name them
from one list (the extraction imports them; nothing here imports the stages).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from modalscope.config import StudyConfig
from modalscope.outputs import STUDY_JSON
from modalscope.store import ActivationStore
from modalscope.tables import write_json

# Versions the store records (`library_versions`): what made its numbers.
LIBRARIES = ("modalscope", "torch", "transformers", "tokenizers", "numpy", "scipy", "zarr", "pyarrow", "plotly")
# Versions study.json records beside the store's.
MORE_LIBRARIES = ("pandas", "pillow", "accelerate")
# The command line of this process, set by cli.main (`modalscope ARGS`); None: from sys.argv.
COMMAND: str | None = None


def library_versions() -> dict[str, str]:
    """Python's version and those of LIBRARIES: the store's attribute `versions`."""
    return {"python": platform.python_version(), **{name: version(name) for name in LIBRARIES}}


def study_versions() -> dict[str, str]:
    """The store's libraries and those of the tables, images and device placement."""
    versions = library_versions()
    for name in MORE_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    """The command that ran this stage: cli.main's (`modalscope run ...`), else the process's
    (`python -m pkg ...` for a module run, the script's name otherwise)."""
    if COMMAND is not None:
        return COMMAND
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name.removesuffix('.__main__')}" if spec is not None else Path(sys.argv[0]).name
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()


def gpu_facts() -> dict | None:
    """The GPU this process used (name, count, CUDA runtime, driver), or None when it used none:
    CUDA counts as used once torch initialised it (a CPU study never does)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return {"name": names[torch.cuda.current_device()], "count": count, "names": names,
            "cuda": torch.version.cuda, "driver": nvidia_driver()}


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports (e.g. '550.54.15'), or None without one."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    found = done.stdout.split()
    return found[0] if done.returncode == 0 and found else None


def read_study_json(out_dir: Path) -> dict:
    """DIR/study.json ({} when absent; always whole: it is written atomically)."""
    path = Path(out_dir) / STUDY_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record_stage(out_dir: Path, stage: str, seconds: float, settings: dict | None = None, **facts: object) -> Path:
    """Merge one stage's facts into DIR/study.json, keeping the other stages': its settings into
    `config`, its wall time into `timings`, the versions now, and under `stages[stage]` the
    command line, host and (when used) GPU; `command` and `host` say who wrote it last, and
    `gpu` is the recording's GPU (absent when it ran on a CPU)."""
    study = read_study_json(out_dir)
    study.setdefault("config", {}).update(settings or {})
    study.setdefault("timings", {})[f"{stage}_s"] = seconds
    study["versions"] = study_versions()
    run: dict[str, object] = {"command": command_line(), "host": platform.node(),
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun / accelerate launch: rank 0 writes
        run["world_size"] = int(os.environ["WORLD_SIZE"])
    gpu = gpu_facts()
    if gpu is not None:
        run["gpu"] = gpu
    study.setdefault("stages", {})[stage] = run
    study.update({"command": run["command"], "host": run["host"], **facts})
    if stage == "extract":
        study.pop("gpu", None)
        if gpu is not None:
            study["gpu"] = gpu
    return write_json(study, Path(out_dir) / STUDY_JSON)


def table_provenance(store: ActivationStore, contrast: str, config: StudyConfig | None = None) -> dict:
    """What each Parquet table carries in its schema metadata: the study's key settings (model,
    weights, dtype, token scope, sites, reductions, seed, manifest, pairs, contrast, and with
    `config` the analysis's statistics) and the versions of recording and tables. Nothing that
    differs between two runs of the same study (no paths of DIR, no times)."""
    attrs = store.attrs
    meta = {key: attrs.get(key) for key in ("model", "revision", "weights", "model_type", "dtype", "quantization",
                                           "tokens", "sites", "stats", "conditions", "quantile", "seed",
                                           "manifest_hash")}
    base = attrs.get("base_model")
    meta.update({"base_model": base.get("model") if isinstance(base, dict) else None,
                 "n_pairs_recorded": store.n_done, "n_pairs_manifest": attrs.get("n_inputs"), "contrast": contrast,
                 "versions": {"recording": attrs.get("versions", {}), "tables": study_versions()}})
    if config is not None:
        from modalscope.analysis import primary_family

        meta.update({"fdr": config.fdr, "n_perm": config.n_perm, "n_boot": config.n_boot,
                     "outlier_factor": config.outlier_factor,
                     # which q is corrected how: this family's q_hier is its own BH/BY, every other
                     # family's q_hier is Benjamini-Bogomolov's (q_value: BH/BY within its family)
                     "fdr_primary": primary_family(getattr(config, "primary", None), store.sites, store.stats,
                                                   config.contrast_pair)})
    return meta
