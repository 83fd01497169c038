"""The study report: DIR/report.html, one offline page (facts.py gathers, page.py lays out)."""

from modalscope.report.page import REPORT, render_report, write_report

__all__ = ["REPORT", "render_report", "write_report"]
