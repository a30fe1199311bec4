"""Pictures of FlashAttention's tiling (notebooks 02 and 02b): one step of the tiled forward (the explainer widget
redraws it), and the causal tile map (which tiles are skipped, masked, or run without a mask)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.attention import tiling
from labkit.plots.palette import BLUE, GREY, ORANGE, RED

TILE_COLORS = {tiling.SKIPPED: "#e8e8e8", tiling.MASKED: ORANGE, tiling.UNMASKED: BLUE}
TILE_NAMES = {tiling.SKIPPED: "skipped (above the diagonal)", tiling.MASKED: "masked (on the diagonal)",
              tiling.UNMASKED: "no mask (left of the diagonal)"}


def _padded(lo: float, hi: float) -> list[float]:
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    return [lo - pad, hi + pad]


def step_data(steps: list[tiling.TileStep], scores, j: int, block_q: int, block_k: int,
              causal: bool = False) -> dict:
    """What the step figure draws at step `j` (0-based): the computed scores (hidden ones blank when causal), the
    running statistics, the output."""
    st = steps[j]
    n = scores.shape[0]
    shown = [[float(scores[r, c]) if st.computed[r // block_q, c // block_k] and not (causal and c > r) else None
              for c in range(n)] for r in range(n)]
    rows = list(range(n))
    return {"z": shown, "rows": rows, "m": st.m.tolist(), "l": st.l.tolist(), "o": st.out[:, 0].tolist(),
            "rescaled_rows": [r for r in rows if bool(st.rescaled[r])],
            "rescaled_m": [float(st.m[r]) for r in rows if bool(st.rescaled[r])], "cols": st.cols}


def step_figure(steps: list[tiling.TileStep], scores, j: int, block_q: int, block_k: int,
                causal: bool = False) -> go.Figure:
    """Four panels at step `j`: the score tiles computed so far (this step's outlined), the running row maximum m,
    the running denominator l and the output's first feature, each against its final value (dashed grey)."""
    n = scores.shape[0]
    d = step_data(steps, scores, j, block_q, block_k, causal)
    last = steps[-1]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.16,
                        subplot_titles=("scores S = QKᵀ/√d: tiles computed so far", "running row maximum m",
                                        "running denominator l", "output O[:, 0] = acc / l"))
    fig.add_trace(go.Heatmap(z=d["z"], colorscale="RdBu", zmid=0, showscale=False, name="scores",
                             hovertemplate="row %{y}, column %{x}: %{z:.2f}<extra></extra>"), row=1, col=1)
    final = {"m": last.m.tolist(), "l": last.l.tolist(), "o": last.out[:, 0].tolist()}
    for key, (row, col) in (("m", (1, 2)), ("l", (2, 1)), ("o", (2, 2))):
        fig.add_trace(go.Scatter(x=d["rows"], y=final[key], mode="lines", line=dict(color=GREY, dash="dash"),
                                 name="final value (all tiles)", legendgroup="final", showlegend=key == "m"),
                      row=row, col=col)
        fig.add_trace(go.Scatter(x=d["rows"], y=d[key], mode="lines+markers", line=dict(color=BLUE, width=2),
                                 marker=dict(size=5), name="after this step", legendgroup="now",
                                 showlegend=key == "m"), row=row, col=col)
    fig.add_trace(go.Scatter(x=d["rescaled_rows"], y=d["rescaled_m"], mode="markers", name="max rose: rescaled",
                             marker=dict(color=RED, size=9, symbol="circle-open", line=dict(width=2))), row=1, col=2)
    for key, (row, col) in (("m", (1, 2)), ("l", (2, 1)), ("o", (2, 2))):
        values = [v for st in steps for v in (st.m if key == "m" else st.l if key == "l" else st.out[:, 0]).tolist()]
        fig.update_yaxes(range=_padded(min(values), max(values)), row=row, col=col)
        fig.update_xaxes(title_text="query row", range=[-0.5, n - 0.5], row=row, col=col)
    fig.update_xaxes(title_text="key column", range=[-0.5, n - 0.5], row=1, col=1)
    fig.update_yaxes(title_text="query row", autorange="reversed", row=1, col=1)
    _outline(fig, d["cols"], n)
    fig.update_layout(height=640, template="plotly_white", margin=dict(t=90, b=40, l=60, r=20),
                      legend=dict(orientation="h", y=-0.12),
                      title=f"key/value tile {j + 1} of {len(steps)}: columns {d['cols'][0]}-{d['cols'][1] - 1}"
                            f" folded into every query block (Br={block_q}, Bc={block_k}"
                            f"{', causal' if causal else ''})")
    return fig


def _outline(fig: go.Figure, cols: tuple[int, int], n: int) -> None:
    fig.layout.shapes = ()
    fig.add_shape(type="rect", x0=cols[0] - 0.5, x1=cols[1] - 0.5, y0=-0.5, y1=n - 0.5, xref="x", yref="y",
                  line=dict(color=ORANGE, width=3))


def causal_tile_map(cases: list[tuple[int, int, int]]) -> go.Figure:
    """One panel per (n, block_q, block_k): each tile of a causal forward coloured skipped / masked / no mask."""
    fig = make_subplots(rows=1, cols=len(cases), horizontal_spacing=0.08, subplot_titles=[
        _map_title(*c) for c in cases])
    scale = [[0.0, TILE_COLORS[0]], [0.33, TILE_COLORS[0]], [0.34, TILE_COLORS[1]], [0.66, TILE_COLORS[1]],
             [0.67, TILE_COLORS[2]], [1.0, TILE_COLORS[2]]]
    for i, (n, bq, bk) in enumerate(cases, start=1):
        kinds = tiling.causal_tile_kinds(n, bq, bk)
        text = [[TILE_NAMES[int(k)] for k in row] for row in kinds.tolist()]
        fig.add_trace(go.Heatmap(z=kinds.tolist(), zmin=0, zmax=2, colorscale=scale, showscale=False, xgap=1, ygap=1,
                                 text=text, hovertemplate="query block %{y}, key block %{x}: %{text}<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text=f"key block (Bc={bk})", dtick=1 if kinds.shape[1] <= 20 else None, row=1, col=i)
        fig.update_yaxes(title_text=f"query block (Br={bq})", autorange="reversed",
                         dtick=1 if kinds.shape[0] <= 20 else None, row=1, col=i)
    for kind in (tiling.UNMASKED, tiling.MASKED, tiling.SKIPPED):  # a legend for the three colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=TILE_NAMES[kind],
                                 marker=dict(symbol="square", size=12, color=TILE_COLORS[kind])))
    fig.update_layout(height=420, template="plotly_white", margin=dict(t=70, b=40, l=60, r=20),
                      legend=dict(orientation="h", y=-0.2), title="causal forward: which tiles run, and how")
    return fig


def _map_title(n: int, bq: int, bk: int) -> str:
    unmasked, masked = tiling.causal_tile_counts(n, bq, bk)
    return f"N={n}: {unmasked} without mask, {masked} masked"


__all__ = ["causal_tile_map", "step_data", "step_figure"]
