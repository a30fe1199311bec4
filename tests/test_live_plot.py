"""The live sweep widget driven headlessly: set the controls, click run, read the traces."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from conftest import simulate_eager_oom
from labkit.widgets import LiveSweepPlot, static_figure


def _traces(fig, name):
    return [t for t in fig.data if t.name == name]


@pytest.fixture
def fake_oom(monkeypatch):
    simulate_eager_oom(monkeypatch, from_len=32)


def test_controls_and_button_run_a_sweep(fake_oom):
    live = LiveSweepPlot(isolate=False, memory_limit_gib=2.0)
    live.model_dropdown.value = "tiny-llama"
    live.backends_select.value = ("eager", "sdpa")
    live.lengths_text.value = "32, 8,16"
    live.batch_size_input.value = 2
    live.run_button.click()

    assert len(live.rows) == 6 and {r["batch_size"] for r in live.rows} == {2}
    eager_lat, eager_mem = _traces(live.figure, "eager")
    sdpa_lat, sdpa_mem = _traces(live.figure, "sdpa")
    assert tuple(sdpa_lat.x) == (8, 16, 32) and all(y > 0 for y in sdpa_lat.y)
    assert tuple(eager_lat.x) == (8, 16) and tuple(eager_mem.x) == (8, 16)  # stopped at its OOM
    oom_lat, oom_mem = _traces(live.figure, "out of memory / failed")
    assert tuple(oom_lat.x) == (32,) and tuple(oom_mem.y) == (2.0,) and tuple(oom_mem.text) == ("OOM",)
    limit = [t for t in live.figure.data if t.name and "limit" in t.name]
    assert limit and tuple(limit[0].y) == (2.0, 2.0)
    assert "1 out of memory" in live.status.value and not live.run_button.disabled


def test_traces_update_as_each_point_finishes(monkeypatch):
    live = LiveSweepPlot(backends=["sdpa"], seq_lens=[8, 16, 24], isolate=False)
    seen = []
    draw = live._draw

    def spy(backends):
        draw(backends)
        seen.append(len(live.figure.data[0].x))

    monkeypatch.setattr(live, "_draw", spy)
    live.run()
    assert seen == [1, 2, 3]


def test_bad_controls_give_clear_errors():
    live = LiveSweepPlot(backends=["sdpa"], isolate=False)
    live.lengths_text.value = "128, abc"
    with pytest.raises(ValueError, match="comma-separated integers"):
        live.run()
    live.lengths_text.value = "128"
    live.backends_select.value = ()
    with pytest.raises(ValueError, match="at least one backend"):
        live.run()
    live.run_button.click()  # from the button, the error goes to the status line
    assert "at least one backend" in live.status.value and live.rows == []


def test_static_figure_from_rows():
    rows = [
        dict(backend="fa2", seq_len=n, ok=True, oom=False, skipped=False, latency_ms=n / 10, peak_gib=13 + n / 1e4,
             memory_kind="cuda_max_allocated") for n in (1024, 2048, 4096)
    ] + [
        dict(backend="eager", seq_len=1024, ok=True, oom=False, skipped=False, latency_ms=500, peak_gib=20,
             memory_kind="cuda_max_allocated"),
        dict(backend="eager", seq_len=2048, ok=False, oom=True, skipped=False, latency_ms=None, peak_gib=None,
             error="OutOfMemoryError: CUDA out of memory", memory_kind=None),
        dict(backend="eager", seq_len=4096, ok=False, oom=True, skipped=True, error="not run", peak_gib=None),
    ]
    from labkit.attention.memory_model import ModelShape, memory_curves

    curves = memory_curves(ModelShape.named("llama-2-7b"), [1024, 2048, 4096])
    fig = static_figure(rows, memory_limit_gib=79.0, memory_limit_label="GPU memory", curves=curves)
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)
    assert [tuple(t.x) for t in _traces(fig, "fa2")] == [(1024, 2048, 4096)] * 2
    oom = _traces(fig, "out of memory / failed")
    assert tuple(oom[0].x) == (2048,) and tuple(oom[0].y) == (500,)  # at eager's last measured latency
    assert any("model:" in (t.name or "") and t.line.dash == "dash" for t in fig.data)
    assert fig.layout.yaxis2.title.text.startswith("GPU memory")
