"""Live sweep plot: latency and peak memory against sequence length, one trace per backend, drawn point by point.

    live = LiveSweepPlot(model="tiny-llama", backends=["eager", "sdpa"], seq_lens=[256, 512, 1024])
    live            # controls (backends, lengths, batch size, model, run button), progress bar, FigureWidget
    live.run()      # or click "Run sweep"; each finished point appears at once
    static_figure(live.rows).show()   # the same result as a plain go.Figure (shows in executed HTML)
"""

from __future__ import annotations

from collections.abc import Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from labkit.plots.attention import length_ticks
from labkit.plots.palette import BACKEND_COLORS as COLORS
from labkit.plots.palette import GREY

MEMORY_LABELS = {"cuda_max_allocated": "GPU memory (max allocated)", "cpu_peak_rss": "CPU RAM (peak RSS)"}


def _color(backend: str) -> str:
    return COLORS.get(backend, GREY)


def _memory_label(rows: list[dict]) -> str:
    kinds = {r.get("memory_kind") for r in rows if r.get("memory_kind")}
    if len(kinds) == 1:
        return MEMORY_LABELS.get(kinds.pop(), "peak memory")
    return "peak memory"


def _base_figure(title: str | None, memory_title: str = "peak memory (GiB)") -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward latency", "peak memory"), horizontal_spacing=0.1)
    fig.update_xaxes(type="log", title_text="sequence length N (tokens)", row=1, col=1)
    fig.update_xaxes(type="log", title_text="sequence length N (tokens)", row=1, col=2)
    fig.update_yaxes(type="log", title_text="latency (ms, median)", row=1, col=1)
    fig.update_yaxes(title_text=memory_title, rangemode="tozero", row=1, col=2)
    fig.update_layout(title=title, height=430, margin=dict(t=70, b=50, l=60, r=20),
                      legend=dict(orientation="h", y=-0.22), template="plotly_white")
    return fig


def _series(rows: list[dict], backend: str) -> dict:
    """x/y of the measured points of one backend, and where it failed (OOM or error) first."""
    ok = sorted((r for r in rows if r["backend"] == backend and r["ok"]), key=lambda r: r["seq_len"])
    failed = sorted((r for r in rows if r["backend"] == backend and not r["ok"] and not r.get("skipped")),
                    key=lambda r: r["seq_len"])
    return {
        "x": [r["seq_len"] for r in ok],
        "latency": [r["latency_ms"] for r in ok],
        "spread": _spread(ok),
        "memory": [r["peak_gib"] for r in ok],
        "failed": failed[:1],
        "last_ok": ok[-1] if ok else None,
    }


def _spread(ok: list[dict]) -> dict | None:
    """Error bars from the 10th to the 90th percentile of the repeats, when the rows carry them."""
    if not ok or any(r.get("p10_ms") is None or r.get("p90_ms") is None for r in ok):
        return None
    return dict(type="data", symmetric=False, array=[max(r["p90_ms"] - r["latency_ms"], 0) for r in ok],
                arrayminus=[max(r["latency_ms"] - r["p10_ms"], 0) for r in ok], thickness=1.2, width=4)


NOISE_NOTE = ("bars: 10th to 90th percentile of the repeats. On a shared CPU, differences smaller than the bars "
              "are noise.")


def _note_noise(fig: go.Figure, rows: list[dict]) -> None:
    """On a CPU, say under the latency panel that its small differences are timing noise."""
    if rows and all(r.get("device", "cpu").startswith("cpu") for r in rows) and \
            not any(a.name == "noise-note" for a in fig.layout.annotations):
        fig.add_annotation(name="noise-note", text=NOISE_NOTE, x=0, xref="paper", y=1.0, yref="paper",
                           yanchor="bottom", yshift=30, showarrow=False, font=dict(size=11, color="#555"),
                           xanchor="left")
        fig.update_layout(margin=dict(t=110))  # room for the note between the title and the panel titles


def _set_length_ticks(fig: go.Figure, rows: list[dict], curves: dict | None = None) -> None:
    lengths = [r["seq_len"] for r in rows] + list((curves or {}).get("seq_len", []))
    ticks = length_ticks(lengths)
    if ticks:
        fig.update_xaxes(**ticks, row=1, col=1)
        fig.update_xaxes(**ticks, row=1, col=2)


