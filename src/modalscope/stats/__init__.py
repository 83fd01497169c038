"""Statistics: running moments, per-neuron tests, FDR control, layer summaries."""
