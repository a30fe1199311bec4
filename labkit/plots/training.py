"""The training-memory picture of notebook 04: per GPU, what a QAT step keeps at each of its two peaks (the
backward and the optimizer step), stacked part by part, against the GPU's memory."""

from __future__ import annotations

import plotly.graph_objects as go

from labkit.plots.attention import add_limit_line
from labkit.plots.palette import BLUE, BROWN, CYAN, GREEN, GREY, OLIVE, ORANGE, PURPLE, RED
from labkit.train.memory_model import GIB, ModelShape, TrainSetup, training_breakdown

PARTS = {  # part: (label, colour)
    "master_weights": ("fp32 master weights", BLUE),
    "gradients": ("fp32 gradients", CYAN),
    "optimizer": ("AdamW moments (fp32)", GREEN),
    "optimizer_temp": ("AdamW's foreach temporary", OLIVE),
    "working_weights": ("bf16 weights all-gathered (2 layers + root)", PURPLE),
    "grad_buffers": ("one layer's gradient buffers", BROWN),
    "activations": ("activations (checkpointed)", ORANGE),
    "transient": ("logits / recomputed layer", RED),
}
PHASES = {"backward": ("master_weights", "gradients", "optimizer", "working_weights", "grad_buffers", "activations",
                       "transient"),
          "optimizer step": ("master_weights", "gradients", "optimizer", "optimizer_temp")}


def phase_parts(shape: ModelShape, seq_len: int, setup: TrainSetup) -> dict[str, dict[str, float]]:
    """{phase: {part: GiB}} for the two peaks of a step, as `labkit.train.memory_model.phase_peaks` adds them."""
    p = training_breakdown(shape, seq_len, setup)
    transient = max(p["loss"], p["recompute"]) - p["recompute"] if setup.checkpointing else p["loss"]
    parts = {**p, "transient": transient}
    return {phase: {k: parts[k] / GIB for k in keys} for phase, keys in PHASES.items()}


def training_memory_figure(shape: ModelShape, seq_len: int, world_sizes: list[int], setup: TrainSetup,
                           limit_gib: float | None = None, limit_label: str = "GPU memory",
                           title: str | None = None) -> go.Figure:
    """Stacked bars: for each number of GPUs, the backward and the optimizer-step peak per GPU, part by part."""
    from dataclasses import replace

    x, stacks = [], []
    for n in world_sizes:
        phases = phase_parts(shape, seq_len, replace(setup, world_size=n))
        for phase, parts in phases.items():
            x.append(f"{n} GPU{'s' if n > 1 else ''}<br>{phase}")
            stacks.append(parts)
    fig = go.Figure()
    for key, (label, color) in PARTS.items():
        y = [s.get(key, 0.0) for s in stacks]
        if not any(y):
            continue
        fig.add_trace(go.Bar(x=x, y=y, name=label, marker_color=color,
                             hovertemplate="%{x}: %{y:.1f} GiB<extra>" + label + "</extra>"))
    totals = [sum(s.values()) for s in stacks]
    fig.add_trace(go.Scatter(x=x, y=totals, mode="text", text=[f"{t:.0f} GiB" for t in totals],
                             textposition="top center", showlegend=False, hoverinfo="skip"))
    if limit_gib:
        add_limit_line(fig, limit_gib, f"{limit_label}: {limit_gib:.0f} GiB")
    fig.update_layout(barmode="stack", height=480, template="plotly_white", margin=dict(t=60, b=40, l=60, r=20),
                      legend=dict(orientation="h", y=-0.22), title=title, yaxis_title="GiB per GPU (modelled)")
    fig.update_yaxes(range=[0, 1.12 * max(totals + [limit_gib or 0])])
    return fig


__all__ = ["phase_parts", "training_memory_figure"]
