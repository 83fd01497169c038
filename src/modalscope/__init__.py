"""modalscope: does a vision-language model's neuron respond more to text or to images?

In a notebook:
    from modalscope import StudyConfig, run_study
    result = run_study(StudyConfig(out_dir="study", model="llava-hf/llava-1.5-7b-hf",
                                   captions="captions_val2017.json", images="val2017",
                                   num_pairs=1000))
"""

__version__ = "0.1.0"

import os as _os

# OpenBLAS (numpy's and scipy's) keeps its threads spinning for 2^28 cycles (~0.1 s) after every
# call, burning a core each while the analysis prepares its next block: the analysis makes
# thousands of mid-sized products, and at 7B widths that spinning was a quarter of its CPU time
# (benchmarks/scale_goals.py, 2 cores: 0.0100 against 0.0075 CPU-s per pair and 2 layers with
# 2^4 cycles). Only when the user set nothing, and only where numpy is not imported yet (the
# command line, a fresh kernel); it changes how long idle threads wait, never a number.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from modalscope.config import StudyConfig  # noqa: E402
from modalscope.study import StudyResult, run_study  # noqa: E402

__all__ = ["StudyConfig", "StudyResult", "run_study", "__version__"]
