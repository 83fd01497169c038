"""modalscope: does a vision-language model's neuron respond more to text or to images?

In a notebook:
    from modalscope import StudyConfig, run_study
    result = run_study(StudyConfig(out_dir="study", model="llava-hf/llava-1.5-7b-hf",
                                   captions="captions_val2017.json", images="val2017",
                                   num_pairs=1000))
"""

__version__ = "0.1.0"

from modalscope.config import StudyConfig  # noqa: E402
from modalscope.study import StudyResult, run_study  # noqa: E402

__all__ = ["StudyConfig", "StudyResult", "run_study", "__version__"]
