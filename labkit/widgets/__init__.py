"""Notebook widgets: the live sweep plot, the layer picker and the tiling explainer (a value outside a control's
choices raises ChoiceError, which lists them)."""

from labkit.widgets.live_plot import LiveSweepPlot, static_figure
from labkit.widgets.choices import ChoiceError
from labkit.widgets.layer_picker import LayerPicker
from labkit.widgets.tiling import TilingExplainer

__all__ = ["ChoiceError", "LayerPicker", "LiveSweepPlot", "TilingExplainer", "static_figure"]
