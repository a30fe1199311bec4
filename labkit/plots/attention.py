"""Static plotly figures for notebook 02: the memory model's parts, and kernel TFLOP/s against N."""

from __future__ import annotations

import math
from collections.abc import Iterable

import plotly.graph_objects as go

from labkit.attention.memory_model import ModelShape, memory_curves

from labkit.plots.palette import BACKEND_COLORS as COLORS
from labkit.plots.palette import GREY


def length_label(n: int) -> str:
    """A sequence length as a learner writes it: 512, 8192, 16k, 32k (k = 1024 from 16k up)."""
    return f"{n // 1024}k" if n >= 16384 and n % 1024 == 0 else str(n)


def length_ticks(lengths: Iterable[int]) -> dict:
    """Tick values and labels for a log axis of sequence lengths: every power of two from the shortest to the
    longest (every other one past ten ticks), labelled 512, 8192, 16k. Pass to `update_xaxes(**...)`."""
    lengths = [int(n) for n in lengths if n and n > 0]
    if not lengths:
        return {}
    lo, hi = math.floor(math.log2(min(lengths))), math.ceil(math.log2(max(lengths)))
    powers = [2**k for k in range(lo, hi + 1)]
    step = 1 if len(powers) <= 10 else 2
    vals = powers[::step]
    return {"tickmode": "array", "tickvals": vals, "ticktext": [length_label(v) for v in vals]}


def add_limit_line(fig: go.Figure, limit: float, label: str, log_y: bool = False) -> go.Figure:
    """A horizontal dash-dot line at the device's memory limit, labelled above its left end. Placed by hand: plotly's
    `add_hline(annotation_text=...)` puts the label at 10**limit on a log axis and stretches the axis to it."""
    fig.add_hline(y=limit, line=dict(color="black", dash="dashdot", width=1))
    fig.add_annotation(x=0.01, xref="x domain", y=math.log10(limit) if log_y else limit,
                       yref="y", text=label, showarrow=False, xanchor="left", yanchor="bottom")
    return fig


def memory_model_figure(shape: ModelShape, seq_lens: list[int], batch_size: int = 1, dtype="bfloat16",
                        limit_gib: float | None = None, limit_label: str = "GPU memory",
                        title: str | None = None) -> go.Figure:
    """The analytic parts (dashed) and totals against N on log-log axes, with the device limit."""
    c = memory_curves(shape, seq_lens, batch_size, dtype)
    fig = go.Figure()
    lines = [
        ("weights", "weights (constant)", "#555", "dot"),
        ("activations", "activations (linear in N)", COLORS["sdpa"], "dash"),
        ("kv_cache", "KV cache, if generation kept it (linear)", "#999", "dashdot"),
        ("eager_scores", "eager: N×N scores + softmax, one layer (quadratic)", COLORS["eager"], "dash"),
        ("total_flash", "total, flash kernels", COLORS["fa2"], "solid"),
        ("total_eager", "total, eager", COLORS["eager"], "solid"),
    ]
    for key, name, color, dash in lines:
        fig.add_trace(go.Scatter(x=c["seq_len"], y=c[key], name=name, mode="lines",
                                 line=dict(color=color, dash=dash, width=2.5 if dash == "solid" else 1.8),
                                 hovertemplate="N=%{x}: %{y:.2f} GiB<extra>" + name + "</extra>"))
    if limit_gib:
        add_limit_line(fig, limit_gib, f"{limit_label}: {limit_gib:.0f} GiB", log_y=True)
    fig.update_xaxes(type="log", title_text="sequence length N (tokens)", **length_ticks(seq_lens))
    fig.update_yaxes(type="log", dtick=1, title_text="GiB (analytic)")  # one label a decade: 0.1, 1, 10, 100
    fig.update_layout(title=title, height=430, template="plotly_white", legend=dict(orientation="h", y=-0.25),
                      margin=dict(t=60, b=40, l=60, r=20))
    return fig


def kernel_figure(rows: list[dict], title: str | None = None) -> go.Figure:
    """Attention-only throughput (TFLOP/s, 4·B·H·N²·D halved for causal) against N, one line per backend."""
    fig = go.Figure()
    for backend in dict.fromkeys(r["backend"] for r in rows):
        ok = sorted((r for r in rows if r["backend"] == backend and r["ok"]), key=lambda r: r["seq_len"])
        oom = [r for r in rows if r["backend"] == backend and r.get("oom")]
        if not ok and not oom:
            continue
        fig.add_trace(go.Scatter(x=[r["seq_len"] for r in ok], y=[r["tflops"] for r in ok], name=backend,
                                 mode="lines+markers", line=dict(color=COLORS.get(backend, GREY), width=2.5),
                                 hovertemplate="N=%{x}: %{y:.3g} TFLOP/s<extra>" + backend + "</extra>"))
        if oom:
            y = ok[-1]["tflops"] if ok else 0
            fig.add_trace(go.Scatter(x=[oom[0]["seq_len"]], y=[y], mode="markers+text", text=["OOM"],
                                     textposition="top center", showlegend=False, hovertext=oom[0].get("error"),
                                     marker=dict(symbol="x", size=13, color="crimson")))
    fig.update_xaxes(type="log", title_text="sequence length N (tokens)", **length_ticks(r["seq_len"] for r in rows))
    fig.update_yaxes(title_text="TFLOP/s (causal, attention only)", rangemode="tozero")
    fig.update_layout(title=title, height=400, template="plotly_white", margin=dict(t=60, b=40, l=60, r=20))
    return fig


def baseline_offset_gib(rows: list[dict], curves: dict) -> float:
    """For CPU RSS: the measured process baseline (interpreter, torch, weights) minus the modelled weights, so
    the analytic curves can be drawn on the same axis as peak RSS."""
    baselines = [r["baseline_gib"] for r in rows if r.get("baseline_gib") is not None]
    return max(min(baselines) - curves["weights"][0], 0.0) if baselines else 0.0
