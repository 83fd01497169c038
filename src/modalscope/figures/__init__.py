"""Report figures (Plotly): Figure 1 histograms, Figure 2 layer trend, significant counts,
their assembly from a study's tables, and export (offline HTML, PNG and SVG)."""

from modalscope.figures.export import find_browser, write_html, write_images
from modalscope.figures.histograms import figure1
from modalscope.figures.trend import figure2

__all__ = ["figure1", "figure2", "find_browser", "write_html", "write_images"]
