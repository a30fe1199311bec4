"""What the browser test found, pinned without a browser: figures that fit and read well, tables that format,
widgets that name their choices. (tests/browser checks the same things on the rendered page.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import traitlets

from labkit.attention.memory_model import ModelShape
from labkit.experiments import hybrid as hy
from labkit.models import build_from_shape
from labkit.plots import hybrid as hy_plots
from labkit.plots.attention import kernel_figure, length_label, length_ticks, memory_model_figure
from labkit.widgets import LayerPicker, LiveSweepPlot, static_figure


def test_length_ticks_read_as_learners_write_them():
    ticks = length_ticks([512, 700, 32768])
    assert ticks["tickvals"] == [512, 1024, 2048, 4096, 8192, 16384, 32768]
    assert ticks["ticktext"] == ["512", "1024", "2048", "4096", "8192", "16k", "32k"]
    assert length_label(65536) == "64k" and length_label(100) == "100"
    assert len(length_ticks([2, 2**20])["tickvals"]) <= 11  # every other power past ten ticks
    assert length_ticks([]) == {}


def test_memory_figure_limit_label_sits_at_the_limit_on_the_log_axis():
    lengths = [int(2 ** (k / 4)) for k in range(36, 61)]
    fig = memory_model_figure(ModelShape.named("llama-2-7b"), lengths, limit_gib=74.5, limit_label="H100 80 GB")
    data = [v for t in fig.data for v in t.y if v and v > 0]
    for a in fig.layout.annotations:
        if a.yref == "y":  # on a log axis, y is log10 of the value
            assert math.log10(min(data)) <= a.y <= math.log10(max(data)), a
            assert a.y == pytest.approx(math.log10(74.5))
    assert fig.layout.xaxis.ticktext[-2:] == ("16k", "32k")
    assert fig.layout.xaxis.dtick is None


def test_kernel_and_sweep_figures_label_lengths_explicitly():
    rows = [dict(backend="sdpa", seq_len=n, ok=True, tflops=n / 1e3) for n in (512, 8192, 32768)]
    assert kernel_figure(rows).layout.xaxis.ticktext[-1] == "32k"
    sweep = [dict(backend="sdpa", seq_len=n, ok=True, oom=False, latency_ms=n / 100, p10_ms=n / 120, p90_ms=n / 80,
                  peak_gib=1 + n / 1e5, device="cpu", memory_kind="cpu_peak_rss") for n in (256, 512, 16384)]
    fig = static_figure(sweep)
    assert fig.layout.xaxis.ticktext == fig.layout.xaxis2.ticktext and "16k" in fig.layout.xaxis.ticktext
    latency = [t for t in fig.data if t.name == "sdpa" and t.xaxis == "x"][0]
    assert latency.error_y.array[0] == pytest.approx(256 / 80 - 256 / 100)  # the spread is drawn
    assert any("noise" in (a.text or "") for a in fig.layout.annotations)  # and said, on a CPU


def _rows(lengths=(128, 512)):
    rows = []
    for v, m in (("base", "float"), ("ptq-w8", "ptq"), ("qat-w8", "qat")):
        rows.append({"variant": v, "label": v, "method": m, "ppl": 30.123456, "size_mb": 269.030016,
                     "decode_tok_s": 24.0139,
                     "prefill": [{"seq_len": n, "latency_ms": 189.5638, "peak_gib": 1.627544} for n in lengths]})
    return rows


def test_comparison_and_shape_figures_fit_a_notebook():
    fig = hy_plots.comparison_figure(_rows((128, 512, 2048)))  # 6 panels: two rows of three
    assert fig.layout.width is None
    assert max(fig.layout[k].domain[1] - fig.layout[k].domain[0] for k in fig.layout if k.startswith("xaxis")) > 0.25
    assert fig.layout.xaxis4.anchor and fig.layout.yaxis4.domain[1] < fig.layout.yaxis.domain[0]
    shape = [dict(variant="bf16", mode="bf16", model="llama-2-7b", weight_gib=12.5, kind="prefill", seq_len=4096,
                  ok=True, oom=False, latency_ms=10.0, peak_gib=14.0)]
    assert hy_plots.shape_figure(shape).layout.width is None
    assert hy_plots.loss_figure({"qat": [3.0, 2.5]}).layout.width is None


def test_tables_format_numbers_and_keep_text_short():
    table = hy.rows_table(_rows())
    assert table.loc["base", "ppl"] == 30.12 and table.loc["base", "size_mb"] == 269.03
    assert hy.rows_table(_rows(), digits=None).loc["base", "ppl"] == 30.123456
    assert hy.prefill_table(_rows()).loc[0, "peak_gib"] == 1.63
    checks = {"base": {"backend": "sdpa", "attention_ok": True, "attention_families": {"cpu-flash": 30},
                       "attention": "backend 'sdpa': attention ran as cpu-flash x30 -> OK" + " long" * 20,
                       "int8_layers": 0, "ok": True}}
    shown = hy.checks_table(checks)
    assert shown.loc["base", "attention kernels"] == "cpu-flash x30 OK" and "attention" not in shown.columns
    html = hy.targets_table([{"target": "a long target " * 5, "measured": "1.0 vs 2.0", "verdict": "missed",
                              "met": False}]).to_html()
    assert "MISSED" in html and "a long target " * 5 in html


def test_targets_table_shows_each_verdict_as_judged():
    """met is None for "within noise", "no verdict" and "not measured" alike: the table shows the verdict itself."""
    verdicts = ("met", "missed", "within noise", "no verdict", "not measured")
    targets = [{"target": f"t {v}", "measured": "x", "verdict": v, "met": {"met": True, "missed": False}.get(v)}
               for v in verdicts]
    shown = list(hy.targets_table(targets).data["verdict"])
    assert shown == ["met", "MISSED", "within noise", "no verdict", "not measured"]


@pytest.fixture(scope="module")
def tiny():
    return build_from_shape("tiny-llama", dtype=torch.float32, device="cpu")


def test_picker_filter_waits_for_enter_and_shows_the_whole_grid(tiny):
    picker = LayerPicker(tiny)
    assert picker.filter.continuous_update is False  # no red refusal while a regex is half typed
    grid = picker.children[1]
    assert grid.layout.max_height is None and grid.layout.overflow is None


def test_widgets_name_their_choices(tiny):
    picker = LayerPicker(tiny)
    with pytest.raises(traitlets.TraitError, match="not one of the choices: 'feed-forward only', 'all linear'"):
        picker.preset.value = "feed forward"
    with pytest.raises(ValueError, match="unknown preset 'ff'; choose one of"):
        LayerPicker(tiny, preset="ff")
    with pytest.raises(ValueError, match="'flash' is not one of the choices: 'eager', 'sdpa'"):
        LiveSweepPlot(backends=["flash"], memory_limit_gib=1.0)
    live = LiveSweepPlot(backends=["sdpa"], memory_limit_gib=1.0)
    with pytest.raises(traitlets.TraitError, match="not one of the choices"):
        live.model_dropdown.value = "tiny-lama"


def test_the_new_pictures_fit_a_notebook_and_keep_their_axes_near_the_data():
    import json

    from labkit.attention.memory_model import GIB
    from labkit.plots import causal_tile_map, kernel_timeline_figure, launch_grid_figure, training_memory_figure
    from labkit.quant.int8_kernel import KernelConfig
    from labkit.train.memory_model import ModelShape as TrainShape
    from labkit.train.memory_model import TrainSetup
    from labkit.widgets import TilingExplainer

    rows = json.loads((Path(__file__).resolve().parents[1] / "data/reference/fast8bit_h100.json").read_text())["rows"]
    figures = [causal_tile_map([(1024, 128, 64), (300, 128, 64)]),
               launch_grid_figure([("gate", KernelConfig(16, 32, 256, 1), 1, 11008)]),
               kernel_timeline_figure(rows, ["bf16", "labkit-int8"]),
               training_memory_figure(TrainShape.named("llama-2-7b"), 4096, [1, 2], TrainSetup(), limit_gib=80e9 / GIB),
               TilingExplainer().figure]
    for fig in figures:
        assert fig.layout.width is None, fig.layout.title.text  # responsive: fits the notebook's width
    bars = figures[2]
    widths = [x for t in bars.data for x in t.x]
    assert max(b + w for t in bars.data for b, w in zip(t.base, t.x)) <= 3 * max(widths)  # within the browser's slack
    assert figures[3].layout.yaxis.range[1] < 1.2 * max(sum(t.y[i] for t in figures[3].data if t.type == "bar")
                                                        for i in range(4))
    explainer = figures[4]
    for axis in ("yaxis2", "yaxis3", "yaxis4"):  # fixed to the values of every step, so a step never rescales them
        lo, hi = explainer.layout[axis].range
        assert lo < hi