def _oom_markers(rows: list[dict], backends: Iterable[str], memory_limit_gib: float | None) -> dict:
    """Marker positions: at the failed N, at the last measured latency, and at the memory limit (or last peak)."""
    xs, lat, mem, text = [], [], [], []
    for backend in backends:
        s = _series(rows, backend)
        for r in s["failed"]:
            last = s["last_ok"]
            xs.append(r["seq_len"])
            lat.append(last["latency_ms"] if last else None)
            mem.append(memory_limit_gib if memory_limit_gib else (last["peak_gib"] if last else None))
            kind = "out of memory" if r.get("oom") else "failed"
            text.append(f"{backend}: {kind} at N={r['seq_len']}<br>{(r.get('error') or '')[:80]}")
    return {"x": xs, "latency": lat, "memory": mem, "text": text}


def add_memory_model(fig: go.Figure, curves: dict, offset_gib: float = 0.0, row: int = 1, col: int = 2,
                     which: Iterable[str] = ("weights", "total_flash", "total_eager")) -> go.Figure:
    """Dashed analytic curves (from `labkit.attention.memory_model.memory_curves`) on the memory panel."""
    names = {"weights": "model: weights", "activations": "model: activations", "kv_cache": "model: KV cache",
             "total_flash": "model: weights + activations (flash kernels)",
             "total_eager": "model: + N×N scores and softmax (eager)", "eager_scores": "model: N×N scores"}
    dashes = {"weights": "dot", "total_flash": "dash", "total_eager": "dash", "kv_cache": "dashdot"}
    colors = {"total_flash": COLORS["fa2"], "total_eager": COLORS["eager"], "weights": "#555", "kv_cache": "#999"}
    label = f" (+{offset_gib:.2f} GiB process baseline)" if offset_gib else ""
    for key in which:
        fig.add_trace(go.Scatter(
            x=curves["seq_len"], y=[v + offset_gib for v in curves[key]], mode="lines", name=names[key] + label,
            line=dict(dash=dashes.get(key, "dash"), color=colors.get(key, "#777"), width=1.5), opacity=0.8,
            legendgroup="model", hovertemplate="N=%{x}<br>%{y:.2f} GiB<extra>" + names[key] + "</extra>",
        ), row=row, col=col)
    return fig


def static_figure(rows: list[dict], memory_limit_gib: float | None = None, memory_limit_label: str | None = None,
                  title: str | None = None, curves: dict | None = None, curve_offset_gib: float = 0.0) -> go.Figure:
    """The sweep result as a plain plotly Figure (latency and peak memory against N, OOM marked, limit drawn)."""
    memory_label = _memory_label(rows)
    fig = _base_figure(title, f"{memory_label} (GiB)")
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    for backend in backends:
        s = _series(rows, backend)
        if not s["x"] and not s["failed"]:
            continue
        for panel, key in ((1, "latency"), (2, "memory")):
            fig.add_trace(go.Scatter(
                x=s["x"], y=s[key], mode="lines+markers", name=backend, legendgroup=backend, showlegend=panel == 1,
                line=dict(color=_color(backend), width=2.5), error_y=s["spread"] if panel == 1 else None,
                hovertemplate="%{x} tokens: %{y:.3g}" + (" ms" if panel == 1 else " GiB") + f"<extra>{backend}</extra>",
            ), row=1, col=panel)
    _add_limit_and_oom(fig, rows, backends, memory_limit_gib, memory_limit_label or memory_label)
    if curves is not None:
        add_memory_model(fig, curves, curve_offset_gib)
    _fit_memory_axis(fig, rows, memory_limit_gib)
    _set_length_ticks(fig, rows, curves)
    _note_noise(fig, rows)
    return fig


def _fit_memory_axis(fig, rows: list[dict], memory_limit_gib: float | None) -> None:
    """Keep the memory axis on the data when the device limit is far above it (a CPU's RAM, a short sweep);
    the limit stays in the legend, marked off scale."""
    peaks = [r["peak_gib"] for r in rows if r.get("peak_gib") is not None]
    top = max(peaks) if peaks else None
    if memory_limit_gib and (top is None or memory_limit_gib <= 3 * top):
        fig.update_yaxes(range=[0, 1.15 * memory_limit_gib], row=1, col=2)  # curves above the limit run off
    elif top:  # zoom on the data: on a CPU the runtime's baseline would flatten the differences
        low = min(peaks)
        pad = max(0.15 * (top - low), 0.02 * top)
        fig.update_yaxes(range=[max(low - pad, 0), top + pad], rangemode="normal", row=1, col=2)


