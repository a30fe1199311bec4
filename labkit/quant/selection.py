"""Which layers to quantize: one selection type that every labkit quantization call accepts.

A selection is any of
    None                           every Linear layer (embeddings and heads are decided by the caller)
    "regex"                        module names matched by `re.search`
    ["exact.name", ...]            exact module names (a name that matches nothing is an error)
    callable(name, module) -> bool a predicate
The layer picker widget's `.value` is a list of exact names, so it plugs in directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from torch import nn

LayerSelection = None | str | Sequence[str] | Callable[[str, nn.Module], bool]

FEED_FORWARD = r"\.mlp\.(gate|up|down)_proj$"
"""The feed-forward (MLP) Linear layers of every Llama-style block, which hold most of each block's Linear weights
(3/4 on SmolLM2-135M, 2/3 on Llama-2-7B), so 8-bit there saves the most memory."""
ALL_LINEAR = r"\.layers\.\d+\."
"""Every Linear inside the decoder blocks (the head stays float: on SmolLM2 it is tied to the embedding)."""
LAYER_PRESETS = {"feed-forward": FEED_FORWARD, "all-linear": ALL_LINEAR}
"""Names the benchmarks' --layers accepts besides a regular expression."""


class EmptySelectionError(ValueError):
    """A layer selection matched no module."""


def linear_layers(model: nn.Module, module_types: tuple[type, ...] = (nn.Linear,)) -> dict[str, nn.Module]:
    """All modules of `module_types` in `model`, by fully qualified name, in model order."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, module_types)}


def _preview(names: Iterable[str], k: int = 6) -> str:
    names = list(names)
    more = f", ... ({len(names) - k} more)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def resolve_layers(
    model: nn.Module,
    layers: LayerSelection = None,
    module_types: tuple[type, ...] = (nn.Linear,),
) -> list[str]:
    """Names of the modules of `module_types` that `layers` selects; raises EmptySelectionError on none."""
    candidates = linear_layers(model, module_types)
    kind = "/".join(t.__name__ for t in module_types)
    if not candidates:
        raise EmptySelectionError(f"the model has no {kind} layers to select from")
    if layers is None:
        chosen = list(candidates)
    elif isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise EmptySelectionError(f"layer pattern {layers!r} is not a valid regular expression: {err}") from None
        chosen = [n for n in candidates if pattern.search(n)]
        if not chosen:
            raise EmptySelectionError(
                f"layer pattern {layers!r} matches no {kind} layer; names look like: {_preview(candidates)}"
            )
    elif callable(layers):
        chosen = [n for n, m in candidates.items() if layers(n, m)]
        if not chosen:
            raise EmptySelectionError(f"the layer predicate selected no {kind} layer of {len(candidates)}")
    else:
        wanted = list(layers)
        unknown = [n for n in wanted if n not in candidates]
        if unknown:
            raise EmptySelectionError(
                f"{len(unknown)} layer name(s) match no {kind} layer: {_preview(unknown)}; "
                f"names look like: {_preview(candidates)}"
            )
        chosen = [n for n in candidates if n in set(wanted)]
    if not chosen:
        raise EmptySelectionError(f"the selection is empty: choose at least one {kind} layer to quantize")
    return chosen


def selection_filter(
    model: nn.Module, layers: LayerSelection = None, module_types: tuple[type, ...] = (nn.Linear,)
) -> Callable[[nn.Module, str], bool]:
    """A torchao-style `filter_fn(module, fqn)` that is True exactly for the selected modules."""
    chosen = set(resolve_layers(model, layers, module_types))
    return lambda module, fqn: fqn in chosen
