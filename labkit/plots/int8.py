"""Pictures of notebook 03b: how the INT8 kernel's launch grid fills a GPU's streaming multiprocessors, and where
the time of one feed-forward block goes, kernel by kernel, eager against compiled (from the committed profile)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.plots.palette import BLUE, CYAN, GREEN, GREY, ORANGE, PURPLE, RED
from labkit.quant.int8_kernel import KernelConfig, launch_grid

FAMILY_COLORS = {"float-gemm": BLUE, "int8-fused": CYAN, "int8-gemm": CYAN, "labkit-int8": GREEN,
                 "fp8-gemm": PURPLE, "other": ORANGE, "memory": RED, "host": GREY}
FAMILY_NAMES = {"float-gemm": "float matmul", "int8-fused": "INT8 matmul (fused)", "int8-gemm": "INT8 matmul",
                "labkit-int8": "labkit INT8 kernel", "fp8-gemm": "FP8 matmul", "other": "elementwise / small kernels",
                "memory": "memory copies", "host": "host: launches and gaps (no kernel running)"}


def launch_grid_figure(cases: list[tuple[str, KernelConfig, int, int]], sms: int = 132) -> go.Figure:
    """One panel per (label, config, m, n): the programs of the launch grid laid out as the GPU runs them, one
    column per streaming multiprocessor, one row per wave (programs start in launch order; an idealisation: a
    real SM can hold several programs at once). Colour: the split-K part; blank: an SM with nothing to do."""
    fig = make_subplots(rows=len(cases), cols=1, vertical_spacing=0.22 / max(1, len(cases) - 1) if len(cases) > 1
                        else 0.1, subplot_titles=[_grid_title(c, sms) for c in cases])
    for i, (_, cfg, m, n) in enumerate(cases, start=1):
        tiles_n, split, tiles_m = launch_grid(cfg, m, n)
        programs = tiles_n * split * tiles_m
        waves = -(-programs // sms)
        z = [[None] * sms for _ in range(waves)]
        text = [[""] * sms for _ in range(waves)]
        for pid in range(programs):
            pid_n, rest = pid % tiles_n, pid // tiles_n
            pid_k, pid_m = rest % split, rest // split
            z[pid // sms][pid % sms] = pid_k
            text[pid // sms][pid % sms] = (f"program {pid}: channels {pid_n * cfg.block_n}-"
                                           f"{min(n, (pid_n + 1) * cfg.block_n) - 1}, K part {pid_k + 1} of {split}, "
                                           f"tokens {pid_m * cfg.block_m}-{min(m, (pid_m + 1) * cfg.block_m) - 1}")
        fig.add_trace(go.Heatmap(z=z, text=text, zmin=0, zmax=max(1, split - 1), colorscale="Viridis",
                                 showscale=False, xgap=1, ygap=2, hovertemplate="SM %{x}, wave %{y}: %{text}"
                                 "<extra></extra>"), row=i, col=1)
        fig.update_yaxes(title_text="wave", autorange="reversed", dtick=1, row=i, col=1)
        fig.update_xaxes(title_text="streaming multiprocessor" if i == len(cases) else None, range=[-0.5, sms - 0.5],
                         row=i, col=1)
    fig.update_layout(height=170 + 150 * len(cases), template="plotly_white", margin=dict(t=70, b=40, l=60, r=20),
                      title=f"the launch grid on a GPU with {sms} SMs (an H100): one cell per program")
    return fig


def _grid_title(case: tuple[str, KernelConfig, int, int], sms: int) -> str:
    label, cfg, m, n = case
    tiles_n, split, tiles_m = launch_grid(cfg, m, n)
    programs = tiles_n * split * tiles_m
    return (f"{label}: {tiles_n} x {split} x {tiles_m} = {programs} programs, {programs / sms:.2f} waves, "
            f"{min(programs, sms)} of {sms} SMs busy")


def kernel_timeline_figure(rows: list[dict], variants: list[str], m: int = 1) -> go.Figure:
    """One bar per (variant, eager/compiled) block row at M=`m`: its GPU kernels back to back (longest first,
    coloured by family, from the committed profile), then the rest of the measured wall time (p50), when the GPU
    waited for the host to launch the next kernel."""
    bars = []
    for variant in variants:
        for compiled in (False, True):
            r = next((x for x in rows if x.get("part") == "block" and x.get("variant") == variant
                      and x.get("compiled") == compiled and x.get("m") == m and x.get("ok")), None)
            if r is not None and r.get("kernels"):
                bars.append((f"{variant} · {'compiled' if compiled else 'eager'}", r))
    fig = go.Figure()
    shown = set()
    for label, r in bars:
        start = 0.0
        kernels = sorted(r["kernels"], key=lambda k: -k["ms"])
        for k in kernels:
            us = 1e3 * k["ms"]
            fam = k["family"] if k["family"] in FAMILY_COLORS else "other"
            fig.add_trace(_segment(label, start, us, fam, f"{k['name'][:60]} x{k['calls']}: {us:.1f} us",
                                   fam not in shown))
            shown.add(fam)
            start += us
        host = max(0.0, 1e3 * r["p50_ms"] - start)
        fig.add_trace(_segment(label, start, host, "host", f"wall time {1e3 * r['p50_ms']:.0f} us - kernels "
                                                           f"{start:.0f} us", "host" not in shown))
        shown.add("host")
    fig.update_layout(barmode="overlay", height=150 + 38 * len(bars), template="plotly_white",
                      margin=dict(t=80, b=40, l=200, r=20), legend=dict(orientation="h", y=-0.25),
                      title=f"one feed-forward block at M={m} (committed H100 profile):<br>"
                            "its GPU kernels back to back, then the wait for the host")
    fig.update_xaxes(title_text="microseconds (wall time of one block, median)", rangemode="tozero")
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def _segment(label: str, start: float, width: float, family: str, hover: str, legend: bool) -> go.Bar:
    color = FAMILY_COLORS[family]
    return go.Bar(y=[label], x=[width], base=[start], orientation="h", name=FAMILY_NAMES[family], legendgroup=family,
                  showlegend=legend, hovertext=[hover], hoverinfo="text",
                  marker=dict(color=color, line=dict(color="white", width=1),
                              pattern=dict(shape="/") if family == "host" else None))


__all__ = ["kernel_timeline_figure", "launch_grid_figure"]
