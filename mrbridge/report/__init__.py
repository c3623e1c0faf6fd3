"""Sim-vs-measured comparison reports: metrics, figures, the HTML page."""
