"""Notebook 03's figures: variants side by side, fine-tune losses, and the big shape's speed and memory."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.plots.palette import METHOD_COLORS, SERIES


def comparison_figure(rows: list[dict], title: str = ""):
    """Bar charts side by side: perplexity, weight size, prefill latency per length, decode tokens/s."""
    ok = [r for r in rows if "ppl" in r]
    names = [r["variant"] for r in ok]
    lengths = sorted({p["seq_len"] for r in ok for p in r.get("prefill", [])})
    panels = ["perplexity (WikiText-2 test, lower is better)", "weights (MB)"]
    panels += [f"prefill {n} tokens (ms)" for n in lengths] + ["decode (tokens/s, higher is better)"]
    cols = min(3, len(panels))  # rows of three: every panel stays inside a notebook's width
    nrows = -(-len(panels) // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=panels, vertical_spacing=0.3 / nrows,
                        horizontal_spacing=0.08)
    colors = [METHOD_COLORS.get(r["method"], METHOD_COLORS["float"]) for r in ok]
    values = [[r["ppl"] for r in ok], [r["size_mb"] for r in ok]]
    latency = [{p["seq_len"]: p["latency_ms"] for p in r.get("prefill", [])} for r in ok]
    values += [[by_len.get(n) for by_len in latency] for n in lengths] + [[r.get("decode_tok_s") for r in ok]]
    for i, v in enumerate(values):
        fig.add_trace(go.Bar(x=names, y=v, marker_color=colors, showlegend=False), row=i // cols + 1,
                      col=i % cols + 1)
    fig.update_layout(title=title or "bf16 vs PTQ vs QAT of the selected layers (grey float, blue PTQ, green QAT)",
                      height=120 + 330 * nrows, margin={"t": 90})
    return fig


def loss_figure(losses: dict[str, list[float]]):
    """Fine-tune loss per step for every fine-tuned variant (same batches, same schedule)."""
    fig = go.Figure([go.Scatter(y=v, x=list(range(1, len(v) + 1)), mode="lines+markers", name=k)
                     for k, v in losses.items()])
    fig.update_layout(title="Fine-tune on WikiText-2 validation: same data, steps and learning rate",
                      xaxis_title="step", yaxis_title="training loss", height=340)
    return fig


def shape_figure(shape_rows: list[dict]):
    """Big-shape results: prefill latency and peak memory per length, weights, decode; OOM marked."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=["weights (GiB)", "prefill latency (ms)",
                                                        "peak memory (GiB)", "decode (tokens/s)"],
                        vertical_spacing=0.18)  # 2 x 2: fits a notebook's width
    variants = list(dict.fromkeys(r["variant"] for r in shape_rows))
    for i, v in enumerate(variants):
        rs = [r for r in shape_rows if r["variant"] == v]
        color = SERIES[i % len(SERIES)]
        w = next((r["weight_gib"] for r in rs if r.get("weight_gib") is not None), None)
        fig.add_trace(go.Bar(x=[v], y=[w], marker_color=color, name=v, legendgroup=v), row=1, col=1)
        pre = [r for r in rs if r.get("kind") == "prefill"]
        labels = [f"{r['seq_len'] // 1024}k" + ("" if r["ok"] else " (OOM)" if r["oom"] else " (failed)") for r in pre]
        fig.add_trace(go.Bar(x=labels, y=[r.get("latency_ms") for r in pre], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=1, col=2)
        fig.add_trace(go.Bar(x=labels, y=[r.get("peak_gib") for r in pre], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=2, col=1)
        dec = [r for r in rs if r.get("kind") == "decode" and r.get("ok")]
        fig.add_trace(go.Bar(x=[v], y=[dec[0]["decode_tok_s"] if dec else None], marker_color=color, name=v,
                             legendgroup=v, showlegend=False), row=2, col=2)
    model = shape_rows[0]["model"] if shape_rows else ""
    fig.update_layout(title=f"{model} shape, random weights (speed and memory only): bf16 + FA2 vs INT8 "
                            "feed-forward + FA2", barmode="group", height=640, margin={"t": 90})
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=2)
    return fig
