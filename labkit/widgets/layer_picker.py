"""The layer picker: choose which Linear layers become INT8, by block and role, with presets and a filter.

    picker = LayerPicker(model, sensitivity=table)   # table from labkit.quant.sensitivity.layer_sensitivity
    display(picker)
    layers = picker.selection()                      # exact module names; raises EmptySelectionError if none
    labkit.quant.prepare_qat(model, layers)          # every labkit quantization call accepts it

`picker.value` is the list of selected module names (model order); it can be set from code, and so can
`picker.preset.value`, `picker.percent.value` and `picker.filter.value`: that is how the tests drive it.
The filter (a regular expression) narrows the selection: only ticked layers whose names match are selected.

Tied head: when `lm_head` shares its weight with the token embedding (SmolLM2, many small LMs), presets leave
it in float. Ticking it stores a separate INT8 copy for the head while the embedding stays float: the two are
untied and the model gets bigger, not smaller. The status line says so when it is ticked.
"""

from __future__ import annotations

import re

import ipywidgets as widgets
import pandas as pd
import traitlets
from torch import nn

from labkit.models import parameter_count
from labkit.quant.selection import EmptySelectionError
from labkit.quant.sensitivity import FEED_FORWARD_ROLES, ROLES, describe_linears, least_sensitive
from labkit.widgets.choices import ChoiceDropdown

FEED_FORWARD = "feed-forward only"
ALL_LINEAR = "all linear"
NONE = "none"
LEAST_SENSITIVE = "least sensitive N%"
CUSTOM = "custom"
PRESETS = (FEED_FORWARD, ALL_LINEAR, NONE, LEAST_SENSITIVE)


