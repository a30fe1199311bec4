"""Notebook widgets: the live sweep plot (and the layer picker)."""

from labkit.widgets.live_plot import LiveSweepPlot, static_figure
from labkit.widgets.layer_picker import LayerPicker

__all__ = ["LayerPicker", "LiveSweepPlot", "static_figure"]
