"""Causal evidence: ablate the neurons the statistics select, against random sets (issue 26).

sets.py chooses the neurons, hooks.py ablates them at the recorded sites, readouts.py measures
the caption's likelihood, generated.py the words of the caption the model writes (drawn-world
labels), effects.py turns readouts into effects, CIs and p, run.py runs it all (`modalscope
ablate DIR`), report.py draws the figure and the report section; cli.py is the command's
options, stage.py the study file's [ablation] section inside `modalscope run`. Imported lazily: the command line builds its parser without torch.
"""

__all__ = ["AblationResult", "AblationSettings", "run_ablation"]


def __getattr__(name: str):
    if name in __all__:
        from modalscope.ablation import run

        return getattr(run, name)
    raise AttributeError(name)
