"""Static plotly figures for notebook 02: the memory model's parts, and kernel TFLOP/s against N."""

from __future__ import annotations

import plotly.graph_objects as go

from labkit.attention.memory_model import ModelShape, memory_curves

from labkit.plots.palette import BACKEND_COLORS as COLORS
from labkit.plots.palette import GREY


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
        fig.add_hline(y=limit_gib, line=dict(color="black", dash="dashdot", width=1),
                      annotation_text=f"{limit_label}: {limit_gib:.0f} GiB", annotation_position="top left")
    fig.update_xaxes(type="log", dtick=0.30103, title_text="sequence length N (tokens)")
    fig.update_yaxes(type="log", title_text="GiB (analytic)")
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
    fig.update_xaxes(type="log", dtick=0.30103, title_text="sequence length N (tokens)")
    fig.update_yaxes(title_text="TFLOP/s (causal, attention only)", rangemode="tozero")
    fig.update_layout(title=title, height=400, template="plotly_white", margin=dict(t=60, b=40, l=60, r=20))
    return fig


def baseline_offset_gib(rows: list[dict], curves: dict) -> float:
    """For CPU RSS: the measured process baseline (interpreter, torch, weights) minus the modelled weights, so
    the analytic curves can be drawn on the same axis as peak RSS."""
    baselines = [r["baseline_gib"] for r in rows if r.get("baseline_gib") is not None]
    return max(min(baselines) - curves["weights"][0], 0.0) if baselines else 0.0
