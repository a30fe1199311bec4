"""The per-layer sensitivity heatmap (notebook 03): blocks by roles, colour = damage of quantizing one layer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from labkit.quant.sensitivity import METRICS, ROLES


def sensitivity_heatmap(table: pd.DataFrame, metric: str = "kl", log: bool = True, title: str | None = None):
    """Plotly heatmap: blocks (rows) by roles (columns) of `metric`; lm_head gets its own row. Missing = blank."""
    if metric not in table.columns:
        raise ValueError(f"metric {metric!r} is not a column of the sensitivity table; use one of {METRICS}")
    roles = [r for r in ROLES if r in set(table["role"])] + sorted(set(table["role"]) - set(ROLES))
    blocks = sorted(int(b) for b in table["block"].dropna().unique())
    row_labels = [f"block {b}" for b in blocks]
    has_head = bool((table["block"].isna()).any())
    if has_head:
        row_labels.append("head")
    z = np.full((len(row_labels), len(roles)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for _, r in table.iterrows():
        i = len(row_labels) - 1 if pd.isna(r["block"]) else blocks.index(int(r["block"]))
        j = roles.index(r["role"])
        v = float(r[metric])
        z[i, j] = math.log10(max(v, 1e-12)) if log else v
        text[i, j] = f"{r['name']}<br>{metric} = {v:.4g}"
    label = {"kl": "KL divergence (nats/token)", "ppl_delta": "perplexity increase (%)"}.get(metric, metric)
    fig = go.Figure(go.Heatmap(
        z=z, x=roles, y=row_labels, text=text, hoverinfo="text", colorscale="Viridis",
        colorbar={"title": ("log10 " if log else "") + metric},
    ))
    mode = table.attrs.get("mode", "")
    fig.update_layout(
        title=title or f"Damage of quantizing one layer alone ({mode}): {label}",
        xaxis_title="role", yaxis_title="", yaxis={"autorange": "reversed"},
        height=max(300, 22 * len(row_labels) + 140), width=620,
    )
    return fig
