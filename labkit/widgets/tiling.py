"""An interactive explainer of FlashAttention's tiling: block-size sliders, a stepper through the key/value tiles of
a small example, the running max, denominator and output at each step, the HBM traffic against naive attention,
and a check of the last step against softmax attention. Runs on a CPU in milliseconds per step."""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from labkit.attention import tiled, tiling
from labkit.checks import Check, expect
from labkit.plots.tiling import _outline, step_data, step_figure

BLOCKS = (4, 8, 16, 32)


class TilingExplainer(widgets.VBox):
    """`TilingExplainer(n=32, d=8)`: move Br, Bc, N or causal and step through the tiles (slider or ◀ ▶)."""

    def __init__(self, n: int = 32, d: int = 8, block_q: int = 8, block_k: int = 8, causal: bool = False,
                 seed: int = 0):
        if n not in range(16, 65, 8):
            raise ValueError(f"n={n!r}: the explainer shows N = 16, 24, ..., 64 (a small example to read)")
        for name, b in (("block_q", block_q), ("block_k", block_k)):
            if b not in BLOCKS:
                raise ValueError(f"{name}={b!r} is not one of the choices: {', '.join(map(str, BLOCKS))}")
        self.d, self.seed = d, seed
        style = {"description_width": "initial"}
        wide = widgets.Layout(width="290px")
        self.n_slider = widgets.IntSlider(value=n, min=16, max=64, step=8, description="N (tokens)",
                                          continuous_update=False, style=style, layout=wide)
        self.bq_slider = widgets.SelectionSlider(options=BLOCKS, value=block_q, description="Br (query block)",
                                                 continuous_update=False, style=style, layout=wide)
        self.bk_slider = widgets.SelectionSlider(options=BLOCKS, value=block_k, description="Bc (key block)",
                                                 continuous_update=False, style=style, layout=wide)
        self.causal_box = widgets.Checkbox(value=causal, description="causal", indent=False,
                                           layout=widgets.Layout(width="90px"))
        self.step_slider = widgets.IntSlider(value=1, min=1, max=2, description="K/V tile", style=style,
                                             layout=widgets.Layout(width="360px"))
        self.prev_button = widgets.Button(description="◀ previous tile", layout=widgets.Layout(width="130px"))
        self.next_button = widgets.Button(description="next tile ▶", layout=widgets.Layout(width="130px"))
        self.status = widgets.HTML()
        self.figure = go.FigureWidget()
        self._build()
        for control in (self.n_slider, self.bq_slider, self.bk_slider, self.causal_box):
            control.observe(lambda _: self._build(), names="value")
        self.prev_button.on_click(lambda _: self._move(-1))
        self.next_button.on_click(lambda _: self._move(+1))
        wrap = widgets.Layout(flex_flow="row wrap")
        super().__init__([widgets.HBox([self.n_slider, self.bq_slider, self.bk_slider, self.causal_box], layout=wrap),
                          widgets.HBox([self.prev_button, self.step_slider, self.next_button]),
                          self.status, self.figure])

    # -- the example and its trace -----------------------------------------------------------------------------

    @property
    def block_q(self) -> int:
        return int(self.bq_slider.value)

    @property
    def block_k(self) -> int:
        return int(self.bk_slider.value)

    def _build(self) -> None:
        n = int(self.n_slider.value)
        gen = torch.Generator().manual_seed(self.seed)
        self.q, self.k, self.v = (torch.randn(n, self.d, generator=gen, dtype=torch.float64) for _ in range(3))
        self.causal = bool(self.causal_box.value)
        self.steps = tiling.forward_trace(self.q, self.k, self.v, self.block_q, self.block_k, self.causal)
        self.scores = self.q @ self.k.T / self.d ** 0.5
        self.reference = tiled.reference_attention(self.q, self.k, self.v, self.causal)
        fresh = step_figure(self.steps, self.scores, 0, self.block_q, self.block_k, self.causal)
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(fresh.data)
            self.figure.layout = fresh.layout
        self.step_slider.unobserve_all("value")
        self.step_slider.max = len(self.steps)
        self.step_slider.value = 1
        self.step_slider.observe(lambda _: self._draw(), names="value")
        self._draw()

    def _move(self, delta: int) -> None:
        self.step_slider.value = max(1, min(len(self.steps), self.step_slider.value + delta))

    def _draw(self) -> None:
        j = int(self.step_slider.value) - 1
        d = step_data(self.steps, self.scores, j, self.block_q, self.block_k, self.causal)
        n = len(d["rows"])
        with self.figure.batch_update():
            heat, _, m_now, _, l_now, _, o_now, rescaled = self.figure.data
            heat.z = d["z"]
            m_now.y, l_now.y, o_now.y = d["m"], d["l"], d["o"]
            rescaled.x, rescaled.y = d["rescaled_rows"], d["rescaled_m"]
            _outline(self.figure, d["cols"], n)
            self.figure.layout.title.text = (
                f"key/value tile {j + 1} of {len(self.steps)}: columns {d['cols'][0]}-{d['cols'][1] - 1} folded "
                f"into every query block (Br={self.block_q}, Bc={self.block_k}{', causal' if self.causal else ''})")
        self.prev_button.disabled, self.next_button.disabled = j == 0, j == len(self.steps) - 1
        self.status.value = self._status(j)

    def _status(self, j: int) -> str:
        n = self.q.shape[0]
        traffic = tiling.hbm_traffic(n, self.d, self.block_q, self.block_k, self.causal, key_blocks=j + 1)
        total = tiling.hbm_traffic(n, self.d, self.block_q, self.block_k, self.causal)
        st = self.steps[j]
        err = float((st.out - self.reference).abs().max())
        done = j == len(self.steps) - 1
        if done:
            verdict = (f"<b>{'✓' if err <= 1e-12 else '✗'} last step: max |O − softmax(QKᵀ/√d)V| = {err:.1e}</b> "
                       "(exact, not an approximation)")
        else:
            verdict = f"O is not final yet: max |O − softmax attention| = {err:.2f} (tiles still to come)"
        rescaled = int(st.rescaled.sum())
        lines = [
            f"step {j + 1} of {len(self.steps)}: {int(st.computed.sum())} of {st.computed.numel()} tiles computed; "
            f"{rescaled} row(s) found a larger maximum and rescaled l and acc by exp(m_old − m_new) (red circles)",
            f"HBM traffic so far, in elements: tiled {traffic['tiled']:,} (Q once, {traffic['tiles']} K/V tiles"
            f"{', O and L written' if done else ''}) · naive attention {total['naive']:,} "
            f"(writes and reads the {n}×{n} scores and probabilities) · tiled total {total['tiled']:,} = "
            f"{total['tiled'] / total['naive']:.2f}× naive",
            verdict,
        ]
        return "<br>".join(html.escape(x, quote=False) if not x.startswith("<b>") else x for x in lines)

    # -- for the notebook --------------------------------------------------------------------------------------

    def check(self) -> Check:
        """The claim the explainer shows, checked on its current example: the last step is softmax attention."""
        expect(f"explainer (N={self.q.shape[0]}, Br={self.block_q}, Bc={self.block_k}): tiled HBM traffic < naive",
               tiling.hbm_traffic(self.q.shape[0], self.d, self.block_q, self.block_k, self.causal)["tiled"],
               tiling.hbm_traffic(self.q.shape[0], self.d, self.block_q, self.block_k)["naive"], op="<")
        return expect(f"explainer (N={self.q.shape[0]}, Br={self.block_q}, Bc={self.block_k}, causal={self.causal}):"
                      " last step == softmax attention", self.steps[-1].out, self.reference, tol=1e-12)


__all__ = ["TilingExplainer"]
