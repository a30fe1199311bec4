"""Plotly figures for notebook 01: the fake-quantizer demo and the results bar charts (plain go.Figure)."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from labkit.plots.palette import BLUE, GREEN, RED
from labkit.plots.palette import VARIANT_COLORS as COLORS


def weight_grid_figure(row: torch.Tensor, scale: float, zero_point: float, qmin: int = -128, qmax: int = 127,
                       title: str = "") -> go.Figure:
    """Histogram of one weight row, with the INT8 grid points (every 8th), the clip range and zero."""
    row = row.detach().float().flatten()
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    fig = go.Figure(go.Histogram(x=row.tolist(), nbinsx=120, name="weights", marker_color=BLUE, opacity=0.8))
    grid = [(q - zero_point) * scale for q in range(qmin, qmax + 1, 8)]
    for g in grid:
        fig.add_vline(x=g, line_width=0.5, line_color="rgba(200,0,0,0.35)")
    fig.add_vline(x=lo, line_color="red", line_dash="dash", annotation_text=f"q={qmin}")
    fig.add_vline(x=hi, line_color="red", line_dash="dash", annotation_text=f"q={qmax}")
    fig.add_vline(x=-zero_point * scale, line_color="black", annotation_text="q=zero point", annotation_position="bottom")
    fig.update_layout(
        title=title or f"one weight row against the INT8 grid (every 8th level drawn): scale={scale:.2e}, "
                       f"zero point={zero_point:g}",
        xaxis_title="weight value", yaxis_title="count", showlegend=False, height=360,
    )
    return fig


def fake_quant_figure(x: torch.Tensor, x_hat: torch.Tensor, grad: torch.Tensor, scale: float) -> go.Figure:
    """Left: fake-quantized value against input (the staircase). Right: the STE gradient against input."""
    x, x_hat, grad = (t.detach().float().flatten() for t in (x, x_hat, grad))
    order = torch.argsort(x)
    x, x_hat, grad = x[order].tolist(), x_hat[order].tolist(), grad[order].tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("quantize then dequantize", "gradient through it (STE)"))
    fig.add_trace(go.Scatter(x=x, y=x, mode="lines", name="identity", line={"color": "#bbbbbb", "dash": "dot"}), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=x_hat, mode="lines", name="fake-quantized", line={"color": RED}), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=grad, mode="lines", name="d x_hat / d x", line={"color": GREEN}), 1, 2)
    fig.update_xaxes(title_text="input x")
    fig.update_yaxes(title_text="x_hat", row=1, col=1)
    fig.update_yaxes(title_text="gradient", row=1, col=2, range=[-0.1, 1.2])
    fig.update_layout(height=340, title=f"a coarse grid (scale={scale:.3g}) to make the steps visible")
    return fig


def _bar(rows: list[dict], key: str, title: str, yaxis: str, scale: float = 1.0, fmt: str = ".1f") -> go.Figure:
    xs = [r["label"] for r in rows if r.get(key) is not None]
    ys = [r[key] * scale for r in rows if r.get(key) is not None]
    colors = [COLORS.get(r["variant"], "#444444") for r in rows if r.get(key) is not None]
    fig = go.Figure(go.Bar(x=xs, y=ys, marker_color=colors, text=[f"{y:{fmt}}" for y in ys], textposition="outside"))
    fig.update_layout(title=title, yaxis_title=yaxis, height=360, margin={"t": 50})
    return fig


def accuracy_figure(rows: list[dict], title: str = "") -> go.Figure:
    """Accuracy and F1 (%) per variant, grouped."""
    fig = go.Figure()
    for key, name in (("accuracy", "accuracy"), ("f1", "F1")):
        ys = [r[key] * 100 for r in rows]
        fig.add_trace(go.Bar(x=[r["label"] for r in rows], y=ys, name=name, text=[f"{y:.1f}" for y in ys],
                             textposition="outside"))
    lo = min(min(r["accuracy"], r["f1"]) for r in rows) * 100
    fig.update_layout(barmode="group", title=title or "accuracy and F1 on the eval set", yaxis_title="%",
                      yaxis_range=[max(0, lo - 10), 100], height=380)
    return fig


def size_figure(rows: list[dict], title: str = "") -> go.Figure:
    """Checkpoint size on disk per variant (every weight, embeddings included)."""
    return _bar(rows, "size_mb", title or "model size on disk (all weights, embeddings included)", "MB")


def latency_figure(rows: list[dict], title: str = "", threads: int | None = None) -> go.Figure:
    """Median latency at batch 1 and 8 (seq len 128), eager and compiled, per variant."""
    fig = go.Figure()
    for key, name in (("latency_ms_b1", "b1 eager"), ("latency_ms_b8", "b8 eager"),
                      ("latency_ms_b1_compiled", "b1 compiled"), ("latency_ms_b8_compiled", "b8 compiled")):
        pts = [(r["label"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            fig.add_trace(go.Bar(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name,
                                 text=[f"{p[1]:.0f}" for p in pts], textposition="outside"))
    t = f", {threads} threads" if threads else ""
    fig.update_layout(barmode="group", title=title or f"CPU latency, seq len 128 (median ms{t}; log scale)",
                      yaxis_title="ms", yaxis_type="log", height=400)
    return fig


def results_figures(rows: list[dict], threads: int | None = None, prefix: str = "") -> dict[str, go.Figure]:
    """The three result charts of notebook 01, by name."""
    p = f"{prefix}: " if prefix else ""
    return {
        "accuracy": accuracy_figure(rows, f"{p}accuracy and F1"),
        "size": size_figure(rows, f"{p}size on disk, MB (all weights, embeddings included)"),
        "latency": latency_figure(rows, f"{p}latency at seq len 128, median ms"
                                        + (f", {threads} threads" if threads else "") + " (log scale)"),
    }
