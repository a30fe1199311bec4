"""Selection widgets that name the allowed choices when given a value outside them (ipywidgets only says
"Invalid selection: value not found")."""

from __future__ import annotations

import ipywidgets as widgets
import traitlets


class ChoiceError(traitlets.TraitError, ValueError):
    """A value that is not one of a widget's choices; the message lists them."""


def _refuse(widget, value) -> ChoiceError:
    name = widget.description or type(widget).__name__
    return ChoiceError(f"{name}: {value!r} is not one of the choices: {', '.join(map(repr, widget._options_values))}")


class ChoiceDropdown(widgets.Dropdown):
    """A Dropdown whose bad value raises ChoiceError listing the choices."""

    @traitlets.validate("value")
    def _validate_value(self, proposal):
        try:
            return super()._validate_value(proposal)
        except traitlets.TraitError:
            raise _refuse(self, proposal.value) from None


class ChoiceSelectMultiple(widgets.SelectMultiple):
    """A SelectMultiple whose bad value raises ChoiceError naming the bad entry and listing the choices."""

    @traitlets.validate("value")
    def _validate_value(self, proposal):
        try:
            return super()._validate_value(proposal)
        except traitlets.TraitError:
            bad = [v for v in proposal.value if v not in self._options_values]
            raise _refuse(self, bad[0] if bad else proposal.value) from None
