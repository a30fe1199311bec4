"""Notebook widgets: the live sweep plot and the layer picker (a value outside a control's choices raises
ChoiceError, which lists them)."""

from labkit.widgets.live_plot import LiveSweepPlot, static_figure
from labkit.widgets.choices import ChoiceError
from labkit.widgets.layer_picker import LayerPicker

__all__ = ["ChoiceError", "LayerPicker", "LiveSweepPlot", "static_figure"]