def _add_limit_and_oom(fig, rows, backends, memory_limit_gib, memory_limit_label) -> None:
    xs = [r["seq_len"] for r in rows] or [1]
    if memory_limit_gib:
        fig.add_trace(go.Scatter(
            x=[min(xs), max(xs)], y=[memory_limit_gib] * 2, mode="lines", name=f"{memory_limit_label} limit "
            f"({memory_limit_gib:.0f} GiB)", line=dict(color="black", dash="dashdot", width=1),
            hoverinfo="name"), row=1, col=2)
    m = _oom_markers(rows, backends, memory_limit_gib)
    for panel, key in ((1, "latency"), (2, "memory")):
        fig.add_trace(go.Scatter(
            x=m["x"], y=m[key], mode="markers+text", name="out of memory / failed", legendgroup="oom",
            showlegend=panel == 1, text=["OOM" if "out of memory" in t else "failed" for t in m["text"]],
            textposition="top center", hovertext=m["text"], hoverinfo="text",
            marker=dict(symbol="x", size=14, color="crimson", line=dict(width=2))), row=1, col=panel)


class LiveSweepPlot:
    """Controls + progress bar + FigureWidget; `run()` (or the button) runs `labkit.attention.sweep.sweep` and
    draws each point as it finishes. `rows` holds the results; `static_figure()` gives them as a go.Figure."""

    def __init__(self, model: str = "tiny-llama", backends: Iterable[str] | None = None,
                 seq_lens: Iterable[int] = (128, 256, 512), batch_size: int = 1, device=None,
                 dtype: str | None = None, memory_limit_gib: float | None = None, out=None,
                 title: str | None = None, isolate: bool | None = None):
        import ipywidgets as widgets
        import torch

        from labkit.attention import BACKENDS, available_backends, backend_status
        from labkit.models import EMBEDDED_CAUSAL_LMS, SHAPES
        from labkit.widgets.choices import ChoiceDropdown, ChoiceSelectMultiple

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.out = out
        self.isolate = isolate  # None: one subprocess per point on a CPU (honest peak RAM), in-process on a GPU
        self.rows: list[dict] = []
        self.title = title
        status = backend_status(self.device)
        if memory_limit_gib is None:
            from labkit.measure.memory import device_memory_gib

            memory_limit_gib, self.memory_limit_label = device_memory_gib(self.device)
        else:
            self.memory_limit_label = "GPU memory" if self.device.type == "cuda" else "CPU RAM"
        self.memory_limit_gib = memory_limit_gib
        options = [(name if status[name] == "available" else f"{name} (unavailable here)", name)
                   for name in BACKENDS]
        chosen = list(backends) if backends is not None else available_backends(self.device)
        self.backends_select = ChoiceSelectMultiple(options=options, value=tuple(chosen), rows=len(options),
                                                    description="backends")
        self.lengths_text = widgets.Text(value=",".join(str(n) for n in seq_lens), description="lengths N",
                                         placeholder="e.g. 512,1024,2048")
        self.batch_size_input = widgets.BoundedIntText(value=batch_size, min=1, max=256, description="batch")
        models = list(dict.fromkeys([model, *SHAPES, *EMBEDDED_CAUSAL_LMS]))
        self.model_dropdown = ChoiceDropdown(options=models, value=model, description="model")
        self.run_button = widgets.Button(description="Run sweep", button_style="primary", icon="play")
        self.status = widgets.HTML(value=self._unavailable_note(status))
        self.progress = widgets.Output()
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss"
        self.figure = go.FigureWidget(_base_figure(title, f"{MEMORY_LABELS[kind]} (GiB)"))
        self.run_button.on_click(self._on_click)
        controls = widgets.HBox([self.backends_select, widgets.VBox(
            [self.model_dropdown, self.lengths_text, self.batch_size_input, self.run_button])])
        self.widget = widgets.VBox([controls, self.status, self.progress, self.figure])

    def _on_click(self, _button) -> None:
        """The button: run, and show bad control values in the status line (a callback's exception is not
        shown in the notebook)."""
        import html

        try:
            self.run()
        except ValueError as err:
            self.status.value = f"<span style='color:crimson'>{html.escape(str(err))}</span>"
            return
        self.status.value += ("<br><b>The cells below still show the earlier run:</b> run them again "
                              "(Shift+Enter) to redraw the static figure and the table from these points.")

    @staticmethod
    def _unavailable_note(status: dict) -> str:
        missing = {k: v for k, v in status.items() if v != "available"}
        if not missing:
            return ""
        items = "".join(f"<li><b>{k}</b>: {v}</li>" for k, v in missing.items())
        return f"<details><summary>unavailable backends here ({len(missing)})</summary><ul>{items}</ul></details>"

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def selected(self) -> dict:
        """The sweep the controls describe: backends, seq_lens, batch_size, model."""
        try:
            seq_lens = sorted({int(s) for s in self.lengths_text.value.replace(" ", "").split(",") if s})
        except ValueError as err:
            raise ValueError(f"lengths must be comma-separated integers, got {self.lengths_text.value!r}") from err
        if not seq_lens or min(seq_lens) < 1:
            raise ValueError(f"give at least one positive sequence length, got {self.lengths_text.value!r}")
        if not self.backends_select.value:
            raise ValueError("select at least one backend")
        return {"backends": list(self.backends_select.value), "seq_lens": seq_lens,
                "batch_size": int(self.batch_size_input.value), "model": self.model_dropdown.value}

    def _reset_traces(self, backends: list[str]) -> None:
        fig = self.figure
        with fig.batch_update():
            fig.data = ()
            for backend in backends:
                for panel in (1, 2):
                    fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=backend, legendgroup=backend,
                                             showlegend=panel == 1, line=dict(color=_color(backend), width=2.5)),
                                  row=1, col=panel)
            _add_limit_and_oom(fig, [], backends, self.memory_limit_gib, self.memory_limit_label)
            if self.memory_limit_gib:
                fig.data[-3].x = ()  # limit line drawn once points arrive (its x range follows them)
                fig.data[-3].y = ()

    def _draw(self, backends: list[str]) -> None:
        """Refresh every trace from `self.rows` (called after each point)."""
        fig = self.figure
        with fig.batch_update():
            for i, backend in enumerate(backends):
                s = _series(self.rows, backend)
                lat, mem = fig.data[2 * i], fig.data[2 * i + 1]
                lat.x, lat.y = s["x"], s["latency"]
                lat.error_y = s["spread"] or dict(visible=False)
                mem.x, mem.y = s["x"], s["memory"]
            m = _oom_markers(self.rows, backends, self.memory_limit_gib)
            oom_lat, oom_mem = fig.data[-2], fig.data[-1]
            for trace, key in ((oom_lat, "latency"), (oom_mem, "memory")):
                trace.x, trace.y = m["x"], m[key]
                trace.hovertext = m["text"]
                trace.text = ["OOM" if "out of memory" in t else "failed" for t in m["text"]]
            if self.memory_limit_gib:
                xs = [r["seq_len"] for r in self.rows]
                fig.data[-3].x, fig.data[-3].y = (min(xs), max(xs)), (self.memory_limit_gib,) * 2
            _fit_memory_axis(fig, self.rows, self.memory_limit_gib)
            _set_length_ticks(fig, self.rows)
            _note_noise(fig, self.rows)
            kinds = {r.get("memory_kind") for r in self.rows if r.get("memory_kind")}
            if len(kinds) == 1:
                fig.layout.yaxis2.title.text = MEMORY_LABELS.get(kinds.pop(), "peak memory") + " (GiB)"

    def run(self, **overrides) -> list[dict]:
        """Run the sweep the controls describe (keyword overrides: backends, seq_lens, batch_size, model)."""
        from labkit.attention.sweep import ModelSpec, sweep

        cfg = {**self.selected(), **overrides}
        backends = list(cfg["backends"])
        self.rows = []
        self.run_button.disabled = True
        self.status.value = (f"running {cfg['model']} (batch {cfg['batch_size']}) on {self.device.type}: "
                             f"{len(backends)} backends x {len(cfg['seq_lens'])} lengths ...")
        self._reset_traces(backends)
        self.progress.clear_output()

        def on_point(row: dict) -> None:
            self.rows.append(row)
            self._draw(backends)

        try:
            with self.progress:
                sweep(ModelSpec(cfg["model"], self.dtype), backends, cfg["seq_lens"], cfg["batch_size"],
                      device=self.device, out=self.out, on_point=on_point, progress=True, isolate=self.isolate)
            ok = sum(r["ok"] for r in self.rows)
            ooms = sum(r["oom"] for r in self.rows)
            rest = len(self.rows) - ok - ooms
            self.status.value = f"done: {ok} points measured, {ooms} out of memory, {rest} skipped or failed"
        finally:
            self.run_button.disabled = False
        return self.rows

    def static_figure(self, **kwargs) -> go.Figure:
        """The current results as a plain go.Figure."""
        kwargs.setdefault("memory_limit_gib", self.memory_limit_gib)
        kwargs.setdefault("memory_limit_label", self.memory_limit_label)
        kwargs.setdefault("title", self.title)
        return static_figure(self.rows, **kwargs)
