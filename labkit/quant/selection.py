"""Which layers to quantize: one selection type that every labkit quantization call accepts.

A selection is any of
    None                           every Linear layer but the output head
    "regex"                        module names matched by `re.search` (an empty pattern is refused)
    ["exact.name", ...]            exact module names (a name that matches nothing is an error)
    callable(name, module) -> bool a predicate
The output head (`lm_head`) and any Linear that shares its weight with an embedding are selected only when named:
in a list, or written in the pattern (`"lm_head"`, `r"proj$|lm_head"`); `None`, `".*"` or `"head"` leave them
out. Embedding tables are selected only by asking for them (`module_types=(nn.Embedding,)`).
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


def _named_only(model: nn.Module, candidates: dict[str, nn.Module]) -> set[str]:
    """The candidates selected only by name: the output head and Linears whose weight is an embedding's."""
    try:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    except (AttributeError, NotImplementedError):
        head = None
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in candidates.items() if isinstance(m, nn.Linear)
            and (m is head or id(getattr(m, "weight", None)) in tables)}


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
    named_only = _named_only(model, candidates)
    if layers is None:
        chosen = [n for n in candidates if n not in named_only]
    elif isinstance(layers, str):
        if not layers.strip():
            raise EmptySelectionError(
                f"layer pattern {layers!r} is empty and would select every layer, the output head included; name the "
                f"layers: a regular expression such as r'\\.mlp\\.', a list of names, or None for every {kind} "
                "layer but the output head")
        try:
            pattern = re.compile(layers)
        except re.error as err:
            raise EmptySelectionError(f"layer pattern {layers!r} is not a valid regular expression: {err}") from None
        chosen = [n for n in candidates if pattern.search(n)
                  and (n not in named_only or n in layers or n.rsplit(".", 1)[-1] in layers)]
        if not chosen and any(pattern.search(n) for n in named_only):
            raise EmptySelectionError(
                f"layer pattern {layers!r} matches only {_preview(sorted(named_only))}, the output head (or a layer "
                "tied to the embeddings), which is selected only when named: write its name in the pattern or "
                "pass it in a list")
        if not chosen:
            raise EmptySelectionError(
                f"layer pattern {layers!r} matches no {kind} layer; names look like: {_preview(candidates)}"
            )
    elif callable(layers):
        chosen = [n for n, m in candidates.items() if n not in named_only and layers(n, m)]
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
