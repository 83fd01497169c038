"""The ablation as a stage of `modalscope run`: the study file's [ablation] section.

Why: a study whose neurons are to be checked causally should say so in its study file, so that
`run --config study.toml` does the whole thing and DIR/study.toml repeats it. The section's
keys are `ablate`'s options (study_file.KEYS, StudyConfig.ablation_*); the rest comes from the
study itself: Table 3's reduction `stat`, the study's device, dtype and seed (the random sets'
seed), every analysed site. study.py calls `ablation_stage` after the figures and before the
report, so the report carries the ablation section.
"""

from __future__ import annotations

import time

from modalscope.config import StudyConfig


def settings_of(config: StudyConfig):
    """The AblationSettings of a study's [ablation] section."""
    from modalscope.ablation.run import AblationSettings

    return AblationSettings(k=config.ablation_k, sets=tuple(config.ablation_sets),
                            methods=tuple(config.ablation_method), n_random=config.ablation_random,
                            n_pairs=config.ablation_pairs, n_bands=config.ablation_bands,
                            readouts=config.ablation_readouts, stat=config.stat, device=config.device,
                            dtype=config.dtype, seed=config.seed, progress=config.progress)


def ablation_stage(config: StudyConfig, result) -> None:
    """`modalscope ablate DIR` with the study's [ablation] settings; its table and figure, notes
    and time go into `result` (study.StudyResult)."""
    from modalscope.ablation.run import run_ablation

    clock = time.perf_counter()
    done = run_ablation(config.out_dir, settings_of(config))
    result.tables.append(done.table)
    if done.figure is not None:
        result.figures.append(done.figure)
    result.messages.extend(f"ablation: {note}" for note in done.notes)
    result.timings["ablate_s"] = time.perf_counter() - clock
