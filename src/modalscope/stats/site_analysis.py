"""What the streaming loop (analysis.py) hands the per-layer summaries of one site.

Why its own module: stats/layer_summary.py (Table 3's layer means, the trend) and
stats/xmodal_layers.py (the cross-modal share per layer) both read it, and the latter is
called by the former, so the type lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class SiteAnalysis:
    neurons: pd.DataFrame  # Table 3 rows of the site
    input_means: dict[str, np.ndarray]  # stat -> [input, layer] per-input layer mean Δ
    nulls: dict[str, dict] = field(default_factory=dict)  # stat -> sign-flip null of the trend
    # stat -> per layer, what statistics gave beyond Table 3 (analysis.py analyze_layer `outputs`)
    layer_outputs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