class LayerPicker(widgets.VBox):
    """Checkbox grid of a model's Linear layers (blocks x roles) with presets, a regex filter and a live count."""

    value = traitlets.List(traitlets.Unicode(), help="selected module names, in model order")

    def __init__(self, model: nn.Module, sensitivity: pd.DataFrame | None = None, *, preset: str = FEED_FORWARD,
                 percent: int = 50, metric: str = "kl", **kwargs) -> None:
        self.layers = describe_linears(model)
        if self.layers.empty:
            raise EmptySelectionError(f"{type(model).__name__} has no nn.Linear layers to pick from")
        self.total_params = parameter_count(model)
        self.metric = metric
        self.sensitivity: pd.DataFrame | None = None
        self._names = list(self.layers["name"])
        self._params = dict(zip(self.layers["name"], self.layers["params"]))
        self._tied = set(self.layers.loc[self.layers["tied"], "name"])
        self._syncing = False
        self._message = ""

        self.preset = ChoiceDropdown(options=list(PRESETS) + [CUSTOM], value=FEED_FORWARD, description="preset")
        self.percent = widgets.IntSlider(value=percent, min=1, max=100, step=1, description="N %",
                                         continuous_update=False)
        # read on Enter or when the box loses focus, not per keystroke: a half-typed regex is not an error
        self.filter = widgets.Text(value="", description="name filter", continuous_update=False,
                                   placeholder=r"regex, then Enter: mlp\.(up|down)  or  layers\.(1[0-9])\.")
        self.status = widgets.HTML()
        self.checkboxes: dict[str, widgets.Checkbox] = {
            n: widgets.Checkbox(value=False, indent=False, description="", tooltip=n,
                                layout=widgets.Layout(width="28px"))
            for n in self._names
        }
        for box in self.checkboxes.values():
            box.observe(self._on_checkbox, names="value")
        self.preset.observe(self._on_preset, names="value")
        self.percent.observe(self._on_percent, names="value")
        self.filter.observe(lambda change: self._refresh(), names="value")

        controls = widgets.HBox([self.preset, self.percent, self.filter])
        super().__init__([controls, self._grid(), self.status], **kwargs)
        if sensitivity is not None:
            self.set_sensitivity(sensitivity)
        if preset != FEED_FORWARD:
            self._check_preset_name(preset)
            self.preset.value = preset
        else:
            self._apply_preset()

    # -- layout ------------------------------------------------------------------------------------------------

    def _grid(self) -> widgets.GridBox:
        roles = [r for r in ROLES if r in set(self.layers["role"]) and r != "lm_head"]
        other = sorted(set(self.layers["role"]) - set(ROLES))
        columns = roles + other
        cells: list[widgets.Widget] = [widgets.HTML("<b>block</b>")]
        cells += [widgets.HTML(f"<b>{r}</b>") for r in columns]
        blocks = sorted(int(b) for b in self.layers["block"].dropna().unique())
        by_key = {(None if pd.isna(r.block) else int(r.block), r.role): r.name for r in self.layers.itertuples()}
        for b in blocks:
            cells.append(widgets.HTML(str(b)))
            cells += [self.checkboxes[by_key[(b, r)]] if (b, r) in by_key else widgets.HTML("") for r in columns]
        loose = [n for n in self._names if n not in {by_key.get((b, r)) for b in blocks for r in columns}]
        for name in loose:  # lm_head and anything outside the blocks: one row each, box in the first column
            label = name + (" (tied to the embedding)" if name in self._tied else "")
            cells.append(widgets.HTML(f"<span title='{name}'>{label}</span>"))
            cells.append(self.checkboxes[name])
            cells += [widgets.HTML("") for _ in columns[1:]]
        return widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=f"minmax(60px, max-content) repeat({len(columns)}, 44px)"))  # every row in view

    # -- presets -----------------------------------------------------------------------------------------------

    def _check_preset_name(self, preset: str) -> None:
        if preset not in PRESETS and preset != CUSTOM:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (or {CUSTOM})")

    def preset_layers(self, preset: str) -> list[str]:
        """The names a preset selects (before the filter). Tied heads are never part of a preset."""
        self._check_preset_name(preset)
        rows = self.layers[~self.layers["name"].isin(self._tied)]
        if preset == FEED_FORWARD:
            return list(rows.loc[rows["role"].isin(FEED_FORWARD_ROLES), "name"])
        if preset == ALL_LINEAR:
            return list(rows["name"])
        if preset == LEAST_SENSITIVE:
            if self.sensitivity is None:
                return []
            return least_sensitive(self.sensitivity, self.percent.value, self.metric, exclude=sorted(self._tied))
        return []  # none, custom

    def set_sensitivity(self, table: pd.DataFrame, metric: str | None = None) -> None:
        """Feed the "least sensitive N%" preset with a table from `layer_sensitivity` (only its layers are ranked)."""
        unknown = sorted(set(table["name"]) - set(self._names))
        if unknown:
            raise ValueError(f"the sensitivity table names {len(unknown)} layer(s) this model does not have, "
                             f"e.g. {unknown[:3]}: was it computed on another model?")
        self.metric = metric or self.metric
        if self.metric not in table.columns:
            raise ValueError(f"the sensitivity table has no column {self.metric!r}")
        self.sensitivity = table
        if self.preset.value == LEAST_SENSITIVE:
            self._apply_preset()

    def _set_boxes(self, names: list[str]) -> None:
        chosen = set(names)
        self._syncing = True
        try:
            for n, box in self.checkboxes.items():
                box.value = n in chosen
        finally:
            self._syncing = False

    def _apply_preset(self) -> None:
        preset = self.preset.value
        self.percent.disabled = preset != LEAST_SENSITIVE
        if preset != CUSTOM:
            self._set_boxes(self.preset_layers(preset))
        self._refresh()

    def _on_preset(self, change) -> None:
        if not self._syncing:
            self._apply_preset()

    def _on_percent(self, change) -> None:
        if self.preset.value == LEAST_SENSITIVE:
            self._apply_preset()

    def _on_checkbox(self, change) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.preset.value = CUSTOM
        finally:
            self._syncing = False
        self.percent.disabled = True
        self._refresh()

    # -- value, filter, status ---------------------------------------------------------------------------------

    def _pattern(self) -> re.Pattern | None:
        text = self.filter.value.strip()
        return re.compile(text) if text else None

    def _refresh(self) -> None:
        """Recompute `.value` from the boxes and the filter, grey out filtered-out boxes, update the status line."""
        self._message = ""
        try:
            pattern = self._pattern()
        except re.error as err:
            pattern = None
            self._message = f"the name filter {self.filter.value!r} is not a valid regular expression ({err})"
        matches = (lambda n: False) if self._message else (lambda n: pattern is None or bool(pattern.search(n)))
        for n, box in self.checkboxes.items():
            box.disabled = not matches(n)
        names = [n for n in self._names if self.checkboxes[n].value and matches(n)]
        self._syncing = True
        try:
            self.value = names
        finally:
            self._syncing = False
        self._update_status()

    def _empty_reason(self) -> str:
        if self._message:
            return self._message
        ticked = [n for n in self._names if self.checkboxes[n].value]
        if self.preset.value == LEAST_SENSITIVE and self.sensitivity is None:
            return ("the 'least sensitive N%' preset needs a sensitivity table: "
                    "picker.set_sensitivity(labkit.quant.sensitivity.layer_sensitivity(model, batches))")
        if ticked and self.filter.value.strip():
            return (f"the name filter {self.filter.value!r} matches none of the {len(ticked)} ticked layers; "
                    "change or clear the filter")
        return "no layer is ticked: pick a preset or tick at least one layer"

    def _update_status(self) -> None:
        names = self.value
        if not names:
            self.status.value = (f"<span style='color:#b00'><b>Refused: the selection is empty.</b> "
                                 f"{self._empty_reason()}.</span>")
            return
        share = self.selected_params / self.total_params
        text = (f"<b>{len(names)}</b> of {len(self._names)} Linear layers selected, holding "
                f"<b>{share:.1%}</b> of the model's {self.total_params / 1e6:.1f} M parameters")
        tied = [n for n in names if n in self._tied]
        if tied:
            text += (f"<br><span style='color:#a60'>{tied[0]} is tied to the token embedding: quantizing it "
                     "stores a separate INT8 copy and the embedding stays float, so the model grows.</span>")
        self.status.value = text

    @traitlets.validate("value")
    def _validate_value(self, proposal) -> list[str]:
        wanted = list(proposal["value"])
        unknown = [n for n in wanted if n not in self._params]
        if unknown:
            raise traitlets.TraitError(
                f"{len(unknown)} name(s) are not Linear layers of this model: {unknown[:4]}; "
                f"names look like {self._names[:2]}"
            )
        chosen = set(wanted)
        return [n for n in self._names if n in chosen]

    @traitlets.observe("value")
    def _on_value(self, change) -> None:
        if self._syncing:
            return
        # set from code: exactly these layers, so clear the filter and switch to "custom"
        self._syncing = True
        try:
            self.preset.value = CUSTOM
            self.filter.value = ""
        finally:
            self._syncing = False
        self.percent.disabled = True
        self._set_boxes(change["new"])
        self._refresh()

    # -- for code ----------------------------------------------------------------------------------------------

    @property
    def selected_params(self) -> int:
        """Parameters held by the selected layers (weights and biases)."""
        return int(sum(self._params[n] for n in self.value))

    @property
    def share(self) -> float:
        """Share of the model's (distinct) parameters held by the selected layers."""
        return self.selected_params / self.total_params

    def selection(self) -> list[str]:
        """The selected module names, ready for labkit quantization calls; EmptySelectionError when empty."""
        if not self.value:
            raise EmptySelectionError(f"the layer picker's selection is empty: {self._empty_reason()}")
        return list(self.value)

    def summary(self) -> pd.DataFrame:
        """Selected layers per role: count and parameters."""
        rows = self.layers[self.layers["name"].isin(self.value)]
        return rows.groupby("role", sort=False).agg(layers=("name", "count"), params=("params", "sum")).reset_index()


__all__ = ["ALL_LINEAR", "CUSTOM", "FEED_FORWARD", "LEAST_SENSITIVE", "NONE", "PRESETS", "LayerPicker"]
