"""modalscope: does a vision-language model's neuron respond more to text or to images?"""

__version__ = "0.1.0"
